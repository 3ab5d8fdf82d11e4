"""The kernels of the logical record ops a Map step fuses: one generator per op type (OP_KERNELS),
with an on_error="skip" variant that quarantines a failing record instead of failing the shard.

Runs inside a task; imports no Dask. A user-code failure is described here, once, with the stage,
shard, input and record, and where a reader produced the record (`zephyr.io.provenance`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from zephyr.errors import UserCodeFailure, WrappedUserError, short_repr
from zephyr.io.provenance import current_position
from zephyr.ops import (
    FilterOp,
    FlatMapOp,
    MapOp,
    MapShardOp,
    ShardReduceOp,
    TakePerShardOp,
    WindowOp,
    reader_name,
)
from zephyr.quarantine import OpErrors

NO_RECORD = object()  # a failure before any record was read


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


def shard_where(info: ShardInfo) -> str:
    """ "stage 'map' shard 3 (input 'a.jsonl')": where a failure happened, for its message."""
    where = f"stage '{info.stage}' shard {info.shard_idx}"
    if info.input is not None:
        where += f" (input {short_repr(info.input)})"
    return where


def user_failure(
    info: ShardInfo, what: str, exc: Exception, record: object, at: str = "", tail: str = ""
) -> WrappedUserError:
    """The described failure of user code `what` (an op's detail) on `record` in shard `info`."""
    msg = f"{shard_where(info)}: {what} raised {type(exc).__name__}: {exc}{tail}"
    if record is not NO_RECORD:
        msg += f"; record: {short_repr(record)}"
        if at:
            msg += f" (read from {at})"
    return WrappedUserError(UserCodeFailure.capture(msg, exc))


def guarded(gen_fn: Callable[..., Iterator], op: Any, info: ShardInfo) -> Callable[..., Iterator]:
    """Run a kernel generator `gen_fn(it, state, *args)`, describing any exception it raises
    (once) with the op and shard; the generator keeps the record it works on in
    `state["record"]`.

    A record op's failure also names where its record was read (the file and line a reader set
    last in this thread); a reader's own failure already names its file and line."""
    located = isinstance(op, (MapOp, FilterOp)) or getattr(op, "per_record", False)
    located = located or (isinstance(op, FlatMapOp) and reader_name(op.fn) is None)

    def run(it: Iterator, *args: Any) -> Iterator:
        state = {"record": NO_RECORD}
        try:
            yield from gen_fn(it, state, *args)
        except WrappedUserError:
            raise
        except Exception as e:
            at = current_position().describe() if located else ""
            raise user_failure(info, op.detail, e, state["record"], at) from e

    return run


def registrar(table: dict[type, Callable[..., Iterator]]) -> Callable[[type], Callable]:
    """A decorator factory registering kernels in `table` under the type they run:
    `@registrar(TABLE)(MapOp)` (shared by op kernels here and step kernels in zephyr.kernels)."""

    def by_type(kind: type) -> Callable:
        def register(fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
            table[kind] = fn
            return fn

        return register

    return by_type


# -- the registry: op type -> kernel(op, records, shard info, the op's OpErrors or None). A new
# record op adds its class and an `@op_kernel(<Name>Op)` function.
OpKernel = Callable[..., Iterator]
OP_KERNELS: dict[type, OpKernel] = {}
op_kernel = registrar(OP_KERNELS)


@op_kernel(MapOp)
def _map_op(op: MapOp, it: Iterator, info: ShardInfo, errors: OpErrors | None) -> Iterator:
    if op.on_error == "skip":
        return guarded(_map_skip, op, info)(it, op.fn, errors)
    return guarded(_map, op, info)(it, op.fn)


@op_kernel(FlatMapOp)
def _flat_map_op(op: FlatMapOp, it: Iterator, info: ShardInfo, errors: OpErrors | None) -> Iterator:
    if op.on_error == "skip":
        return guarded(_flat_map_skip, op, info)(it, op.fn, errors, op, info)
    if op.reader_skips:
        return guarded(_flat_map_reader, op, info)(it, op.fn, errors)
    return guarded(_flat_map, op, info)(it, op.fn)


@op_kernel(FilterOp)
def _filter_op(op: FilterOp, it: Iterator, info: ShardInfo, errors: OpErrors | None) -> Iterator:
    if op.on_error == "skip":
        return guarded(_filter_skip, op, info)(it, op.pred, errors)
    return guarded(_filter, op, info)(it, op.pred)


@op_kernel(MapShardOp)
def _map_shard_op(op: MapShardOp, it: Iterator, info: ShardInfo, errors: Any) -> Iterator:
    return guarded(_map_shard, op, info)(it, op.fn, info)


@op_kernel(WindowOp)
def _window_op(op: WindowOp, it: Iterator, info: ShardInfo, errors: Any) -> Iterator:
    return _window(it, op.size)


@op_kernel(TakePerShardOp)
def _take_op(op: TakePerShardOp, it: Iterator, info: ShardInfo, errors: Any) -> Iterator:
    return itertools.islice(it, op.n)


@op_kernel(ShardReduceOp)
def _shard_reduce_op(op: ShardReduceOp, it: Iterator, info: ShardInfo, errors: Any) -> Iterator:
    return guarded(_shard_reduce, op, info)(it, op.fn)


# -- the generators
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


def _map_shard(it: Iterator, state: dict, fn: Callable, info: ShardInfo) -> Iterator:
    yield from _records(fn(it, info))


def _shard_reduce(it: Iterator, state: dict, fn: Callable) -> Iterator:
    yield fn(it)


def _window(it: Iterator, size: int) -> Iterator:
    while batch := list(itertools.islice(it, size)):
        yield batch


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
            raise user_failure(info, op.detail, e, rec, tail=tail) from e


def _flat_map_reader(it: Iterator, state: dict, fn: Callable, errors: OpErrors) -> Iterator:
    """flat_map over a reader that skips bad lines itself: they are counted under this op."""
    pos = current_position()
    for rec in it:
        state["record"] = rec
        pos.op = errors
        yield from _records(fn(rec))
