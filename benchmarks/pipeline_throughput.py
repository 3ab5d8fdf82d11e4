"""Throughput of one gzip JSONL pipeline: zephyr on the DaskBackend vs hand-written baselines.

Pipeline: read gzip JSONL -> parse -> add `n_words` -> keep n_words >= 100 -> write gzip JSONL,
timed four ways in one process on the same N workers (cluster and pool warmed up first; N is one
per core unless --workers N):
  zephyr           from_files().flat_map(load_jsonl).map().filter().write_jsonl() on the DaskBackend
                   (N single-threaded worker processes: the embedded cluster, or with --workers N a
                   LocalCluster advertising the same resources; msgspec, gzip 1 via ISA-L)
  multiprocessing  multiprocessing.Pool(N) over the shards, stdlib json + gzip (compresslevel=1)
  dask.bag         read_text().map(json.loads)...to_textfiles() with scheduler=<the same client>;
                   to_textfiles gzips through fsspec: zlib level 9, or ISA-L (igzip, its default
                   level) when python-isal is installed, as it is with zephyr. --bag-plain also
                   times dask.bag and zephyr writing plain .jsonl (framework + JSON codec only).
  tuned loop       the same pool, one shard per task, written as fast as a person would: isal.igzip
                   in, msgspec decode, msgspec encode in batches, isal.igzip level 1 out to a hidden
                   temporary renamed into place (zephyr commits atomically: the same work)
The corpus (default 16 shards x 20,000 docs of 50-400 words, ~450 MB raw, seeded) is generated
once and cached under --data (default <repo>/bench-data/, git-ignored). All variants must write the
same number of records. Each variant's best time is printed with its ratio to the tuned loop.
Targets: zephyr <= 1.10x the tuned loop; zephyr <= 1.10x multiprocessing, and faster than dask.bag.
--profile then runs zephyr and the tuned loop once more and splits the gap between them: on the
cluster, from the task stream (driver before the first task, worker compute, worker idle between
tasks: scheduling, the submission window, imbalance; driver after the last task); and in this one
process, serially over every shard (zephyr through SyncBackend, i.e. the per-shard kernels): reading
(load_jsonl vs the igzip + msgspec loop), writing (write_jsonl vs the loop's writer) and the rest
(per-record generators, counting). One line per component: seconds (in-process seconds divided by
N, as N workers share them) and its share of the gap.
The memory check (on by default; ~1 min to generate the shard once, ~25 s to run; skip it with
--no-memory-check) streams one ~1 GB (raw) shard (--memory-docs) through zephyr while a driver
thread samples the workers' RSS with psutil every 50 ms. Target: worker peak RSS < 300 MiB.

Run:  python benchmarks/pipeline_throughput.py [--repeat 2] [--bag-plain] [--no-memory-check]
      python benchmarks/pipeline_throughput.py --workers 8 --profile --no-memory-check
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

import msgspec
import psutil
from isal import igzip
from local_cluster import default_workers, start_backend
from timing import best_times

REPO = Path(__file__).resolve().parent.parent
MIN_WORDS = 100
SOURCES = ("web", "books", "wiki", "news", "code")
CHUNK_DOCS = 10_000
MIB = 1 << 20
WRITE_BATCH = 512  # encoded lines per write in the tuned loop (zephyr batches likewise)


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


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _tmp_beside(dst: str) -> str:
    folder, name = os.path.split(dst)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def _tuned_shard(paths: tuple[str, str]) -> tuple[int, float, float]:
    """The tuned loop over one shard; returns (pid, start, stop) in time.time() seconds."""
    start = time.time()
    src, dst = paths
    tmp = _tmp_beside(dst)
    decode, encode, batch = _decode, _encode, []
    with igzip.open(src, "rb") as fin, igzip.open(tmp, "wb", compresslevel=1) as fout:
        for line in fin:
            doc = add_n_words(decode(line))
            if keep(doc):
                batch.append(encode(doc))
                if len(batch) >= WRITE_BATCH:
                    batch.append(b"")
                    fout.write(b"\n".join(batch))
                    batch = []
        if batch:
            batch.append(b"")
            fout.write(b"\n".join(batch))
    os.replace(tmp, dst)
    return os.getpid(), start, time.time()


def run_tuned(pool: Any, corpus: Path, out: Path, spans: list | None = None) -> None:
    out.mkdir(parents=True)
    jobs = [(str(p), str(out / p.name)) for p in sorted(corpus.glob("*.jsonl.gz"))]
    result = pool.map(_tuned_shard, jobs, chunksize=1)
    if spans is not None:
        spans.extend(result)


def run_bag(client: Any, corpus: Path, out: Path, plain: bool = False) -> None:
    import dask.bag as db

    bag = db.read_text(f"{corpus}/*.jsonl.gz", compression="gzip")
    bag = bag.map(json.loads).map(add_n_words).filter(keep).map(json.dumps)
    bag.to_textfiles(f"{out}/*.jsonl" + ("" if plain else ".gz"), scheduler=client)


def _fsspec_gzip() -> str:
    """Which gzip fsspec (and so dask.bag) writes with: ISA-L when python-isal is importable."""
    import fsspec.compression

    return "fsspec gzip via ISA-L" if "isal" in repr(fsspec.compression.compr["gzip"]) else "gzip 9"


def _warm(_: int) -> int:
    time.sleep(0.2)  # long enough that every pool process takes one
    return os.getpid()


def _ok(met: bool) -> str:
    return "OK" if met else "MISSED"


# -- --profile: where zephyr's time goes beyond the tuned loop
def _phases(spans: list[tuple[float, float]], t0: float, t1: float, workers: int) -> list[float]:
    """Wall time t1 - t0 split as [driver before the first task, worker compute / N, worker idle
    between the first start and the last stop / N, driver after the last task]."""
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    busy = sum(e - s for s, e in spans) / workers
    return [first - t0, busy, last - first - busy, t1 - last]


def _best_of(repeat: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _tuned_write(docs: list, dst: str) -> None:
    """The tuned loop's writer alone: msgspec in batches, igzip 1, temporary renamed."""
    tmp = _tmp_beside(dst)
    with igzip.open(tmp, "wb", compresslevel=1) as fout:
        for i in range(0, len(docs), WRITE_BATCH):
            batch = [_encode(d) for d in docs[i : i + WRITE_BATCH]]
            batch.append(b"")
            fout.write(b"\n".join(batch))
    os.replace(tmp, dst)


