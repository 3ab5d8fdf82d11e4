"""Writer dispatch: a WriteOp's format name to the function that writes one shard's file."""

from __future__ import annotations

from collections.abc import Iterable

from zephyr.io.jsonl import write_jsonl_file

WRITERS = {"jsonl": write_jsonl_file}


def write_records(fmt: str, records: Iterable, path: str, options: dict) -> int:
    """Write `records` to `path` in format `fmt`; returns how many were written."""
    try:
        writer = WRITERS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; supported: {sorted(WRITERS)}") from None
    return writer(records, path, **options)
