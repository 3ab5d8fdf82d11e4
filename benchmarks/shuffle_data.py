"""Data for benchmarks/shuffle_throughput.py: the seeded gzip JSONL corpus (cached), the output
checks every variant must pass, and a sampler of the workers' peak RSS."""

from __future__ import annotations

import functools
import json
import multiprocessing
import random
import shutil
import string
import threading
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
from isal import igzip

TEXT_POOL_WORDS = 400_000  # a ~2.6 MB string of random words; each text is a slice of it


@functools.lru_cache(maxsize=1)
def _text_pool() -> str:
    rng = random.Random(99)
    vocab = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(5000)
    ]
    return " ".join(rng.choices(vocab, k=TEXT_POOL_WORDS))


def _gen_shard(job: tuple[str, int, int, int, int, float, int]) -> tuple[int, int, np.ndarray]:
    """Write one shard; return (raw bytes, gzip bytes, the key values drawn)."""
    path, shard, first_id, n, pool, skew, seed = job
    rng = random.Random(seed * 1_000_003 + shard)
    keys = np.random.default_rng([seed, shard]).integers(0, pool, size=n)
    if skew:
        # The hot key is `pool` itself, outside the uniform range: one key for `skew` of records.
        hot = np.random.default_rng([seed, shard, 1]).random(n) < skew
        keys[hot] = pool
    text, encode, lines = _text_pool(), msgspec.json.Encoder().encode, []
    last = len(text) - 300
    for i, k in enumerate(keys.tolist()):
        start = text.find(" ", rng.randrange(last)) + 1
        body = text[start : start + rng.randint(50, 250)]
        lines.append(encode({"id": first_id + i, "key": f"{k:016x}", "text": body}))
    lines.append(b"")
    raw = b"\n".join(lines)
    gz = igzip.compress(raw, compresslevel=1)
    Path(path).write_bytes(gz)
    return len(raw), len(gz), keys


def ensure_corpus(
    data: Path, shards: int, records: int, pool: int, skew: float, seed: int
) -> tuple[Path, dict[str, int]]:
    """`shards` gzip JSONL files holding `records` records in total (ids 0..records-1, `key` from
    a pool of `pool` values, `skew` of them sharing one key), generated once with 2 processes and
    cached under `data`. Returns (directory, {"records", "unique", "raw_bytes", "gz_bytes"})."""
    name = f"shuffle-{shards}x{records}-pool{pool}-skew{skew:g}-seed{seed}"
    directory = data / name
    meta = directory / "_meta.json"
    if not meta.exists():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        sizes = [records // shards + (s < records % shards) for s in range(shards)]
        firsts = np.cumsum([0] + sizes).tolist()
        jobs = [
            (str(directory / f"part-{s:05d}.jsonl.gz"), s, firsts[s], sizes[s], pool, skew, seed)
            for s in range(shards)
        ]
        raw = gz = 0
        seen = np.zeros(pool + 1, dtype=bool)
        with multiprocessing.get_context("spawn").Pool(2) as workers:
            for r, g, keys in workers.imap_unordered(_gen_shard, jobs):
                raw, gz = raw + r, gz + g
                seen[keys] = True
        stats = {"records": records, "unique": int(seen.sum()), "raw_bytes": raw, "gz_bytes": gz}
        meta.write_text(json.dumps(stats))
    return directory, json.loads(meta.read_text())


def shard_paths(corpus: Path) -> list[str]:
    return [str(p) for p in sorted(corpus.glob("*.jsonl.gz"))]


def read_output(out: Path) -> tuple[int, int, int]:
    """(files, records, sum of the `count` field) over the JSONL files in `out` (hidden skipped)."""
    decode = msgspec.json.Decoder().decode
    files = records = total = 0
    for p in sorted(out.glob("[!.]*")):
        if not p.is_file():
            continue
        files += 1
        with open(p, "rb") as f:
            for line in f:
                if line.strip():
                    records += 1
                    total += decode(line).get("count", 0)
    return files, records, total


class PeakRSS:
    """Samples the RSS of every worker process of `client` every 50 ms while active (a `with`
    block); `peak`/`idle` map each worker address to bytes."""

    def __init__(self, client: Any):
        pids: dict[str, int] = client.run(lambda: __import__("os").getpid())
        self.procs = {w: psutil.Process(pid) for w, pid in pids.items()}
        self.idle = {w: p.memory_info().rss for w, p in self.procs.items()}
        self.peak = dict(self.idle)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for w, p in self.procs.items():
                try:
                    self.peak[w] = max(self.peak[w], p.memory_info().rss)
                except psutil.NoSuchProcess:  # a worker killed (e.g. out of memory) and replaced
                    pass
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
