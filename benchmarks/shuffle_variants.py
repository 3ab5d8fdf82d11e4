"""The shuffle workloads of benchmarks/shuffle_throughput.py (exact dedup by `key`, count per
`key`) written four ways: one process, multiprocessing, dask.dataframe P2P, and zephyr's group_by /
deduplicate (the design (a) prototype lives in shuffle_design_a.py). Each writes JSONL files into a
fresh folder `out`; the user functions below are module-level so they pickle to workers."""

from __future__ import annotations

import os
import shutil
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from isal import igzip
from shuffle_data import shard_paths

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode
WRITE_BATCH = 1024  # encoded lines per write


# -- the user functions (zephyr and design (a) call them per record / per group)
def get_key(record: dict) -> str:
    return record["key"]


def key_and_one(record: dict) -> dict:
    return {"key": record["key"], "n": 1}


def combine_counts(key: str, items: Any) -> list[dict]:
    return [{"key": key, "n": sum(i["n"] for i in items)}]


def sum_counts(key: str, items: Any) -> dict:
    return {"key": key, "count": sum(i["n"] for i in items)}


def partition_of(key: str, parts: int) -> int:
    """The stable partition of a key: crc32 of its UTF-8 bytes, modulo `parts`."""
    return zlib.crc32(key.encode()) % parts


def read_records(path: str) -> Any:
    with igzip.open(path, "rb") as f:
        for line in f:
            yield _decode(line)


def write_jsonl(path: Path, records: Any) -> int:
    """Write `records` (dicts) as JSON lines into `path`; returns how many."""
    n, batch = 0, []
    with open(path, "wb") as f:
        for rec in records:
            batch.append(_encode(rec))
            if len(batch) >= WRITE_BATCH:
                n += len(batch)
                batch.append(b"")
                f.write(b"\n".join(batch))
                batch = []
        if batch:
            n += len(batch)
            batch.append(b"")
            f.write(b"\n".join(batch))
    return n


def _write_parts(out: Path, records: Any, parts: int) -> None:
    """Spread `records` over `parts` files by the stable partition of their key."""
    buckets: list[list[dict]] = [[] for _ in range(parts)]
    for rec in records:
        buckets[partition_of(rec["key"], parts)].append(rec)
    for p, bucket in enumerate(buckets):
        write_jsonl(out / f"part-{p:05d}.jsonl", bucket)


# -- one process: the floor on a small machine
def one_process_dedup(corpus: Path, out: Path, parts: int) -> None:
    first: dict[str, dict] = {}
    for path in shard_paths(corpus):
        for rec in read_records(path):
            first.setdefault(rec["key"], rec)
    out.mkdir(parents=True)
    _write_parts(out, first.values(), parts)


def one_process_count(corpus: Path, out: Path, parts: int) -> None:
    counts: Counter[str] = Counter()
    for path in shard_paths(corpus):
        counts.update(rec["key"] for rec in read_records(path))
    out.mkdir(parents=True)
    _write_parts(out, ({"key": k, "count": n} for k, n in counts.items()), parts)


# -- multiprocessing: hash-partition map tasks write msgpack files, one reduce task per partition
def _map_files(scratch: str, shard: int, buckets: list[list]) -> None:
    for p, bucket in enumerate(buckets):
        with open(os.path.join(scratch, f"m{shard:05d}-{p:05d}.msgpack"), "wb") as f:
            f.write(_pack(bucket))


def _mp_dedup_map(job: tuple[str, int, str, int]) -> None:
    path, shard, scratch, parts = job
    seen: set[str] = set()
    buckets: list[list] = [[] for _ in range(parts)]
    for rec in read_records(path):
        k = rec["key"]
        if k not in seen:
            seen.add(k)
            buckets[partition_of(k, parts)].append(rec)
    _map_files(scratch, shard, buckets)


def _mp_dedup_reduce(job: tuple[int, str, int, str]) -> None:
    part, scratch, shards, out = job
    seen: set[str] = set()
    kept = []
    for shard in range(shards):
        with open(os.path.join(scratch, f"m{shard:05d}-{part:05d}.msgpack"), "rb") as f:
            for rec in _unpack(f.read()):
                if rec["key"] not in seen:
                    seen.add(rec["key"])
                    kept.append(rec)
    write_jsonl(Path(out) / f"part-{part:05d}.jsonl", kept)


def _mp_count_map(job: tuple[str, int, str, int]) -> None:
    path, shard, scratch, parts = job
    counts = Counter(rec["key"] for rec in read_records(path))
    buckets: list[list] = [[] for _ in range(parts)]
    for k, n in counts.items():
        buckets[partition_of(k, parts)].append((k, n))
    _map_files(scratch, shard, buckets)


def _mp_count_reduce(job: tuple[int, str, int, str]) -> None:
    part, scratch, shards, out = job
    counts: Counter[str] = Counter()
    for shard in range(shards):
        with open(os.path.join(scratch, f"m{shard:05d}-{part:05d}.msgpack"), "rb") as f:
            for k, n in _unpack(f.read()):
                counts[k] += n
    records = ({"key": k, "count": n} for k, n in counts.items())
    write_jsonl(Path(out) / f"part-{part:05d}.jsonl", records)


def multiprocessing_shuffle(pool: Any, corpus: Path, out: Path, parts: int, count: bool) -> None:
    """Map tasks (one per shard) then reduce tasks (one per partition) on `pool`; the scratch
    folder beside `out` is removed afterwards."""
    paths = shard_paths(corpus)
    scratch = out.with_name(out.name + "-scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    out.mkdir(parents=True)
    mapper, reducer = (
        (_mp_count_map, _mp_count_reduce) if count else (_mp_dedup_map, _mp_dedup_reduce)
    )
    pool.map(mapper, [(p, s, str(scratch), parts) for s, p in enumerate(paths)], chunksize=1)
    pool.map(reducer, [(p, str(scratch), len(paths), str(out)) for p in range(parts)], chunksize=1)
    shutil.rmtree(scratch)


# -- dask.dataframe with the P2P shuffle, on the same cluster
def dask_dataframe(client: Any, corpus: Path, out: Path, parts: int, count: bool) -> None:
    import dask.dataframe as dd

    df = dd.read_json(shard_paths(corpus), lines=True, compression="gzip", blocksize=None)
    if count:
        sizes = df.groupby("key").size(split_out=parts, shuffle_method="p2p")
        result = sizes.rename("count").reset_index()
    else:
        result = df.drop_duplicates(subset=["key"], split_out=parts, shuffle_method="p2p")
    result.to_json(
        str(out / "part-*.jsonl"),
        orient="records",
        lines=True,
        compute_kwargs={"scheduler": client},
    )


# -- zephyr
def zephyr_shuffle(backend: Any, corpus: Path, out: Path, parts: int, count: bool) -> None:
    from zephyr import Dataset

    ds = Dataset.from_files(str(corpus), "*.jsonl.gz").load_jsonl()
    if count:
        ds = ds.map(key_and_one).group_by(
            key=get_key, reducer=sum_counts, combiner=combine_counts, num_output_shards=parts
        )
    else:
        ds = ds.deduplicate(key=get_key, num_output_shards=parts)
    list(backend.execute(ds.write_jsonl(str(out / "part-{shard:05d}.jsonl"))))
