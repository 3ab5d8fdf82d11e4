"""JSON Lines: a streaming reader and a writer, with msgspec as the codec (plain dicts in and out).

msgspec decodes as fast as orjson here and, unlike orjson, keeps integers beyond 64 bits exact.
JSON has no NaN or Infinity: the writer refuses them unless told how to write them (`non_finite`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from zephyr.io.atomic import atomic_output
from zephyr.io.compression import iter_lines
from zephyr.io.provenance import check_on_error, current_position

logger = logging.getLogger("zephyr")

_WRITE_BATCH = 512
NON_FINITE = ("error", "token", "null")  # write_jsonl(non_finite=...): the first is the default


def _enc_hook(obj: Any) -> Any:
    # numpy scalars and arrays (anything with .tolist()) become plain JSON values.
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot write {type(obj).__name__} {obj!r} as JSON")


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode


def load_jsonl(path: str, on_error: str = "raise") -> Iterator[Any]:
    """Stream the records of a JSON Lines file (plain, .gz, .zst/.zstd, .xz or .bz2 by extension).

    Any JSON value is a record (usually a dict). Blank lines are skipped. The tokens `NaN`,
    `Infinity` and `-Infinity` (as Python's json writes them) read as floats. A malformed line
    raises ValueError naming the file and the line number; with `on_error="skip"` it is left out
    instead and, inside a pipeline, quarantined with its line number and text (outside one, a
    warning counts the lines left out). A truncated or corrupt file is not a bad record: it always
    raises.
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
            try:  # numbers msgspec refuses (1e400, NaN, Infinity) still parse the stdlib way
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


def check_non_finite(value: object) -> str:
    """`value` if it is one of NON_FINITE, else ValueError listing them."""
    if value not in NON_FINITE:
        raise ValueError(
            f"write_jsonl non_finite must be one of {list(NON_FINITE)}, got {value!r}; 'error' "
            "refuses NaN and Infinity, 'token' writes them as Python's json does, 'null' as null"
        )
    return value  # type: ignore[return-value]


# -- non-finite floats -----------------------------------------------------------------------------
# msgspec writes NaN and +-Infinity as null without complaint, so records are checked before
# their encoding is kept. _all_finite is the cheap check every record pays (a type test per value,
# C-speed sum() for float lists); only a record it cannot clear is walked by _non_finite. Searching
# the encoded bytes for b"null" instead would cost about as much as encoding itself (~1 ns/byte).
_PLAIN = frozenset({str, int, bool, type(None), bytes})


def _all_finite(value: Any) -> bool:
    """True if `value` certainly holds no NaN or +-Infinity float; False means look closer."""
    t = type(value)
    if t is dict:
        values: Iterable = value.values()
    elif t is list or t is tuple:
        if value and type(value[0]) is float:
            try:  # any NaN or +-Infinity makes the sum NaN or infinite (so may an overflow)
                return math.isfinite(sum(value))
            except (TypeError, OverflowError):  # not all numbers, or an int beyond float
                pass
        values = value
    elif t is float:
        return value - value == 0.0  # NaN - NaN and inf - inf are NaN
    elif t in _PLAIN:
        return True
    elif isinstance(value, (dict, list, tuple)):  # subclasses: OrderedDict, namedtuple...
        return _all_finite(dict(value) if isinstance(value, dict) else list(value))
    else:  # numpy scalars and arrays as msgspec writes them; other types are walked
        tolist = getattr(value, "tolist", None)
        return tolist is not None and _all_finite(tolist())
    for v in values:
        t = type(v)
        if t is float:
            if v - v != 0.0:
                return False
        elif t not in _PLAIN and not _all_finite(v):
            return False
    return True


def _non_finite(value: Any) -> tuple[str, float] | None:
    """The path (`meta.scores[2]`, '' for `value` itself) and value of the first NaN or
    +-Infinity inside `value`, as msgspec would write it."""
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", value)
    if isinstance(value, dict):
        items: Iterable = ((str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    elif type(value) in _PLAIN:
        return None
    else:  # numpy values, dataclasses, sets...: what msgspec would write
        try:
            return _non_finite(msgspec.to_builtins(value, enc_hook=_enc_hook))
        except (TypeError, msgspec.MsgspecError):
            return None
    for step, v in items:
        if type(v) not in _PLAIN:
            found = _non_finite(v)
            if found is not None:
                sub, bad = found
                return (step + ("." if sub and sub[0] != "[" else "") + sub, bad)
    return None


def _as_null(value: Any) -> Any:
    """`value` with every NaN and +-Infinity replaced by None (containers copied)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_null(v) for v in value]
    if hasattr(value, "tolist"):
        return _as_null(value.tolist())
    return value


def _stdlib_dumps(record: object, separators: tuple[str, str] | None = None) -> bytes:
    # Integers beyond 64 bits, odd keys...: the stdlib encoder decides. It writes NaN as `NaN`.
    return json.dumps(record, ensure_ascii=False, separators=separators, default=_enc_hook).encode()


def _slow_dumps(record: object, data: bytes | None, mode: str, path: str, index: int) -> bytes:
    """Encode a record that may hold a non-finite float: `data` is msgspec's encoding (where
    non-finite floats became null), or None if msgspec could not encode the record."""
    found = _non_finite(record)
    if found is None:
        return data if data is not None else _stdlib_dumps(record)
    if mode == "error":
        field, value = found
        where = f"field {field!r}" if field else "itself"
        raise ValueError(
            f"{path}: record {index} {where} is {float(value)!r}; JSON "
            "has no NaN or Infinity and writing null would silently change the value; pass "
            "write_jsonl(..., non_finite='token') to write NaN/Infinity as Python's json does "
            "(load_jsonl reads them back), non_finite='null' to write null, or replace the value"
        )
    if mode == "token":
        if data is None:
            return _stdlib_dumps(record)
        # compact, like msgspec's lines
        return _stdlib_dumps(msgspec.to_builtins(record, enc_hook=_enc_hook), (",", ":"))
    return data if data is not None else _stdlib_dumps(_as_null(record))


def write_jsonl_file(records: Iterable, path: str, non_finite: str = "error") -> int:
    """Write records as JSON Lines to `path` atomically (compressed by extension); returns the
    count.

    A NaN or +-Infinity float anywhere in a record raises ValueError naming the field, unless
    `non_finite` is "token" (written as `NaN`, `Infinity`, `-Infinity`) or "null".
    """
    mode = check_non_finite(non_finite)
    scan = mode != "null"  # with "null", msgspec's own output is what is wanted
    encode = _encode
    count = 0
    with atomic_output(path) as f:
        batch: list[bytes] = []
        for record in records:
            try:
                data = encode(record)
            except (TypeError, msgspec.MsgspecError):
                data = _slow_dumps(record, None, mode, path, count)
            else:
                if scan and not _all_finite(record):
                    data = _slow_dumps(record, data, mode, path, count)
            batch.append(data)
            count += 1
            if len(batch) >= _WRITE_BATCH:
                batch.append(b"")
                f.write(b"\n".join(batch))
                batch = []
        if batch:
            batch.append(b"")
            f.write(b"\n".join(batch))
    return count
