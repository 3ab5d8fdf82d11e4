"""Per-shard execution: a stage's ops run as chained generators over one shard's records.

Runs inside whatever process a backend chose (driver, thread, Dask worker); imports no Dask. Records
stream: a shard is materialised only when an op needs all of it (a reshard boundary keeps its
stage's output). User-code failures are described here, once, with the stage, shard, input and
record, and where a reader produced the record (`zephyr.io.provenance`); records that an op with
on_error="skip" leaves out go to the shard's quarantine (`zephyr.quarantine`) instead.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zephyr.errors import UserCodeFailure, WrappedUserError, ZephyrError, short_repr
from zephyr.io.atomic import existing_outputs, output_exists
from zephyr.io.provenance import current_position
from zephyr.io.writers import write_records
from zephyr.ops import (
    FilterOp,
    FlatMapOp,
    MapOp,
    MapShardOp,
    TakePerShardOp,
    WindowOp,
    WriteOp,
    reader_name,
)
from zephyr.paths import render_path
from zephyr.plan import Nested, Stage
from zephyr.quarantine import OpErrors, ShardQuarantine, merge_stats

_NO_RECORD = object()


@dataclass(frozen=True)
class ShardInfo:
    """What `map_shard` functions receive besides the records.

    `shard_idx` counts from 0 within the stage, `total_shards` is the stage's shard count, and
    `input` is the shard's source item (a file path or list element), or None when the shard came
    from a reshard.
    """

    shard_idx: int
    total_shards: int
    input: Any = None
    stage: str = ""


def _where(info: ShardInfo) -> str:
    where = f"stage '{info.stage}' shard {info.shard_idx}"
    if info.input is not None:
        where += f" (input {short_repr(info.input)})"
    return where


def _wrap(
    info: ShardInfo, what: str, exc: Exception, record: object, at: str = "", tail: str = ""
) -> WrappedUserError:
    msg = f"{_where(info)}: {what} raised {type(exc).__name__}: {exc}{tail}"
    if record is not _NO_RECORD:
        msg += f"; record: {short_repr(record)}"
        if at:
            msg += f" (read from {at})"
    return WrappedUserError(UserCodeFailure.capture(msg, exc))


def _guarded(gen_fn: Callable[..., Iterator], op: Any, info: ShardInfo) -> Callable[..., Iterator]:
    """Run a kernel generator, describing any exception it raises (once) with the op and shard.

    A record op's failure also names where its record was read (the file and line a reader set
    last in this thread); a reader's own failure already names its file and line."""
    located = isinstance(op, (MapOp, FilterOp)) or (
        isinstance(op, FlatMapOp) and reader_name(op.fn) is None
    )

    def run(it: Iterator, *args: Any) -> Iterator:
        state = {"record": _NO_RECORD}
        try:
            yield from gen_fn(it, state, *args)
        except WrappedUserError:
            raise
        except Exception as e:
            at = current_position().describe() if located else ""
            raise _wrap(info, op.detail, e, state["record"], at) from e

    return run


def _map(it: Iterator, state: dict, fn: Callable) -> Iterator:
    for rec in it:
        state["record"] = rec
        yield fn(rec)


# What a flat_map or map_shard function returned that iterates as something other than records.
_NOT_RECORDS = {dict: "its keys", str: "its characters", bytes: "its byte values"}


def _records(out: Any) -> Any:
    """`out`, a flat_map or map_shard function's result, if it is an iterable of records; a
    TypeError for a dict, str or bytes (iterating them would quietly give keys, characters or
    ints) and for None."""
    if out is None:
        raise TypeError(
            "the function returned None; yield records from it, or return an iterable of "
            "records (an empty list for none)"
        )
    for kind, parts in _NOT_RECORDS.items():
        if isinstance(out, kind):
            raise TypeError(
                f"the function returned a {type(out).__name__}, and iterating it would give "
                f"{parts}, not records; yield records from it (`yield record`), or return a "
                "list of records (`return [record]`)"
            )
    return out


