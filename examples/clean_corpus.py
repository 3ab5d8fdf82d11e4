"""Clean a JSONL corpus: read gzip shards, add a word count, drop short documents, write gzip
shards.

Run it directly (embedded Dask cluster, a small generated corpus):

    python examples/clean_corpus.py

or through the CLI to choose the backend and limits:

    zephyr --backend dask --max-parallelism 4 --memory 1GB examples/clean_corpus.py --docs 5000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random

from zephyr import Dataset, flow_backend, load_jsonl

WORDS = "the of data model token shard corpus train filter clean text web page code math".split()


def make_corpus(folder: str, shards: int, docs: int, seed: int = 0) -> None:
    """Write `shards` gzip JSONL files of `docs` documents each into `folder` (once)."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    for s in range(shards):
        path = os.path.join(folder, f"part-{s:04d}.jsonl.gz")
        if os.path.exists(path):
            continue
        with gzip.open(path + ".tmp", "wt", compresslevel=1) as f:
            for d in range(docs):
                text = " ".join(rng.choices(WORDS, k=rng.randint(5, 120)))
                f.write(json.dumps({"id": f"{s}-{d}", "text": text, "source": "demo"}) + "\n")
        os.replace(path + ".tmp", path)


def add_stats(doc: dict) -> dict:
    """Annotate a document with its word count."""
    return {**doc, "n_words": len(doc["text"].split())}


def long_enough(doc: dict) -> bool:
    """True keeps documents of at least 20 words."""
    return doc["n_words"] >= 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--input", default=os.path.join(here, "data", "raw"))
    parser.add_argument("--output", default=os.path.join(here, "data", "clean"))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--docs", type=int, default=2000)
    args = parser.parse_args()

    make_corpus(args.input, args.shards, args.docs)
    backend = flow_backend()  # the CLI's backend under `zephyr`, else an embedded Dask cluster
    pipeline = (
        Dataset.from_files(args.input, "*.jsonl.gz")
        .flat_map(load_jsonl)
        .map(add_stats)
        .filter(long_enough)
        .write_jsonl(os.path.join(args.output, "{basename}.jsonl.gz"))
    )
    written = list(backend.execute(pipeline))
    kept = sum(1 for path in written for _ in load_jsonl(path))
    # The dashboard link was logged as the cluster started (an embedded one stops with the script).
    print(f"wrote {len(written)} files ({kept} documents) to {args.output}")


if __name__ == "__main__":
    main()
