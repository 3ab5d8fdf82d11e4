"""Throughput of one gzip JSONL pipeline: zephyr on the DaskBackend vs hand-written baselines.

Pipeline: read gzip JSONL -> parse -> add `n_words` -> keep n_words >= 100 -> write gzip JSONL,
timed three ways in one process on the same 2 cores (cluster and pool warmed up first):
  zephyr           from_files().flat_map(load_jsonl).map().filter().write_jsonl() on the embedded
                   DaskBackend (2 single-threaded worker processes; msgspec, gzip 1 via ISA-L)
  multiprocessing  multiprocessing.Pool(2) over the shards, stdlib json + gzip (compresslevel=1)
  dask.bag         read_text().map(json.loads)...to_textfiles() with scheduler=<the same client>;
                   to_textfiles gzips through fsspec: zlib level 9, or ISA-L (igzip, its default
                   level) when python-isal is installed, as it is with zephyr. --bag-plain also
                   times dask.bag and zephyr writing plain .jsonl (framework + JSON codec only).
The corpus (default 16 shards x 20,000 docs of 50-400 words, ~450 MB raw, seeded) is generated
once and cached under --data (default <repo>/bench-data/, git-ignored). All variants must write the
same number of records. Target: zephyr <= 1.10x multiprocessing, and faster than dask.bag.
The memory check (on by default; ~1 min to generate the shard once, ~25 s to run; skip it with
--no-memory-check) streams one ~1 GB (raw) shard (--memory-docs) through zephyr while a driver
thread samples the workers' RSS with psutil every 50 ms. Target: worker peak RSS < 300 MiB.

Run:  python benchmarks/pipeline_throughput.py [--repeat 2] [--bag-plain] [--no-memory-check]
      python benchmarks/pipeline_throughput.py --shards 4 --docs 2000 --no-memory-check  # quick
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import json
import multiprocessing
import os
import random
import shutil
import string
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from timing import best_times

REPO = Path(__file__).resolve().parent.parent
MIN_WORDS = 100
SOURCES = ("web", "books", "wiki", "news", "code")
CHUNK_DOCS = 10_000
MIB = 1 << 20


@functools.lru_cache(maxsize=1)
def _vocabulary(size: int = 20_000) -> tuple[list[str], list[float]]:
    """Pseudo-words, shortest first, with Zipf cumulative weights (frequent words are short)."""
    rng = random.Random(1234)
    letters = string.ascii_lowercase
    words = {"".join(rng.choices(letters, k=rng.randint(4, 16))) for _ in range(size)}
    ordered = sorted(words, key=lambda w: (len(w), w))
    return ordered, list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(ordered))))


def _gen_chunk(args: tuple[int, int, int]) -> tuple[bytes, int]:
    """(gzip member, raw size) of `n_docs` JSON lines with ids from `first_id`."""
    seed, first_id, n_docs = args
    rng = random.Random(seed)
    vocab, cum = _vocabulary()
    lines = []
    for i in range(first_id, first_id + n_docs):
        text = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(50, 400)))
        doc = {"id": f"doc-{i:010d}", "text": text, "source": rng.choice(SOURCES)}
        lines.append(json.dumps(doc) + "\n")
    raw = "".join(lines).encode()
    return gzip.compress(raw, compresslevel=6, mtime=0), len(raw)


def ensure_corpus(directory: Path, shards: int, docs: int, seed: int) -> dict[str, int]:
    """Generate `shards` x `docs` gzip JSONL files in `directory` (2 processes) unless cached."""
    meta = directory / "_meta.json"
    if not meta.exists():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        raw_total = 0
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            for shard in range(shards):
                first = shard * docs
                chunks = [
                    (seed * 1_000_003 + shard * 10_007 + c, s, min(CHUNK_DOCS, first + docs - s))
                    for c, s in enumerate(range(first, first + docs, CHUNK_DOCS))
                ]
                with open(directory / f"part-{shard:05d}.jsonl.gz", "wb") as f:
                    for member, raw in pool.imap(_gen_chunk, chunks):
                        f.write(member)
                        raw_total += raw
        gz = sum(p.stat().st_size for p in directory.glob("*.jsonl.gz"))
        meta.write_text(json.dumps({"raw_bytes": raw_total, "gz_bytes": gz, "docs": shards * docs}))
    return json.loads(meta.read_text())


def count_records(out: Path) -> int:
    total = 0
    for p in sorted(out.glob("[!.]*.jsonl*")):
        with (gzip.open if p.suffix == ".gz" else open)(p, "rb") as f:
            total += sum(1 for line in f if line.strip())
    return total


def add_n_words(doc: dict) -> dict:
    doc["n_words"] = doc["text"].count(" ") + 1
    return doc


def keep(doc: dict) -> bool:
    return doc["n_words"] >= MIN_WORDS


def run_zephyr(backend: Any, corpus: Path, out: Path, plain: bool = False) -> None:
    from zephyr import Dataset, load_jsonl

    pipeline = (
        Dataset.from_files(str(corpus), "*.jsonl.gz")
        .flat_map(load_jsonl)
        .map(add_n_words)
        .filter(keep)
        .write_jsonl(f"{out}/{{shard:05d}}.jsonl" + ("" if plain else ".gz"))
    )
    list(backend.execute(pipeline))


def _mp_shard(paths: tuple[str, str]) -> None:
    src, dst = paths
    with (
        gzip.open(src, "rt", encoding="utf-8") as fin,
        gzip.open(dst, "wt", encoding="utf-8", compresslevel=1) as fout,
    ):
        for line in fin:
            doc = add_n_words(json.loads(line))
            if keep(doc):
                fout.write(json.dumps(doc) + "\n")


def run_multiprocessing(pool: Any, corpus: Path, out: Path) -> None:
    out.mkdir(parents=True)
    jobs = [(str(p), str(out / p.name)) for p in sorted(corpus.glob("*.jsonl.gz"))]
    pool.map(_mp_shard, jobs, chunksize=1)


def run_bag(client: Any, corpus: Path, out: Path, plain: bool = False) -> None:
    import dask.bag as db

    bag = db.read_text(f"{corpus}/*.jsonl.gz", compression="gzip")
    bag = bag.map(json.loads).map(add_n_words).filter(keep).map(json.dumps)
    bag.to_textfiles(f"{out}/*.jsonl" + ("" if plain else ".gz"), scheduler=client)


def _fsspec_gzip() -> str:
    """Which gzip fsspec (and so dask.bag) writes with: ISA-L when python-isal is importable."""
    import fsspec.compression

    return "fsspec gzip via ISA-L" if "isal" in repr(fsspec.compression.compr["gzip"]) else "gzip 9"


def _ok(met: bool) -> str:
    return "OK" if met else "MISSED"


def memory_check(backend: Any, data: Path, docs: int, seed: int) -> None:
    shard_dir = data / f"memory-1x{docs}-seed{seed}"
    stats = ensure_corpus(shard_dir, 1, docs, seed + 1)
    out = data / "out-memory"
    shutil.rmtree(out, ignore_errors=True)
    pids: dict[str, int] = backend.client.run(os.getpid)
    procs = {w: psutil.Process(pid) for w, pid in pids.items()}
    idle = {w: p.memory_info().rss for w, p in procs.items()}
    peak = dict(idle)
    cpu0 = {w: sum(p.cpu_times()[:2]) for w, p in procs.items()}
    stop, samples = threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            for w, p in procs.items():
                peak[w] = max(peak[w], p.memory_info().rss)
            samples[0] += 1
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    run_zephyr(backend, shard_dir, out)
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    raw_mb, written = stats["raw_bytes"] / 1e6, count_records(out)
    print(f"memory check: 1 shard of {stats['docs']} docs, {raw_mb:.0f} MB raw, {elapsed:.1f} s, "
          f"{samples[0]} RSS samples, {written} records written")  # fmt: skip
    for w in sorted(pids):
        cpu = sum(procs[w].cpu_times()[:2]) - cpu0[w]
        print(f"  worker {w} (pid {pids[w]}): RSS before {idle[w] / MIB:.0f} MiB, "
              f"peak {peak[w] / MIB:.0f} MiB, CPU used during the run {cpu:.1f} s")  # fmt: skip
    top = max(peak.values())
    print(f"worker peak RSS: {top / MIB:.0f} MiB (target < 300 MiB) {_ok(top < 300 * MIB)}")
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "bench-data")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--docs", type=int, default=20_000, help="documents per shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; best is kept")
    parser.add_argument("--bag-plain", action="store_true", help="also time plain .jsonl output")
    parser.add_argument(
        "--memory-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream a ~1 GB shard and report the workers' peak RSS (default: on)",
    )
    parser.add_argument("--memory-docs", type=int, default=720_000)
    args = parser.parse_args()

    from zephyr import DaskBackend, Dataset
    from zephyr.backends.connection import shutdown_embedded

    start = time.perf_counter()
    corpus = args.data / f"corpus-{args.shards}x{args.docs}-seed{args.seed}"
    stats = ensure_corpus(corpus, args.shards, args.docs, args.seed)
    print(f"corpus: {corpus} ({args.shards} shards x {args.docs} docs, "
          f"{stats['raw_bytes'] / 1e6:.0f} MB raw, {stats['gz_bytes'] / 1e6:.0f} MB gzip; "
          f"ready in {time.perf_counter() - start:.1f} s)")  # fmt: skip

    backend = DaskBackend()
    client = backend.client
    client.run(exec, "import dask.bag, msgspec, zephyr.io.writers")
    list(backend.execute(Dataset.from_list([{"text": "a b"}] * 4).map(add_n_words).filter(keep)))
    pool = multiprocessing.get_context("spawn").Pool(2)
    pool.map(abs, range(2), chunksize=1)  # both processes up before timing
    busy = psutil.cpu_percent(interval=1.0)
    if busy > 15:
        print(f"WARNING: the machine is {busy:.0f}% busy before timing; results will be noisy")

    variants = {
        "zephyr (DaskBackend, gzip 1)": lambda out: run_zephyr(backend, corpus, out),
        "multiprocessing.Pool(2) (gzip 1)": lambda out: run_multiprocessing(pool, corpus, out),
        f"dask.bag ({_fsspec_gzip()})": lambda out: run_bag(client, corpus, out),
    }
    if args.bag_plain:
        variants["zephyr (plain output)"] = lambda out: run_zephyr(backend, corpus, out, True)
        variants["dask.bag (plain output)"] = lambda out: run_bag(client, corpus, out, True)
    records: dict[str, int] = {}

    def inspect(name: str, out: Path) -> None:
        records[name] = count_records(out)

    best = best_times(variants, args.data, args.repeat, inspect)
    pool.close()
    pool.join()

    for name, seconds in best.items():
        print(f"{name:<34} {seconds:7.2f} s  {stats['raw_bytes'] / 1e6 / seconds:6.1f} MB/s  "
              f"{records[name]} of {stats['docs']} records written")  # fmt: skip
    if len(set(records.values())) != 1:
        raise SystemExit(f"record counts differ: {records}")
    z, mp, bag = list(best.values())[:3]
    print(f"ratio zephyr/multiprocessing: {z / mp:.2f}x (target <= 1.10x) {_ok(z <= 1.1 * mp)}")
    print(f"ratio zephyr/dask.bag: {z / bag:.2f}x (target < 1.00x) {_ok(z < bag)}")
    if args.bag_plain:
        zp, bp = best["zephyr (plain output)"], best["dask.bag (plain output)"]
        print(f"ratio zephyr/dask.bag, both plain output: {zp / bp:.2f}x (no target)")

    if args.memory_check:
        memory_check(backend, args.data, args.memory_docs, args.seed)
    shutdown_embedded()


if __name__ == "__main__":
    main()
