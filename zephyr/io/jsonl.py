"""JSON Lines: a streaming reader and a writer, with msgspec as the codec (plain dicts in and out).

msgspec decodes as fast as orjson here and, unlike orjson, keeps integers beyond 64 bits exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from zephyr.io.atomic import atomic_output
from zephyr.io.compression import iter_lines
from zephyr.io.provenance import check_on_error, current_position

logger = logging.getLogger("zephyr")

_WRITE_BATCH = 512


def _enc_hook(obj: Any) -> Any:
    # numpy scalars and arrays (anything with .tolist()) become plain JSON values.
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot write {type(obj).__name__} {obj!r} as JSON")


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode


def load_jsonl(path: str, on_error: str = "raise") -> Iterator[Any]:
    """Stream the records of a JSON Lines file (plain, .gz, .zst/.zstd or .xz by extension).

    Any JSON value is a record (usually a dict). Blank lines are skipped. A malformed line raises
    ValueError naming the file and the line number; with `on_error="skip"` it is left out instead
    and, inside a pipeline, quarantined with its line number and text (outside one, a warning
    counts the lines left out). A truncated or corrupt file is not a bad record: it always raises.
    Use it with `flat_map`: `Dataset.from_files("in/*.jsonl.gz").flat_map(load_jsonl)`.
    """
    skip = check_on_error(on_error, "load_jsonl")
    pos = current_position()
    errors = pos.op if skip else None  # the pipeline op counting skipped lines, if any
    pos.file, pos.line = path, None
    decode = _decode
    lineno = skipped = 0
    for line in iter_lines(path):
        lineno += 1
        try:
            record = decode(line)
        except msgspec.MsgspecError as e:
            if not line.strip():
                continue
            try:  # numbers msgspec refuses (1e400) still parse the stdlib way
                record = json.loads(line)
            except ValueError:
                bad = ValueError(f"{path}: line {lineno}: invalid JSON ({e})")
                if not skip:
                    raise bad from None
                skipped += 1
                if errors is not None:
                    errors.skip(bad, raw=line, file=path, line=lineno)
                continue
        pos.line = lineno  # the position of the record downstream ops are about to see
        yield record
    pos.file = pos.line = None
    if errors is not None:
        errors.seen += lineno
    elif skipped:
        logger.warning(
            "%s: skipped %d malformed line(s) of %d (load_jsonl on_error='skip')",
            path,
            skipped,
            lineno,
        )


load_jsonl._zephyr_reader = "load_jsonl"  # type: ignore[attr-defined]


def _dumps(record: object) -> bytes:
    try:
        return _encode(record)
    except (TypeError, msgspec.MsgspecError):  # NaN, odd keys...: the stdlib encoder decides
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