def _in_process(corpus: Path, out: Path, repeat: int) -> dict[str, tuple[float, float]]:
    """(zephyr, tuned) seconds in this process over every shard: whole shard, read, write."""
    from zephyr import Dataset, SyncBackend, load_jsonl

    paths = sorted(corpus.glob("*.jsonl.gz"))

    def fresh(name: str) -> Path:
        shutil.rmtree(out / name, ignore_errors=True)
        return out / name

    def read_zephyr() -> None:
        for p in paths:
            for _ in load_jsonl(str(p)):
                pass

    def read_tuned() -> None:
        for p in paths:
            with igzip.open(p, "rb") as f:
                for line in f:
                    _decode(line)

    write_z = write_t = 0.0
    for i, p in enumerate(paths):  # one shard's kept records in memory at a time, not timed
        docs = [d for d in map(add_n_words, load_jsonl(str(p))) if keep(d)]
        w = fresh("write")
        w.mkdir(parents=True)
        pipeline = (
            Dataset.from_list([i])
            .flat_map(lambda _, docs=docs: docs)
            .write_jsonl(f"{w}/z-{{shard:05d}}.jsonl.gz")
        )
        write_z += _best_of(repeat, lambda pipeline=pipeline: list(pipeline.execute(SyncBackend())))
        write_t += _best_of(repeat, lambda docs=docs, w=w: _tuned_write(docs, f"{w}/t.jsonl.gz"))

    def whole_zephyr() -> None:
        run_zephyr(SyncBackend(), corpus, fresh("whole-z"))

    def whole_tuned() -> None:
        fresh("whole-t").mkdir(parents=True)
        for p in paths:
            _tuned_shard((str(p), str(out / "whole-t" / p.name)))

    result = {
        "whole": (_best_of(repeat, whole_zephyr), _best_of(repeat, whole_tuned)),
        "read": (_best_of(repeat, read_zephyr), _best_of(repeat, read_tuned)),
        "write": (write_z, write_t),
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def profile(backend: Any, pool: Any, workers: int, corpus: Path, data: Path, repeat: int) -> None:
    from distributed import get_task_stream

    out = data / "out-profile"
    shutil.rmtree(out, ignore_errors=True)
    with get_task_stream(client=backend.client) as stream:
        t0 = time.time()
        run_zephyr(backend, corpus, out)
        t1 = time.time()
    spans = [
        (ss["start"], ss["stop"])
        for task in stream.data
        for ss in task["startstops"]
        if ss["action"] == "compute"
    ]
    z = _phases(spans, t0, t1, workers)
    shutil.rmtree(out, ignore_errors=True)
    pool_spans: list = []
    t0 = time.time()
    run_tuned(pool, corpus, out, pool_spans)
    t1 = time.time()
    t = _phases([(s, e) for _, s, e in pool_spans], t0, t1, workers)
    shutil.rmtree(out, ignore_errors=True)
    gap = sum(z) - sum(t)

    def line(name: str, zs: float, ts: float, share: bool = True) -> None:
        pct = f"  {(zs - ts) / gap:6.0%} of the gap" if share and gap > 0 else ""
        print(f"  {name:<56} zephyr {zs:6.3f} s  tuned {ts:6.3f} s  gap {zs - ts:+.3f} s{pct}")

    print(f"profile: zephyr vs the tuned loop on {workers} workers, one run each "
          f"({len(spans)} zephyr tasks, {len(pool_spans)} pool tasks)")  # fmt: skip
    line("wall", sum(z), sum(t), share=False)
    if gap <= 0:
        print("  (zephyr was not slower than the tuned loop in this run: no shares)")
    names = (
        "driver before the first task (plan, listing, submit)",
        "worker compute (sum over tasks / N)",
        "worker idle, first start to last stop (/ N)",
        "driver after the last task (gather, finish)",
    )
    for name, zs, ts in zip(names, z, t, strict=True):
        line(name, zs, ts)
    parts = _in_process(corpus, out, repeat)
    (wz, wt), (rz, rt), (xz, xt) = parts["whole"], parts["read"], parts["write"]
    print(f"  in this process, serially over every shard (seconds / {workers}; best of {repeat}):")
    line("whole shard (SyncBackend, i.e. run_task, vs tuned)", wz / workers, wt / workers)
    line("  read + decode (load_jsonl vs igzip + msgspec loop)", rz / workers, rt / workers)
    line("  encode + write (write_jsonl vs the loop's writer)", xz / workers, xt / workers)
    rest_z, rest_t = (wz - rz - xz) / workers, (wt - rt - xt) / workers
    line("  the rest (generators per op, map/filter, counting)", rest_z, rest_t)


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
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="start a LocalCluster of N single-threaded worker processes and use N pool "
        "processes (default: the embedded cluster, one worker per core)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="split zephyr's extra time over the tuned loop into components",
    )
    args = parser.parse_args()

    from zephyr import Dataset

    start = time.perf_counter()
    corpus = args.data / f"corpus-{args.shards}x{args.docs}-seed{args.seed}"
    stats = ensure_corpus(corpus, args.shards, args.docs, args.seed)
    print(f"corpus: {corpus} ({args.shards} shards x {args.docs} docs, "
          f"{stats['raw_bytes'] / 1e6:.0f} MB raw, {stats['gz_bytes'] / 1e6:.0f} MB gzip; "
          f"ready in {time.perf_counter() - start:.1f} s)")  # fmt: skip

    backend, workers, close = start_backend(args.workers)
    client = backend.client
    client.run(exec, "import dask.bag, msgspec, zephyr.io.writers")
    warm = [{"text": "a b"}] * max(4, 2 * workers)
    list(backend.execute(Dataset.from_list(warm).map(add_n_words).filter(keep)))
    n_procs = args.workers or default_workers()
    pool = multiprocessing.get_context("spawn").Pool(n_procs)
    pool.map(_warm, range(n_procs), chunksize=1)  # every process up before timing
    busy = psutil.cpu_percent(interval=1.0)
    if busy > 15:
        print(f"WARNING: the machine is {busy:.0f}% busy before timing; results will be noisy")

    tuned = f"tuned loop Pool({n_procs}) (isal 1, msgspec)"
    variants = {
        f"zephyr (DaskBackend x{workers}, gzip 1)": lambda out: run_zephyr(backend, corpus, out),
        f"multiprocessing.Pool({n_procs}) (gzip 1)": lambda out: run_multiprocessing(
            pool, corpus, out
        ),
        f"dask.bag ({_fsspec_gzip()})": lambda out: run_bag(client, corpus, out),
        tuned: lambda out: run_tuned(pool, corpus, out),
    }
    if args.bag_plain:
        variants["zephyr (plain output)"] = lambda out: run_zephyr(backend, corpus, out, True)
        variants["dask.bag (plain output)"] = lambda out: run_bag(client, corpus, out, True)
    records: dict[str, int] = {}

    def inspect(name: str, out: Path) -> None:
        records[name] = count_records(out)

    best = best_times(variants, args.data, args.repeat, inspect)

    for name, seconds in best.items():
        print(f"{name:<40} {seconds:7.2f} s  {stats['raw_bytes'] / 1e6 / seconds:6.1f} MB/s  "
              f"{records[name]} of {stats['docs']} records written  "
              f"{seconds / best[tuned]:.2f}x tuned")  # fmt: skip
    if len(set(records.values())) != 1:
        raise SystemExit(f"record counts differ: {records}")
    z, mp, bag, tl = list(best.values())[:4]
    shorts = ["zephyr", "multiprocessing", "dask.bag", "tuned"] + list(best)[4:]
    for name, short in zip(best, shorts, strict=True):
        if name != tuned:
            print(f"{short}/tuned = {best[name] / tl:.2f}")
    print(f"ratio zephyr/multiprocessing: {z / mp:.2f}x (target <= 1.10x) {_ok(z <= 1.1 * mp)}")
    print(f"ratio zephyr/dask.bag: {z / bag:.2f}x (target < 1.00x) {_ok(z < bag)}")
    print(f"target zephyr <= 1.10x the tuned loop ({workers} workers): {z / tl:.2f}x "
          f"{_ok(z <= 1.1 * tl)}")  # fmt: skip
    if args.bag_plain:
        zp, bp = best["zephyr (plain output)"], best["dask.bag (plain output)"]
        print(f"ratio zephyr/dask.bag, both plain output: {zp / bp:.2f}x (no target)")

    if args.profile:
        profile(backend, pool, workers, corpus, args.data, args.repeat)
    pool.close()
    pool.join()
    if args.memory_check:
        memory_check(backend, args.data, args.memory_docs, args.seed)
    close()


if __name__ == "__main__":
    main()
