"""Bad records set aside: each shard's quarantine file and the `max_errors` bounds.

No Dask import. In the task, `ShardQuarantine` streams a shard's skipped records to a hidden
temporary and commits it atomically with the shard (through `zephyr.io.atomic`), and fails the
shard once one op's skips alone exceed an integer bound. On the driver, `StageErrors` adds up the
counts of every task of a stage and enforces the bound per stage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import fsspec
import msgspec

from zephyr.errors import UserCodeFailure, WrappedUserError, ZephyrError
from zephyr.io.atomic import atomic_output
from zephyr.io.provenance import current_position

# Characters of a record (its JSON text), a raw line or an error message kept in an entry.
VALUE_LIMIT = 16 * 1024
ERROR_LIMIT = 1000

_encode = msgspec.json.Encoder().encode


def check_max_errors(max_errors: object, where: str) -> None:
    """Accept an int >= 0 (a count), a float in (0, 1) (a fraction) or None (no bound)."""
    if max_errors is None:
        return
    if isinstance(max_errors, int) and not isinstance(max_errors, bool) and max_errors >= 0:
        return
    if isinstance(max_errors, float) and 0 < max_errors < 1:
        return
    raise ValueError(
        f"{where} takes max_errors as an int >= 0 (a count of skipped records), a float in (0, 1) "
        f"(a fraction of the records the op saw) or None (no bound), got {max_errors!r}"
    )


def _bound_text(bound: int | float) -> str:
    return f"max_errors={bound}" + (f" ({bound:.2%})" if isinstance(bound, float) else "")


def exceeded(
    stage: str, detail: str, bound: int | float, skipped: int, seen: int, sample: str | None
) -> str:
    """The error text when an op skipped more records than its bound allows."""
    counted = f"{skipped} records" if isinstance(bound, int) else f"{skipped} of {seen} records"
    return (
        f"stage '{stage}': {detail} skipped {counted} (on_error='skip'), more than "
        f"{_bound_text(bound)}; first: {sample}; fix the input or the function, or raise "
        "max_errors if this many bad records is expected"
    )


def _cut(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)


class OpErrors:
    """One op's skipped records in one shard: counts, a sample, and the way to its file."""

    __slots__ = ("index", "detail", "bound", "skipped", "seen", "sample", "_shard")

    def __init__(self, index: int, detail: str, bound: int | float | None, shard: ShardQuarantine):
        self.index, self.detail, self.bound = index, detail, bound
        self.skipped = self.seen = 0
        self.sample: str | None = None
        self._shard = shard

    def skip(
        self,
        exc: BaseException,
        record: Any = None,
        raw: bytes | str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        """Quarantine one record (or, with `raw`, one line that did not parse); raise, as an
        already-described user failure, once this shard alone has skipped more than the bound."""
        if file is None:
            pos = current_position()
            file, line = pos.file, pos.line
        shard = self._shard
        if file is None and isinstance(shard.input, str):
            file = shard.input
        self.skipped += 1
        shard.write(self, exc, record, raw, file, line)
        if self.sample is None:
            at = f" {file}" + (f" line {line}" if line is not None else "") if file else ""
            self.sample = (
                f"shard {shard.shard}{at}: {self.detail} raised {type(exc).__name__}: "
                f"{_cut(str(exc), 300)[0]}"
            )
        if isinstance(self.bound, int) and self.skipped > self.bound:
            message = exceeded(
                shard.stage, self.detail, self.bound, self.skipped, self.seen, self.sample
            )
            raise WrappedUserError(UserCodeFailure.capture(message, exc))


class ShardQuarantine:
    """A shard's quarantine file: entries stream to a hidden temporary beside `path`, which
    `commit` moves into place (or, when nothing was skipped, `commit` removes a file left at
    `path` by an earlier run, so the folder always matches the outputs)."""

    def __init__(self, path: str, stage: str, shard: int, input_item: Any, ops: tuple):
        self.path, self.stage, self.shard, self.input = path, stage, shard, input_item
        self.ops = {
            i: OpErrors(i, op.detail, op.max_errors, self)
            for i, op in enumerate(ops)
            if getattr(op, "skips", False)
        }
        self._cm: Any = None
        self._file: Any = None
        self._done = False

    def write(
        self, op: OpErrors, exc: BaseException, record: Any, raw: Any, file: Any, line: Any
    ) -> None:
        error, _ = _cut(str(exc), ERROR_LIMIT)
        entry: dict[str, Any] = {
            "stage": self.stage,
            "shard": self.shard,
            "file": file,
            "line": line,
            "op": op.detail,
            "error_type": type(exc).__name__,
            "error": error,
        }
        if raw is not None:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            entry["raw"], cut = _cut(text.rstrip("\r\n"), VALUE_LIMIT)
        else:
            try:
                encoded = _encode(record)
            except (TypeError, msgspec.MsgspecError, OverflowError):
                entry["record_repr"], cut = _cut(repr(record), VALUE_LIMIT)
            else:
                if len(encoded) <= VALUE_LIMIT:
                    entry["record"], cut = msgspec.Raw(encoded), False
                else:
                    entry["record_json"] = encoded[:VALUE_LIMIT].decode("utf-8", "ignore")
                    cut = True
        if cut:
            entry["truncated"] = True
        if self._file is None:
            self._cm = atomic_output(self.path, compress=False)
            self._file = self._cm.__enter__()
        self._file.write(_encode(entry) + b"\n")

    def keep_existing(self) -> None:
        """The shard was not computed (skip_existing): its earlier quarantine file stays."""
        self._done = True

    def commit(self) -> None:
        """Publish the quarantine file (before the shard's own output is committed)."""
        if self._done:
            return
        self._done = True
        if self._cm is not None:
            cm, self._cm, self._file = self._cm, None, None
            cm.__exit__(None, None, None)
            return
        fs, fspath = fsspec.core.url_to_fs(self.path)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(fspath)

    def abort(self, exc: BaseException) -> None:
        """The shard failed: discard the temporary; an earlier run's file stays untouched."""
        self._done = True
        if self._cm is not None:
            cm, self._cm, self._file = self._cm, None, None
            with contextlib.suppress(Exception):
                cm.__exit__(type(exc), exc, exc.__traceback__)

    def stats(self) -> dict[int, list]:
        """{op index: [skipped, seen, sample]} for the task result."""
        return {i: [e.skipped, e.seen, e.sample] for i, e in self.ops.items()}


def merge_stats(into: dict, stats: dict | None) -> None:
    """Add one shard's (or task's) `stats()` to `into`, keeping the first sample."""
    for i, (skipped, seen, sample) in (stats or {}).items():
        total = into.setdefault(i, [0, 0, None])
        total[0] += skipped
        total[1] += seen
        if total[2] is None:
            total[2] = sample


@dataclass
class StageErrors:
    """The driver's tally of a stage's skipped records; enforces `max_errors` per stage: a count as
    soon as the results seen exceed it, a fraction when the stage's results are all in."""

    stage: Any
    totals: dict

    @classmethod
    def of(cls, stage: Any) -> StageErrors | None:
        return cls(stage, {}) if getattr(stage, "quarantine", None) is not None else None

    def add(self, stats: dict | None) -> int:
        """Count one task's stats; returns how many records it skipped."""
        merge_stats(self.totals, stats)
        for i, (skipped, seen, sample) in self.totals.items():
            op = self.stage.ops[i]
            if isinstance(op.max_errors, int) and skipped > op.max_errors:
                raise ZephyrError(
                    exceeded(self.stage.name, op.detail, op.max_errors, skipped, seen, sample)
                )
        return sum(s[0] for s in (stats or {}).values())

    def finish(self) -> None:
        for i, (skipped, seen, sample) in self.totals.items():
            op = self.stage.ops[i]
            if isinstance(op.max_errors, float) and seen and skipped > op.max_errors * seen:
                raise ZephyrError(
                    exceeded(self.stage.name, op.detail, op.max_errors, skipped, seen, sample)
                )
