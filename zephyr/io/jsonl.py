"""JSON Lines: a streaming reader and a writer, with orjson as the codec (plain dicts in and
out)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import orjson

from zephyr.io.compression import atomic_output, iter_lines

_WRITE_BATCH = 512
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def load_jsonl(path: str) -> Iterator[dict]:
    """Stream the records of a JSON Lines file (plain, .gz, .zst/.zstd or .xz by extension).

    Blank lines are skipped. A malformed line raises ValueError naming the file and the line number.
    Use it with `flat_map`: `Dataset.from_files("in/*.jsonl.gz").flat_map(load_jsonl)`.
    """
    loads = orjson.loads
    lineno = 0
    for line in iter_lines(path):
        lineno += 1
        try:
            record = loads(line)
        except orjson.JSONDecodeError as e:
            if not line.strip():
                continue
            raise ValueError(f"{path}: line {lineno}: invalid JSON ({e})") from None
        yield record


load_jsonl._zephyr_reader = "load_jsonl"  # type: ignore[attr-defined]


def _dumps(record: object) -> bytes:
    try:
        return orjson.dumps(record, option=_DUMP_OPTIONS)
    except TypeError:  # e.g. integers beyond 64 bits: the stdlib encoder handles them
        return json.dumps(record, ensure_ascii=False).encode()


def write_jsonl_file(records: Iterable, path: str) -> int:
    """Write records as JSON Lines to `path` atomically (compressed by extension); returns the
    count."""
    count = 0
    with atomic_output(path) as f:
        batch: list[bytes] = []
        for record in records:
            batch.append(_dumps(record))
            count += 1
            if len(batch) >= _WRITE_BATCH:
                batch.append(b"")
                f.write(b"\n".join(batch))
                batch = []
        if batch:
            batch.append(b"")
            f.write(b"\n".join(batch))
    return count
