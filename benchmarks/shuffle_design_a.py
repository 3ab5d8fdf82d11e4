"""Design (a) of issue 14, prototyped: records travel as an encoded payload column (msgpack bytes)
through Dask's own P2P shuffle of a dask.dataframe; each output partition is then sorted by key,
reduced per key with the user's functions and written as one JSONL file."""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from shuffle_data import shard_paths
from shuffle_variants import (
    combine_counts,
    get_key,
    key_and_one,
    read_records,
    sum_counts,
    write_jsonl,
)

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


# Per input shard (one partition, `dd.from_map`): parse the JSONL, apply the map-side step (the
# seen-set for dedup, the combiner for count) and build a pandas frame with columns `part` (int),
# `key` (str) and `payload` (bytes). `part` is the stable crc32 of the key, not crc32 % partitions:
# `DataFrame.shuffle(on=...)` hashes the column again, and 16 distinct small ints land in only 10
# of 16 output partitions (small_part_spread), so the full hash is what spreads keys evenly.
def _frame(parts: list[int], keys: list[str], payloads: list[bytes]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "part": np.asarray(parts, dtype="int64"),
            "key": pd.Series(keys, dtype="str"),
            "payload": pd.Series(payloads, dtype=object),
        }
    )


META = _frame([], [], [])
WRITTEN = pd.DataFrame({"records": pd.Series([], dtype="int64")})


def _map_dedup(path: str) -> pd.DataFrame:
    parts, keys, payloads, seen = [], [], [], set()
    for rec in read_records(path):
        k = get_key(rec)
        if k not in seen:
            seen.add(k)
            parts.append(zlib.crc32(k.encode()))
            keys.append(k)
            payloads.append(_pack(rec))
    return _frame(parts, keys, payloads)


def _map_count(path: str) -> pd.DataFrame:
    groups: dict[str, list[dict]] = {}
    for rec in read_records(path):
        item = key_and_one(rec)
        groups.setdefault(get_key(item), []).append(item)
    parts, keys, payloads = [], [], []
    for k, items in groups.items():
        for combined in combine_counts(k, items):
            parts.append(zlib.crc32(k.encode()))
            keys.append(k)
            payloads.append(_pack(combined))
    return _frame(parts, keys, payloads)


def _groups(df: pd.DataFrame) -> Any:
    """(key, decoded items) per key of a shuffled partition, in key order."""
    df = df.sort_values("key", kind="stable")
    pairs = zip(df["key"].tolist(), df["payload"].tolist(), strict=True)
    for k, run in itertools.groupby(pairs, key=lambda kp: kp[0]):
        yield k, (_unpack(p) for _, p in run)


def _reduce(df: pd.DataFrame, out: str, count: bool, partition_info: Any = None) -> pd.DataFrame:
    if count:
        records = (sum_counts(k, items) for k, items in _groups(df))
    else:
        records = (next(items) for _, items in _groups(df))
    n = write_jsonl(Path(out) / f"part-{partition_info['number']:05d}.jsonl", records)
    return pd.DataFrame({"records": [n]})


def design_a(client: Any, corpus: Path, out: Path, parts: int, count: bool) -> None:
    import dask
    import dask.dataframe as dd

    out.mkdir(parents=True)
    # Dask would otherwise turn the object column of bytes into (UTF-8) strings and fail.
    with dask.config.set({"dataframe.convert-string": False}):
        df = dd.from_map(_map_count if count else _map_dedup, shard_paths(corpus), meta=META)
        shuffled = df.shuffle(on="part", npartitions=parts, shuffle_method="p2p")
        written = shuffled.map_partitions(_reduce, str(out), count, meta=WRITTEN)
        written.compute(scheduler=client)


def small_part_spread(parts: int = 16) -> int:
    """How many of `parts` output partitions `shuffle(on="part")` fills when `part` holds the
    `parts` values 0..parts-1 (crc32 % parts): Dask re-hashes the column."""
    from dask.dataframe.shuffle import partitioning_index

    index = partitioning_index(pd.DataFrame({"part": np.arange(parts, dtype="int64")}), parts)
    return len(set(index.tolist()))
