"""Shuffle throughput (issue 14): exact dedup by `key` and count per `key` over gzip JSONL, zephyr
against hand-written and Dask baselines and against the design (a) prototype, in one process.

Corpus (seeded, generated once with 2 processes and cached under --data, default
<repo>/bench-data/, git-ignored): 16 gzip JSONL shards, 1,000,000 records {"id", "key", "text"}
(text: 50-250 chars of random words; key: 16 hex digits drawn from a pool of 1.3 x records values,
~698k unique; the real count is printed). Every variant reads the shards, decodes every record
and writes 16 uncompressed JSONL files into a fresh folder, on N workers (one per core unless
--workers N; cluster and pool warmed up first), best of --repeat runs:
  one-process dict  one process, isal.igzip + msgspec.json, a dict (first record per key / count)
  multiprocessing   Pool(N): map tasks (one per shard; map-side seen-set or Counter) write 16
                    msgpack partitions by crc32(key) % 16, reduce tasks merge one partition each
  dask.dataframe    read_json(blocksize=None) -> drop_duplicates(subset=["key"]) or
                    groupby("key").size(), split_out=16, shuffle_method="p2p" -> to_json, on the
                    zephyr backend's own client
  design (a)        shuffle_design_a.py: an encoded payload column through Dask's P2P shuffle
  zephyr            Dataset.load_jsonl().deduplicate(...) / .map().group_by(reducer, combiner),
                    num_output_shards=16
Every variant must write one record per unique key, and for count counts that sum to the records.
Printed: each variant's best time and ratios zephyr / dask.dataframe p2p (target <= 1.0 on 2
cores), zephyr / one-process dict, zephyr / multiprocessing, design (a) / zephyr.
The memory check (on by default, --no-memory-check skips it) starts a fresh cluster of N workers
per run and samples every worker's RSS with psutil every 50 ms: dedup of ~2 GB raw (--memory-records
10,000,000 over --memory-shards 64, ~10x the per-task budget) by zephyr with
DaskBackend(client, memory="200MB"), design (a) and dask.dataframe p2p (reference, no budget);
then the skewed corpus (--skew 0.3 of the records share one key, --skew-records, default --records)
by the same three. Target: worker peak RSS <= budget * 1.25 (250 MB).

Run:  python benchmarks/shuffle_throughput.py [--repeat 2] [--workers N] [--no-memory-check]
      python benchmarks/shuffle_throughput.py --records 100000 --no-memory-check  # quick, < 1 min
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from local_cluster import default_workers, start_backend
from shuffle_data import PeakRSS, ensure_corpus, read_output
from shuffle_design_a import design_a, small_part_spread
from shuffle_variants import (
    dask_dataframe,
    multiprocessing_shuffle,
    one_process_count,
    one_process_dedup,
    zephyr_shuffle,
)
from timing import best_times, met

REPO = Path(__file__).resolve().parent.parent
MB = 1e6  # decimal, as zephyr's sizes ("200MB" = 200e6 bytes)
WORKER_IMPORTS = "import dask.dataframe, msgspec, numpy, pandas, pyarrow, isal.igzip, zephyr"
ONE, MP, DDF, DESIGN_A, ZEPHYR = (
    "one-process dict",
    "multiprocessing",
    "dask.dataframe p2p",
    "design (a) prototype",
    "zephyr",
)


def _warm_pool(_: int) -> int:
    import shuffle_variants  # noqa: F401  (every pool process imports the workload once)

    time.sleep(0.2)  # long enough that every pool process takes one
    return os.getpid()


def _warm_cluster(client: Any) -> None:
    """Imports on every worker and one tiny P2P shuffle, so no variant pays for them."""
    import dask.dataframe as dd
    import pandas as pd

    client.run(exec, WORKER_IMPORTS)
    tiny = dd.from_pandas(pd.DataFrame({"a": range(64), "b": range(64)}), npartitions=4)
    tiny.shuffle(on="a", npartitions=4, shuffle_method="p2p").compute(scheduler=client)


class Checker:
    """Keeps each run's output (files, records, sum of counts); prints a mismatch at once."""

    def __init__(self, stats: dict[str, int], count: bool):
        self.stats, self.count = stats, count
        self.seen: dict[str, tuple[int, int, int]] = {}
        self.bad: set[str] = set()

    def problem(self, output: tuple[int, int, int]) -> str | None:
        _, records, total = output
        want = self.stats["unique"]
        if records != want:
            return f"{records} records written, expected {want} (one per unique key)"
        if self.count and total != self.stats["records"]:
            return f"counts sum to {total}, expected {self.stats['records']}"
        return None

    def __call__(self, name: str, out: Path) -> None:
        self.seen[name] = read_output(out)
        if (problem := self.problem(self.seen[name])) is not None:
            self.bad.add(name)
            print(f"  !!! MISMATCH in {name}: {problem}", flush=True)


