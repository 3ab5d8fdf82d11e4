"""Run files, the shuffle's only intermediate data: a map task writes its buffered records, sorted
by key within each output shard, as one spill file per spill (each output shard's run a range of
the file, in blocks of about BLOCK_BYTES); a reduce task reads its ranges as streams and k-way
merges them. Any fsspec URL holds them (a local folder, gs://). No Dask."""

from __future__ import annotations

import heapq
import itertools
import operator
import pickle
import struct
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import fsspec

from zephyr.shuffle.keys import KeyOrderError, unorderable

# Encoded record bytes per block: what a reader of a run holds at a time.
BLOCK_BYTES = 1 << 20
_HEADER = struct.Struct("<Q")  # the pickled block's length, before each block
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


class Run(NamedTuple):
    """One output shard's sorted entries inside a spill file: `length` bytes from `offset`."""

    path: str
    offset: int
    length: int
    count: int


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url` and the path inside it."""
    return fsspec.core.url_to_fs(url)


def write_spill(url: str, partitions: Iterable[tuple[int, Iterable]], block_bytes: int) -> list:
    """Write the (partition, sorted (key, payload) entries) pairs to one file at `url`; returns
    (partition, Run) for each. Entries (any iterable: a merge streams them) are (sort key,
    encoded record) pairs."""
    fs, path = filesystem(url)
    runs = []
    with fs.open(path, "wb") as f:
        offset = 0
        for part, entries in partitions:
            start, count = offset, 0
            for keys, payloads in _blocks(entries, block_bytes):
                data = pickle.dumps((keys, payloads), protocol=5)
                f.write(_HEADER.pack(len(data)))
                f.write(data)
                offset += _HEADER.size + len(data)
                count += len(keys)
            runs.append((part, Run(url, start, offset - start, count)))
    return runs


def _blocks(entries: Iterable, block_bytes: int) -> Iterator[tuple[list, list]]:
    """(keys, payloads) of consecutive entries holding about `block_bytes` of payload each."""
    if isinstance(entries, list):  # sliced in C: the number per block from the average size
        size = sum(map(len, map(_second, entries)))
        step = max(1, block_bytes * len(entries) // max(1, size))
        for start in range(0, len(entries), step):
            chunk = entries[start : start + step]
            yield list(map(_first, chunk)), list(map(_second, chunk))
        return
    keys: list = []
    payloads: list = []
    size = 0
    for key, payload in entries:
        keys.append(key)
        payloads.append(payload)
        size += len(payload)
        if size >= block_bytes:
            yield keys, payloads
            keys, payloads, size = [], [], 0
    if keys:
        yield keys, payloads


def read_run(run: Run) -> Iterator[tuple[Any, bytes]]:
    """The (key, payload) entries of `run`, in order, one block in memory at a time."""
    fs, path = filesystem(run.path)
    with fs.open(path, "rb") as f:
        f.seek(run.offset)
        left = run.length
        while left > 0:
            (size,) = _HEADER.unpack(f.read(_HEADER.size))
            data = f.read(size)
            if len(data) != size:
                raise OSError(f"run file {run.path} is shorter than its index says ({run})")
            left -= _HEADER.size + size
            keys, payloads = pickle.loads(data)
            del data
            yield from zip(keys, payloads, strict=True)


def merged(runs: list[Run], what: str = "keys") -> Iterator[tuple[Any, bytes]]:
    """The entries of all `runs` in key order; equal keys in the order of `runs`, then of each run
    (so the first entry of a key is the earliest in the dataset's order)."""
    if len(runs) == 1:
        yield from read_run(runs[0])
        return
    streams = [read_run(run) for run in runs]
    heads = [next(s, None) for s in streams]
    live = [itertools.chain([h], s) for h, s in zip(heads, streams, strict=True) if h is not None]
    try:
        yield from heapq.merge(*live, key=_first)
    except TypeError as e:
        firsts = [h[0] for h in heads if h is not None]
        if "not supported between" not in str(e):
            raise
        raise _merge_error(firsts, what, e) from None


def _merge_error(firsts: list, what: str, cause: TypeError) -> KeyOrderError:
    error = unorderable(firsts, what)
    if " of types " in str(error):
        return error
    return KeyOrderError(f"{what} cannot be ordered ({cause}); make the function return one type")


def sort_entries(entries: list, what: str = "keys") -> None:
    """Sort (key, payload) entries by key in place, stably; unorderable keys raise KeyOrderError
    naming two of their types."""
    try:
        entries.sort(key=_first)
    except TypeError as e:
        if "not supported between" not in str(e):
            raise
        raise unorderable([k for k, _ in entries], what) from None
