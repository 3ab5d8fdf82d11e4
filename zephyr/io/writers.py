"""Writer dispatch (a WriteOp's format name to the function writing one shard's file) and the
binary writer. Every writer commits atomically through `zephyr.io.atomic`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zephyr.io.atomic import atomic_output
from zephyr.io.jsonl import write_jsonl_file


def write_binary_file(records: Iterable, path: str) -> int:
    """Write bytes-like records back to back (no separators) to `path` atomically, compressed by
    extension; returns the count. A record that is not bytes-like raises TypeError."""
    count = 0
    with atomic_output(path) as f:
        for record in records:
            if not isinstance(record, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"{path}: write_binary takes bytes records; record {count} is "
                    f"{type(record).__name__} {record!r:.80}; encode it first (e.g. s.encode())"
                )
            f.write(record)
            count += 1
    return count


def _write_parquet_file(records: Iterable, path: str, **options: Any) -> int:
    from zephyr.io.parquet import write_parquet_file  # pyarrow loads only when Parquet is written

    return write_parquet_file(records, path, **options)


WRITERS = {"jsonl": write_jsonl_file, "parquet": _write_parquet_file, "binary": write_binary_file}


def write_records(fmt: str, records: Iterable, path: str, options: dict) -> int:
    """Write `records` to `path` in format `fmt`; returns how many were written."""
    try:
        writer = WRITERS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; supported: {sorted(WRITERS)}") from None
    return writer(records, path, **options)
