"""Clean a JSONL corpus: read gzip shards, add a word count, drop short documents, write gzip
shards.

Run it directly (embedded Dask cluster, a small generated corpus in examples/data/raw):

    python examples/clean_corpus.py

or through the CLI to choose the backend and limits:

    zephyr --backend dask --max-parallelism 4 --memory 1GB examples/clean_corpus.py --docs 5000

The generated corpus is made again whenever --shards or --docs differ from the ones it was made
with; `--input DIR` cleans an existing corpus instead. Each run leaves in the output folder only
the shards it wrote.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import shutil
import uuid

from zephyr import Dataset, flow_backend, load_jsonl

WORDS = "the of data model token shard corpus train filter clean text web page code math".split()
MANIFEST = "corpus.json"  # in a generated corpus folder: the sizes it was made with


def make_corpus(folder: str, shards: int, docs: int, seed: int = 0) -> None:
    """Make `folder` hold `shards` gzip JSONL files of `docs` documents each.

    A corpus made earlier with the same sizes is kept; otherwise the new one is written into a
    sibling folder and swapped in, so `folder` never holds a partial corpus or shards of an
    earlier, bigger one. Only a folder of `.jsonl.gz` files (a corpus made here) is replaced.
    """
    wanted = {"shards": shards, "docs": docs, "seed": seed}
    if os.path.exists(folder):
        names = os.listdir(folder)
        if MANIFEST in names:
            with open(os.path.join(folder, MANIFEST)) as f:
                if json.load(f) == wanted:
                    return
        foreign = [n for n in names if n != MANIFEST and not n.endswith((".jsonl.gz", ".tmp"))]
        if foreign:
            raise SystemExit(
                f"{folder} holds files this example did not write ({foreign[0]!r}); it replaces "
                "only a corpus it generated: pass --data a new folder, or --input to clean it"
            )
    for kind in ("tmp", "old"):  # folders an interrupted run left
        for leftover in glob.glob(f"{glob.escape(folder)}.{kind}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    staging = f"{folder}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(staging)
    rng = random.Random(seed)
    for s in range(shards):
        with gzip.open(os.path.join(staging, f"part-{s:04d}.jsonl.gz"), "wt", compresslevel=1) as f:
            for d in range(docs):
                text = " ".join(rng.choices(WORDS, k=rng.randint(5, 120)))
                f.write(json.dumps({"id": f"{s}-{d}", "text": text, "source": "demo"}) + "\n")
    with open(os.path.join(staging, MANIFEST), "w") as f:  # written last: the corpus is complete
        json.dump(wanted, f)
    # Swap: two renames, then the old corpus goes.
    if os.path.exists(folder):
        old = f"{folder}.old-{uuid.uuid4().hex[:8]}"
        os.rename(folder, old)
        os.rename(staging, folder)
        shutil.rmtree(old)
    else:
        os.rename(staging, folder)


def add_stats(doc: dict) -> dict:
    """Annotate a document with its word count."""
    return {**doc, "n_words": len(doc["text"].split())}


def long_enough(doc: dict) -> bool:
    """True keeps documents of at least 20 words."""
    return doc["n_words"] >= 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--data",
        default=os.path.join(here, "data"),
        help="folder of the generated corpus (DATA/raw) and the default output (DATA/clean)",
    )
    parser.add_argument("--input", help="clean this existing corpus instead of generating one")
    parser.add_argument("--output", help="where cleaned shards go (default DATA/clean)")
    parser.add_argument("--shards", type=int, help="shards of the generated corpus (default 8)")
    parser.add_argument("--docs", type=int, help="documents per generated shard (default 2000)")
    args = parser.parse_args()
    if args.input and (args.shards is not None or args.docs is not None):
        parser.error("--shards and --docs size the generated corpus; drop them with --input")
    output = args.output or os.path.join(args.data, "clean")

    source = args.input
    if source is None:
        source = os.path.join(args.data, "raw")
        make_corpus(
            source,
            8 if args.shards is None else args.shards,
            2000 if args.docs is None else args.docs,
        )
    backend = flow_backend()  # the CLI's backend under `zephyr`, else an embedded Dask cluster
    pipeline = (
        Dataset.from_files(source, "*.jsonl.gz")
        .flat_map(load_jsonl)
        .map(add_stats)
        .filter(long_enough)
        .write_jsonl(os.path.join(output, "{basename}.jsonl.gz"))
    )
    written = list(backend.execute(pipeline))
    # A run on a corpus of more shards left outputs this run did not rewrite: remove them. A dry
    # run (`zephyr --dry-run`) writes nothing and leaves the folder as it was.
    if written:
        keep = {os.path.abspath(path) for path in written}
        for name in os.listdir(output):
            path = os.path.abspath(os.path.join(output, name))
            if name.endswith(".jsonl.gz") and path not in keep:
                os.remove(path)
    kept = sum(1 for path in written for _ in load_jsonl(path))
    # The dashboard link was logged as the cluster started (an embedded one stops with the script).
    print(f"wrote {len(written)} files ({kept} documents) to {output}")


if __name__ == "__main__":
    main()