def run_workload(
    count: bool, ctx: dict[str, Any], stats: dict[str, int], repeat: int
) -> dict[str, float]:
    corpus, parts, client, pool = ctx["corpus"], ctx["parts"], ctx["client"], ctx["pool"]
    one = one_process_count if count else one_process_dedup
    variants: dict[str, Callable[[Path], None]] = {
        ONE: lambda out: one(corpus, out, parts),
        MP: lambda out: multiprocessing_shuffle(pool, corpus, out, parts, count),
        DDF: lambda out: dask_dataframe(client, corpus, out, parts, count),
        DESIGN_A: lambda out: design_a(client, corpus, out, parts, count),
    }
    backend = ctx["backend"]
    variants[ZEPHYR] = lambda out: zephyr_shuffle(backend, corpus, out, parts, count)
    workload = "count" if count else "dedup"
    checker = Checker(stats, count)
    best = best_times(variants, ctx["data"], repeat, checker, prefix=f"out-shuffle-{workload}")
    raw = stats["raw_bytes"] / MB
    print(f"{workload}: {stats['records']} records, {stats['unique']} unique keys, "
          f"best of {repeat} on {ctx['workers']} workers")  # fmt: skip
    for name, seconds in best.items():
        files, records, total = checker.seen[name]
        extra = f", counts sum to {total}" if count else ""
        print(f"  {name:<22} {seconds:7.2f} s  {raw / seconds:6.1f} MB/s raw  "
              f"{records} records in {files} files{extra}  "
              f"{seconds / best[ONE]:.2f}x one-process")  # fmt: skip
    print(f"  ratio design (a) / dask.dataframe p2p = {best[DESIGN_A] / best[DDF]:.2f}")
    z = best[ZEPHYR]
    print(f"  ratio zephyr / dask.dataframe p2p = {z / best[DDF]:.2f} (target <= 1.0) "
          f"{met(z <= best[DDF])}")  # fmt: skip
    print(f"  ratio zephyr / one-process dict = {z / best[ONE]:.2f}")
    print(f"  ratio zephyr / multiprocessing = {z / best[MP]:.2f}")
    print(f"  ratio design (a) / zephyr = {best[DESIGN_A] / z:.2f}")
    if checker.bad:
        print(f"  !!! {workload}: wrong output from {', '.join(sorted(checker.bad))}")
    return best


def measured(
    name: str, args: argparse.Namespace, data: tuple[Path, dict[str, int]], run: Callable
) -> None:
    """One dedup run `run(client, out)` on a fresh cluster of N workers while sampling the
    workers' RSS; prints time, output check and peak RSS per worker (a failure is reported)."""
    corpus, stats = data
    workers = args.workers or default_workers()
    backend, _, close = start_backend(workers)
    out = args.data / "out-shuffle-memory"
    shutil.rmtree(out, ignore_errors=True)
    error: BaseException | None = None
    try:
        client = backend.client
        imports = "import zephyr, msgspec, isal.igzip" if name == ZEPHYR else WORKER_IMPORTS
        client.run(exec, imports)
        with PeakRSS(client) as rss:
            start = time.perf_counter()
            try:
                run(client, out)
            except Exception as e:  # reported below: a failing variant is a result here
                error = e
            seconds = time.perf_counter() - start
    finally:
        close()
    if error is not None:
        print(f"  {name}: FAILED after {seconds:.1f} s: {type(error).__name__}: {error}")
    else:
        checker = Checker(stats, count=False)
        checker(name, out)
        files, records, _ = checker.seen[name]
        print(f"  {name}: {seconds:.1f} s, {records} records in {files} files "
              f"({rss.samples} RSS samples)")  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    for w in sorted(rss.peak):
        idle, peak = rss.idle[w] / MB, rss.peak[w] / MB
        print(f"    worker {w}: RSS before {idle:.0f} MB, peak {peak:.0f} MB (+{peak - idle:.0f})")
    top, limit = max(rss.peak.values()), 1.25 * args.budget_bytes
    if name == DDF:
        print(f"    peak {top / MB:.0f} MB (reference: dask.dataframe has no per-task budget)")
    else:
        print(f"    target: peak <= budget * 1.25 ({limit / MB:.0f} MB): {top / MB:.0f} MB "
              f"{met(top <= limit)}")  # fmt: skip