def _flat_map(it: Iterator, state: dict, fn: Callable) -> Iterator:
    for rec in it:
        state["record"] = rec
        yield from _records(fn(rec))


def _filter(it: Iterator, state: dict, pred: Callable) -> Iterator:
    for rec in it:
        state["record"] = rec
        if pred(rec):
            yield rec


# -- on_error="skip": a record whose function raises is quarantined and left out
FLAT_MAP_BUFFER = 1024  # outputs of one record held back so that a failed record leaves nothing


def _calls(it: Iterator, state: dict, fn: Callable, errors: OpErrors) -> Iterator[tuple]:
    """(record, fn(record)) for each record; a record for which fn raises is quarantined and left
    out."""
    for rec in it:
        state["record"] = rec
        errors.seen += 1
        try:
            out = fn(rec)
        except Exception as e:
            errors.skip(e, rec)
            continue
        yield rec, out


def _map_skip(it: Iterator, state: dict, fn: Callable, errors: OpErrors) -> Iterator:
    for _, out in _calls(it, state, fn, errors):
        yield out


def _filter_skip(it: Iterator, state: dict, pred: Callable, errors: OpErrors) -> Iterator:
    for rec, keep in _calls(it, state, pred, errors):
        if keep:
            yield rec


def _flat_map_skip(
    it: Iterator, state: dict, fn: Callable, errors: OpErrors, op: FlatMapOp, info: ShardInfo
) -> Iterator:
    """All or nothing per record: its first FLAT_MAP_BUFFER outputs are held back, so a record
    that raises within them contributes nothing. A record with more outputs streams the rest,
    and a failure after that fails the shard (its first outputs were already passed on)."""
    pos = current_position()
    for rec in it:
        state["record"] = rec
        errors.seen += 1
        if op.reader_skips:
            pos.op = errors
        try:
            outputs = iter(_records(fn(rec)))
            held = list(itertools.islice(outputs, FLAT_MAP_BUFFER + 1))
        except Exception as e:
            errors.skip(e, rec)
            continue
        yield from held
        if len(held) <= FLAT_MAP_BUFFER:
            continue
        try:
            yield from outputs
        except WrappedUserError:
            raise
        except Exception as e:
            tail = (
                f" after yielding more than {FLAT_MAP_BUFFER} outputs for one record, so "
                "on_error='skip' cannot leave that record out whole (its first outputs were "
                "passed on); make the function yield fewer items per record, or let it skip "
                "its own bad items"
            )
            raise _wrap(info, op.detail, e, rec, tail=tail) from e


def _flat_map_reader(it: Iterator, state: dict, fn: Callable, errors: OpErrors) -> Iterator:
    """flat_map over a reader that skips bad lines itself: they are counted under this op."""
    pos = current_position()
    for rec in it:
        state["record"] = rec
        pos.op = errors
        yield from _records(fn(rec))


def _then_commit(it: Iterator, quarantine: ShardQuarantine) -> Iterator:
    """The records of a shard, then its quarantine file committed: the writer sees the end of its
    input after that, so the quarantine file is in place before the output is (a shard skipped
    with skip_existing never loses its quarantine file)."""
    yield from it
    quarantine.commit()


def _map_shard(it: Iterator, state: dict, fn: Callable, info: ShardInfo) -> Iterator:
    yield from _records(fn(it, info))


def _window(it: Iterator, size: int) -> Iterator:
    while batch := list(itertools.islice(it, size)):
        yield batch


