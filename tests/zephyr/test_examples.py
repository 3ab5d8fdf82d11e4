"""examples/clean_corpus.py and examples/dedup_corpus.py run as a user would run them, through the
`zephyr` command: clean_corpus's generated corpus follows --shards and --docs, and its output folder
holds only the last run's shards; dedup_corpus keeps one document per text and counts languages."""

from __future__ import annotations

import gzip
import json
import os
import re
import runpy
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "clean_corpus.py")


def clean_corpus(data, *args: str) -> subprocess.CompletedProcess:
    command = ["-m", "zephyr.cli", "--backend", "sync", EXAMPLE, "--data", str(data), *args]
    out = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert out.returncode == 0, out.stderr
    return out


def docs_per_shard(folder) -> dict[str, int]:
    sizes = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl.gz"):
            with gzip.open(os.path.join(folder, name), "rt") as f:
                sizes[name] = sum(1 for _ in f)
    return sizes


def test_corpus_is_regenerated_when_its_size_changes(tmp_path):
    clean_corpus(tmp_path, "--shards", "3", "--docs", "6")
    assert docs_per_shard(tmp_path / "raw") == {f"part-{s:04d}.jsonl.gz": 6 for s in range(3)}
    assert len(docs_per_shard(tmp_path / "clean")) == 3

    clean_corpus(tmp_path, "--shards", "3", "--docs", "4")
    assert docs_per_shard(tmp_path / "raw") == {f"part-{s:04d}.jsonl.gz": 4 for s in range(3)}

    # Fewer shards: no shard of the bigger corpus is left, in the input or the output.
    out = clean_corpus(tmp_path, "--shards", "2", "--docs", "4")
    assert docs_per_shard(tmp_path / "raw") == {f"part-{s:04d}.jsonl.gz": 4 for s in range(2)}
    clean = docs_per_shard(tmp_path / "clean")
    assert list(clean) == ["part-0000.jsonl.gz", "part-0001.jsonl.gz"]
    assert f"wrote 2 files ({sum(clean.values())} documents)" in out.stdout
    assert sorted(os.listdir(tmp_path)) == ["clean", "raw"]  # no staging folder left behind


DEDUP = os.path.join(ROOT, "examples", "dedup_corpus.py")


def test_dedup_corpus_keeps_one_document_per_text_and_counts_languages(tmp_path):
    command = ["-m", "zephyr.cli", "--backend", "sync", DEDUP]
    args = ["--input", str(tmp_path / "web"), "--output", str(tmp_path / "dedup")]
    env = {**os.environ, "PYTHONPATH": ROOT}
    runpy.run_path(DEDUP)["make_corpus"](str(tmp_path / "web"), shards=3, docs=60)
    out = subprocess.run(
        [sys.executable, *command, *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr

    def texts(folder):
        return [
            json.loads(line)["text"]
            for name in sorted(os.listdir(folder))
            for line in gzip.open(os.path.join(folder, name), "rt")
        ]

    inputs, outputs = texts(tmp_path / "web"), texts(tmp_path / "dedup")
    assert len(outputs) == len(set(outputs)) == len(set(inputs)) < len(inputs)
    assert f"{len(inputs)} documents, {len(outputs)} after dedup, in 3 files" in out.stdout
    counted = re.findall(r"  (\w+): (\d+) documents", out.stdout)
    assert sum(int(n) for _, n in counted) == len(inputs)
