"""Deduplicate a JSONL corpus by a hash of the text and count documents per language.

Run it directly (embedded Dask cluster, a small generated corpus in examples/data/web, where
about a third of the documents repeat an earlier text):

    python examples/dedup_corpus.py

or through the CLI to choose the backend, the task memory and where shuffles spill:

    zephyr --backend dask --memory 1GB --scratch /tmp/zephyr examples/dedup_corpus.py

`--input DIR` deduplicates an existing folder of `.jsonl.gz` files with `text` fields instead.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random

from zephyr import Dataset, flow_backend

WORDS = "the of data model token shard corpus train filter clean text web page code math".split()
LANGS = ["en", "de", "fr", "ja"]


def make_corpus(folder: str, shards: int = 8, docs: int = 500, seed: int = 0) -> None:
    """`shards` gzip JSONL files of `docs` documents, a third of them copies of earlier texts."""
    if os.path.exists(os.path.join(folder, f"part-{shards - 1:04d}.jsonl.gz")):
        return
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    texts: list[str] = []
    for s in range(shards):
        with gzip.open(os.path.join(folder, f"part-{s:04d}.jsonl.gz"), "wt") as f:
            for d in range(docs):
                if texts and rng.random() < 1 / 3:
                    text = rng.choice(texts)  # a copy, as crawls are full of them
                else:
                    text = " ".join(rng.choices(WORDS, k=rng.randint(5, 60)))
                    texts.append(text)
                doc = {"id": f"{s}-{d}", "text": text, "lang": rng.choice(LANGS)}
                f.write(json.dumps(doc) + "\n")


def text_hash(doc: dict) -> str:
    return hashlib.sha1(doc["text"].encode()).hexdigest()


def language(doc: dict) -> str:
    return doc.get("lang", "unknown")


def one(doc: dict) -> dict:
    return {"lang": language(doc), "n": 1}


def partial_counts(lang: str, items) -> list[dict]:
    """The combiner: each shard's counts per language, summed before they leave the shard."""
    return [{"lang": lang, "n": sum(item["n"] for item in items)}]


def total(lang: str, items) -> dict:
    return {"lang": lang, "documents": sum(item["n"] for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--input", default=os.path.join(here, "data", "web"))
    parser.add_argument("--output", default=os.path.join(here, "data", "dedup"))
    args = parser.parse_args()
    if args.input == parser.get_default("input"):
        make_corpus(args.input)

    backend = flow_backend()  # the CLI's backend under `zephyr`, else an embedded Dask cluster
    docs = Dataset.from_files(args.input, "*.jsonl.gz").load_jsonl()
    unique = docs.deduplicate(text_hash).write_jsonl(f"{args.output}/{{shard:04d}}.jsonl.gz")
    written = list(backend.execute(unique))
    if not written:  # zephyr --dry-run: the plans were printed, nothing ran
        return
    (before,) = backend.execute(docs.count())
    (after,) = backend.execute(Dataset.from_list(written).load_jsonl().count())
    print(f"{before} documents, {after} after dedup, in {len(written)} files")
    by_language = docs.map(one).group_by(language, reducer=total, combiner=partial_counts)
    for row in sorted(backend.execute(by_language), key=language):
        print(f"  {row['lang']}: {row['documents']} documents")


if __name__ == "__main__":
    main()
