"""examples/clean_corpus.py runs as a user would run it, through the `zephyr` command: its generated
corpus follows --shards and --docs, and its output folder holds only the last run's shards."""

from __future__ import annotations

import gzip
import os
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