def memory_checks(args: argparse.Namespace) -> None:
    from zephyr import DaskBackend

    parts, budget = args.partitions, args.memory_budget

    def variants() -> dict[str, Callable]:
        found: dict[str, Callable] = {}
        found[ZEPHYR] = lambda client, out: zephyr_shuffle(
            DaskBackend(client, memory=budget), corpus, out, parts, False
        )
        found[DESIGN_A] = lambda client, out: design_a(client, corpus, out, parts, False)
        found[DDF] = lambda client, out: dask_dataframe(client, corpus, out, parts, False)
        return found

    n, began = args.memory_records, time.perf_counter()
    data = ensure_corpus(args.data, args.memory_shards, n, round(1.3 * n), 0.0, args.seed + 1)
    corpus, stats = data
    print(f"memory check: dedup of {stats['records']} records ({stats['unique']} unique keys, "
          f"{stats['raw_bytes'] / MB:.0f} MB raw, {args.memory_shards} shards; "
          f"budget memory={budget!r}, fresh cluster per run; corpus ready in "
          f"{time.perf_counter() - began:.0f} s)")  # fmt: skip
    for name, run in variants().items():
        measured(name, args, data, run)

    n = args.skew_records or args.records
    data = ensure_corpus(args.data, args.shards, n, round(1.3 * n), args.skew, args.seed + 2)
    corpus, stats = data
    print(f"skewed: dedup of {stats['records']} records, {args.skew:.0%} share one key "
          f"({stats['unique']} unique keys, {stats['raw_bytes'] / MB:.0f} MB raw), "
          f"budget memory={budget!r}")  # fmt: skip
    for name, run in variants().items():
        measured(name, args, data, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "bench-data")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--unique-pool", type=int, default=None, help="key values drawn from (1.3 x records)"
    )
    parser.add_argument("--partitions", type=int, default=16, help="output files per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant; best is kept")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="a LocalCluster of N single-threaded worker processes and N pool processes "
        "(default: the embedded cluster, one worker per core)",
    )
    parser.add_argument(
        "--memory-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dedup ~2 GB and a skewed corpus, reporting the workers' peak RSS (default: on)",
    )
    parser.add_argument("--memory-records", type=int, default=10_000_000)
    parser.add_argument("--memory-shards", type=int, default=64)
    parser.add_argument("--memory-budget", default="200MB", help="zephyr's memory= per task")
    parser.add_argument("--skew", type=float, default=0.3, help="share of records on one key")
    parser.add_argument("--skew-records", type=int, default=None, help="default: --records")
    args = parser.parse_args()
    from fray_dask.sizes import parse_size

    args.budget_bytes = parse_size(args.memory_budget, what="--memory-budget")
    began = time.perf_counter()
    pool_size = args.unique_pool or round(1.3 * args.records)
    corpus, stats = ensure_corpus(args.data, args.shards, args.records, pool_size, 0.0, args.seed)
    print(f"corpus: {corpus} ({args.shards} shards, {stats['records']} records, "
          f"{stats['unique']} unique keys from a pool of {pool_size}, "
          f"{stats['raw_bytes'] / MB:.0f} MB raw, {stats['gz_bytes'] / MB:.0f} MB gzip; "
          f"ready in {time.perf_counter() - began:.1f} s)")  # fmt: skip
    print(f"note: shuffle(on='part') with part = crc32 % {args.partitions} fills "
          f"{small_part_spread(args.partitions)} of {args.partitions} partitions (Dask re-hashes "
          "it); design (a) shuffles on the full crc32")  # fmt: skip

    backend, workers, close = start_backend(args.workers)
    n_procs = args.workers or default_workers()
    pool = multiprocessing.get_context("spawn").Pool(n_procs)
    try:
        _warm_cluster(backend.client)
        pool.map(_warm_pool, range(n_procs), chunksize=1)  # every process up before timing
        busy = psutil.cpu_percent(interval=1.0)
        if busy > 15:
            print(f"WARNING: the machine is {busy:.0f}% busy before timing; results will be noisy")
        ctx = {
            "corpus": corpus,
            "data": args.data,
            "parts": args.partitions,
            "client": backend.client,
            "backend": backend,
            "pool": pool,
            "workers": workers,
        }
        for count in (False, True):
            run_workload(count, ctx, stats, args.repeat)
    finally:
        pool.close()
        pool.join()
        close()
    if args.memory_check:
        memory_checks(args)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