def _write(
    it: Iterator,
    state: dict,
    op: WriteOp,
    info: ShardInfo,
    counts: Counts,
    quarantine: ShardQuarantine | None,
) -> Iterator:
    path = render_path(op.pattern, info.shard_idx, info.total_shards, info.input)
    if op.skip_existing and output_exists(path):
        # `it` is never iterated, so nothing upstream runs: the shard's input is not even opened.
        counts.skipped += 1
        if quarantine is not None:
            quarantine.keep_existing()
    else:
        if quarantine is not None:
            it = _then_commit(it, quarantine)
        counts.records_out += write_records(op.format, it, path, op.options)
    yield path


_first = operator.itemgetter(0)


@dataclass
class Counts:
    """The records a task's shards read and wrote, and its shards skipped (output existed).

    `records_in` counts what a stage read: the records its first reader op (load_jsonl, ...)
    produced, or, in a stage without one, the records it started from (its source items, or its
    share of a reshard). `records_out` counts the records it wrote, or else produced. Records are
    counted as they pass, by C iterators (zip with itertools.count), not a Python frame per
    record; `settle` adds up the open tallies once their iterators are consumed.
    """

    records_in: int = 0
    records_out: int = 0
    skipped: int = 0
    _open: list = field(default_factory=list)  # (attribute, itertools.count) not yet added

    def tally(self, it: Iterable, attribute: str) -> Iterator:
        """`it` unchanged; the items it yields are added to `attribute` at `settle`."""
        count = itertools.count()
        self._open.append((attribute, count))
        # zip pulls from `it` first, so `count` advances once per item passed on, never more.
        return map(_first, zip(it, count, strict=False))

    def settle(self) -> None:
        for attribute, count in self._open:
            setattr(self, attribute, getattr(self, attribute) + next(count))
        self._open.clear()


def _reads(op: Any) -> bool:
    return isinstance(op, FlatMapOp) and reader_name(op.fn) is not None


def run_ops(
    ops: tuple,
    records: Iterable,
    info: ShardInfo,
    counts: Counts,
    quarantine: ShardQuarantine | None = None,
) -> Iterator:
    """Chain `ops` over `records` lazily, counting into `counts` (see Counts: records read,
    written or produced, shards skipped because their output existed; call `counts.settle()`
    once the iterator is consumed). Ops that skip records report them to `quarantine` (the
    shard's, present when the stage has such ops)."""
    reader = next((i for i, op in enumerate(ops) if _reads(op)), None)
    it: Iterator = iter(records) if reader is not None else counts.tally(records, "records_in")
    wrote = False
    errors = quarantine.ops if quarantine is not None else {}
    for i, op in enumerate(ops):
        if isinstance(op, MapOp):
            if op.on_error == "skip":
                it = _guarded(_map_skip, op, info)(it, op.fn, errors[i])
            else:
                it = _guarded(_map, op, info)(it, op.fn)
        elif isinstance(op, FlatMapOp):
            if op.on_error == "skip":
                it = _guarded(_flat_map_skip, op, info)(it, op.fn, errors[i], op, info)
            elif op.reader_skips:
                it = _guarded(_flat_map_reader, op, info)(it, op.fn, errors[i])
            else:
                it = _guarded(_flat_map, op, info)(it, op.fn)
        elif isinstance(op, FilterOp):
            if op.on_error == "skip":
                it = _guarded(_filter_skip, op, info)(it, op.pred, errors[i])
            else:
                it = _guarded(_filter, op, info)(it, op.pred)
        elif isinstance(op, MapShardOp):
            it = _guarded(_map_shard, op, info)(it, op.fn, info)
        elif isinstance(op, WindowOp):
            it = _window(it, op.size)
        elif isinstance(op, TakePerShardOp):
            it = itertools.islice(it, op.n)
        elif isinstance(op, WriteOp):
            it = _guarded(_write, op, info)(it, op, info, counts, quarantine)
            wrote = True
        elif isinstance(op, Nested):
            it = _guarded(_nested, op, info)(it, op, info)
        else:
            raise TypeError(f"no kernel for {op!r}")
        if i == reader:
            it = counts.tally(it, "records_in")
    return it if wrote else counts.tally(it, "records_out")


