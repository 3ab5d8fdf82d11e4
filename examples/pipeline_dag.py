"""A DAG of four steps run by fray_dask.executor, each a zephyr pipeline inside a fray_dask job:
download (a generated raw JSONL corpus) -> clean -> dedup -> count (token counts).

Run it (embedded Dask cluster; outputs under examples/data/dag):

    python examples/pipeline_dag.py

Each step writes into `{prefix}/{name}-{hash}`, the hash taken over its versioned settings and
those of the steps before it. Run the same command again and every step is skipped (it succeeded
before). Change a versioned setting and that step and every step after it run again, into new
folders, while the old outputs stay:

    python examples/pipeline_dag.py --docs 1000    # documents per raw shard (default 500)
    python examples/pipeline_dag.py --dry-run      # what would run or be skipped; writes nothing

On local processes instead of Dask (each step's pipeline then runs on threads in its own process):

    FRAY_CLUSTER_SPEC=local python examples/pipeline_dag.py

`--prefix DIR` (or FRAY_EXECUTOR_PREFIX) puts the outputs elsewhere (a folder or gs://...);
`--backend threads|sync` runs each step's pipeline in the step's own process instead;
`--run-only`, `--max-concurrent` and `--no-force-run-failed` are executor_main's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
from dataclasses import dataclass

import fsspec
from clean_corpus import WORDS  # a module beside this script: its jobs find it too

from fray_dask import DaskContext, fray_job_ctx
from fray_dask.executor import (
    PREFIX_VARIABLE,
    ExecutorStep,
    executor_main,
    output_path_of,
    this_output_path,
    versioned,
)
from zephyr import Backend, Dataset, create_backend, flow_backend

BACKENDS = ("auto", "threads", "sync")
COUNTS_FILE = "token_counts.json"
SHORT_WORDS = 5  # the generated "too short" documents have 1 to SHORT_WORDS words


def step_backend(kind: str) -> Backend:
    """The zephyr backend a step's pipelines run on, from inside the step's job.

    "auto": the Dask cluster the job runs on (its tasks share that cluster's workers) when the
    job's cluster is a Dask one (inside a job there, `flow_backend()` is that cluster), else
    threads in the step's own process (FRAY_CLUSTER_SPEC=local, where there is no Dask cluster
    and `flow_backend()` would start one inside each step's process). "threads" and "sync" run
    in the step's process.
    """
    if kind not in BACKENDS:
        raise ValueError(f"step backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if kind != "auto":
        return create_backend(kind)
    if isinstance(fray_job_ctx(), DaskContext):  # in a job: the cluster that launched it
        return flow_backend()
    return create_backend("threads")


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What every step's config holds: its output folder and where its pipelines run (not
    versioned: where a pipeline runs does not change what it writes)."""

    output_path: str = this_output_path()
    backend: str = "auto"


def corpus(path: str) -> Dataset:
    """The documents of the gzip JSONL shards in folder `path`."""
    return Dataset.from_files(path, "*.jsonl.gz").load_jsonl()


def run(pipeline: Dataset, config: StepConfig) -> None:
    """Runs `pipeline` to its end on the step's backend."""
    list(step_backend(config.backend).execute(pipeline))


# -- download: a raw corpus with messy whitespace, repeated texts and too-short documents -----


@dataclass(frozen=True, kw_only=True)
class DownloadConfig(StepConfig):
    shards: int = versioned(4)
    docs_per_shard: int = versioned(500)
    seed: int = versioned(0)


def messy_text(rng: random.Random, n_words: int) -> str:
    """`n_words` words joined by the irregular whitespace of scraped pages."""
    gaps = rng.choices([" ", " ", " ", "  ", "\n", "\t "], k=n_words - 1)
    words = rng.choices(WORDS, k=n_words)
    body = words[0] + "".join(gap + word for gap, word in zip(gaps, words[1:], strict=True))
    return rng.choice(["", " ", "\n"]) + body + rng.choice(["", " ", "\n"])


def boilerplate(seed: int) -> list[str]:
    """A few long texts every shard repeats (cookie banners, footers), from `seed`."""
    rng = random.Random(f"{seed}/boilerplate")
    return [messy_text(rng, rng.randint(10, 30)) for _ in range(5)]


def generate_shard(shard: int, config: DownloadConfig) -> list[dict]:
    """The documents of raw shard `shard`: a tenth repeat a boilerplate text, a tenth an earlier
    text of the shard, a sixth are too short; the same for the same seed, shard and size."""
    rng = random.Random(f"{config.seed}/{shard}")
    repeated = boilerplate(config.seed)
    docs: list[dict] = []
    for d in range(config.docs_per_shard):
        roll = rng.random()
        if roll < 0.1:
            text = rng.choice(repeated)
        elif roll < 0.2 and docs:
            text = rng.choice(docs)["text"]
        elif roll < 0.37:
            text = messy_text(rng, rng.randint(1, SHORT_WORDS))
        else:
            text = messy_text(rng, rng.randint(10, 80))
        docs.append({"id": f"{shard}-{d}", "text": text})
    return docs


def download(config: DownloadConfig) -> None:
    """Writes `shards` gzip JSONL files of generated documents, one zephyr task per shard."""
    docs = Dataset.from_list(range(config.shards)).flat_map(lambda s: generate_shard(s, config))
    run(docs.write_jsonl(f"{config.output_path}/part-{{shard:04d}}.jsonl.gz"), config)


# -- clean: normalise whitespace, drop short documents ----------------------------------------


@dataclass(frozen=True, kw_only=True)
class CleanConfig(StepConfig):
    input_path: str
    min_words: int = versioned(8)


def normalise(doc: dict) -> dict:
    """The document with its text's whitespace runs turned into single spaces."""
    return {**doc, "text": " ".join(doc["text"].split())}


def clean(config: CleanConfig) -> None:
    min_words = config.min_words
    docs = corpus(config.input_path).map(normalise)
    kept = docs.filter(lambda doc: len(doc["text"].split()) >= min_words)  # True keeps
    run(kept.write_jsonl(f"{config.output_path}/{{basename}}.jsonl.gz"), config)


# -- dedup: one document per exact text --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DedupConfig(StepConfig):
    input_path: str


def text_of(doc: dict) -> str:
    return doc["text"]


def dedup(config: DedupConfig) -> None:
    """Keeps the first document (in shard order) of each text."""
    unique = corpus(config.input_path).deduplicate(text_of)
    run(unique.write_jsonl(f"{config.output_path}/part-{{shard:04d}}.jsonl.gz"), config)


# -- count: token counts of the deduplicated corpus -------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CountConfig(StepConfig):
    input_path: str
    top: int = versioned(10)


def token_counts(doc: dict) -> list[dict]:
    """One record per distinct token of the document (split on whitespace) and its count."""
    counts = collections.Counter(doc["text"].split())
    return [{"token": token, "n": n} for token, n in counts.items()]


def token_of(record: dict) -> str:
    return record["token"]


def summed(token: str, items) -> list[dict]:
    """The combiner: a shard's counts of `token`, summed before they leave the shard."""
    return [{"token": token, "n": sum(item["n"] for item in items)}]


def total(token: str, items) -> dict:
    return {"token": token, "n": sum(item["n"] for item in items)}


def count(config: CountConfig) -> None:
    """Writes {output}/token_counts.json: documents, tokens, distinct tokens and the `top` most
    frequent tokens with their counts."""
    backend = step_backend(config.backend)
    docs = corpus(config.input_path)
    per_token = docs.flat_map(token_counts).group_by(token_of, reducer=total, combiner=summed)
    rows = sorted(backend.execute(per_token), key=lambda row: (-row["n"], row["token"]))
    (documents,) = backend.execute(docs.count())
    summary = {
        "documents": documents,
        "tokens": sum(row["n"] for row in rows),
        "distinct_tokens": len(rows),
        "top": [[row["token"], row["n"]] for row in rows[: config.top]],
    }
    with fsspec.open(f"{config.output_path}/{COUNTS_FILE}", "w") as f:
        json.dump(summary, f, indent=1)


# -- the DAG -----------------------------------------------------------------------------------


def build_steps(docs_per_shard: int, backend: str) -> list[ExecutorStep]:
    """The four steps: a chain, each step's config naming the output of the step before."""
    raw_config = DownloadConfig(docs_per_shard=versioned(docs_per_shard), backend=backend)
    steps = [ExecutorStep("download", download, raw_config, description="a generated corpus")]
    for name, fn, config_type, description in (
        ("clean", clean, CleanConfig, "whitespace normalised, short documents dropped"),
        ("dedup", dedup, DedupConfig, "one document per exact text"),
        ("count", count, CountConfig, f"token counts in {COUNTS_FILE}"),
    ):
        config = config_type(input_path=output_path_of(steps[-1]), backend=backend)
        steps.append(ExecutorStep(name, fn, config, description=description))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options go to executor_main: --prefix, --dry-run, --run-only, ...",
    )
    parser.add_argument(
        "--docs", type=int, default=500, help="documents per raw shard (versioned; default 500)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="where each step's zephyr pipeline runs: auto (the step's Dask cluster, else "
        "threads), threads or sync; not versioned",
    )
    args, executor_args = parser.parse_known_args()
    if args.docs < 1:
        parser.error(f"--docs must be >= 1, got {args.docs}")
    here = os.path.dirname(os.path.abspath(__file__))
    prefix = os.environ.get(PREFIX_VARIABLE) or os.path.join(here, "data", "dag")
    steps = build_steps(args.docs, args.backend)
    outcomes = executor_main(
        steps, prefix=prefix, description="raw -> clean -> dedup -> count", args=executor_args
    )
    if any(o.action in ("run", "skip", "wait") for o in outcomes):
        return  # a dry run: executor_main printed what it would do
    for outcome in outcomes:  # ran, skipped (succeeded before) or waited (another driver ran it)
        print(f"{outcome.name:<8} {outcome.action:<7} {outcome.output_path}")
    counted = next((o for o in outcomes if o.name == "count"), None)
    if counted is None:  # --run-only without the count step
        return
    with fsspec.open(f"{counted.output_path}/{COUNTS_FILE}") as f:
        summary = json.load(f)
    print(
        f"{summary['documents']} documents, {summary['tokens']} tokens "
        f"({summary['distinct_tokens']} distinct); top tokens:"
    )
    print("  " + ", ".join(f"{token} {n}" for token, n in summary["top"]))


if __name__ == "__main__":
    main()