def _nested(it: Iterator, state: dict, op: Nested, info: ShardInfo) -> Iterator:
    try:
        yield from op.backend.run_nested(op.ops, it, op.label)
    except ZephyrError as e:  # already described by the nested run: add where, not a second cause
        raise WrappedUserError(UserCodeFailure.from_nested(_where(info), e)) from None


@dataclass
class TaskResult:
    """What one task returns: per-shard output lists (or one flat list), the records it wrote or
    produced (`records`) and read (`records_in`, see Counts), how many shards were skipped because
    their output existed, and the skipped (quarantined) records per op ({op index: [skipped,
    seen, sample]}, None when the stage skips nothing)."""

    outputs: list
    records: int
    skipped: int = 0
    errors: dict | None = None
    records_in: int = 0


class KeptCounts(NamedTuple):
    """What the driver learns of a result kept on the cluster for the next stage (not its
    records): how many outputs it holds, its records in and out, its skipped-record counts."""

    outputs: int
    records_in: int
    records_out: int
    errors: dict | None


def shard_records(spec: Any) -> Iterable:
    """The input records of a shard: its source item, or slices of upstream stage outputs."""
    kind, value = spec
    if kind == "item":
        return (value,)
    return itertools.chain.from_iterable(
        upstream.outputs[start:stop] for upstream, start, stop in value
    )


def run_task(
    stage: Stage, shards: list[tuple[int, Any]], flat: bool
) -> TaskResult | UserCodeFailure:
    """Run `stage` over each (shard_idx, input spec) in `shards`, in order, in this process.

    Returns the outputs (one list per shard, or one flat list when `flat`) or, if user code raised,
    a UserCodeFailure describing it; the caller raises it as a ZephyrError on the driver.
    """
    outputs: list = []
    counts = Counts()
    errors: dict | None = {} if stage.quarantine is not None else None
    pos = current_position()
    for shard_idx, spec in shards:
        source = spec[1] if spec[0] == "item" else None
        info = ShardInfo(shard_idx, stage.num_shards, source, stage.name)
        pos.clear()  # no position of an earlier shard run by this thread may leak into this one
        quarantine = None
        try:
            if stage.quarantine is not None:
                path = stage.quarantine.path(shard_idx, stage.num_shards, source)
                quarantine = ShardQuarantine(path, stage.name, shard_idx, source, stage.ops)
            produced = run_ops(stage.ops, shard_records(spec), info, counts, quarantine)
            if flat:
                outputs.extend(produced)
            else:
                outputs.append(list(produced))
            if quarantine is not None:
                quarantine.commit()  # no-op when the writer committed it already
                merge_stats(errors, quarantine.stats())
        except WrappedUserError as e:
            if quarantine is not None:
                quarantine.abort(e)
            return e.failure
        except Exception as e:  # a failure outside any op (e.g. reading an upstream slice)
            if quarantine is not None:
                quarantine.abort(e)
            return UserCodeFailure.capture(f"{_where(info)}: {type(e).__name__}: {e}", e)
    counts.settle()
    return TaskResult(outputs, counts.records_out, counts.skipped, errors, counts.records_in)


def existing_stage_outputs(stage: Stage) -> list[str] | None:
    """The output paths of `stage` if it ends in a writer with `skip_existing=True` and every one
    already exists (checked on the driver, one listing per folder); else None. Then neither the
    stage nor anything upstream of it needs to run."""
    writer = stage.ops[-1] if stage.ops else None
    if not isinstance(writer, WriteOp) or not writer.skip_existing or stage.num_shards < 1:
        return None
    inputs = stage.inputs or (None,) * stage.num_shards
    paths = [
        render_path(writer.pattern, j, stage.num_shards, inputs[j]) for j in range(stage.num_shards)
    ]
    return paths if len(existing_outputs(paths)) == len(set(paths)) else None
