"""Per-shard execution: a stage's ops run as chained generators over one shard's records.

Runs inside whatever process a backend chose (driver, thread, Dask worker); imports no Dask. Records
stream: a shard is materialised only when an op needs all of it (a reshard boundary keeps its
stage's output). User-code failures are described here, once, with the stage, shard, input and
record.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from zephyr.errors import UserCodeFailure, ZephyrError, _WrappedUserError, short_repr
from zephyr.io.atomic import existing_outputs, output_exists
from zephyr.io.paths import render_path
from zephyr.io.writers import write_records
from zephyr.ops import FilterOp, FlatMapOp, MapOp, MapShardOp, TakePerShardOp, WindowOp, WriteOp
from zephyr.plan import Nested, Stage

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


def _wrap(info: ShardInfo, what: str, exc: Exception, record: object) -> _WrappedUserError:
    msg = f"{_where(info)}: {what} raised {type(exc).__name__}: {exc}"
    if record is not _NO_RECORD:
        msg += f"; record: {short_repr(record)}"
    return _WrappedUserError(UserCodeFailure.capture(msg, exc))


def _guarded(gen_fn: Callable[..., Iterator], op: Any, info: ShardInfo) -> Callable[..., Iterator]:
    """Run a kernel generator, describing any exception it raises (once) with the op and shard."""

    def run(it: Iterator, *args: Any) -> Iterator:
        state = {"record": _NO_RECORD}
        try:
            yield from gen_fn(it, state, *args)
        except _WrappedUserError:
            raise
        except Exception as e:
            raise _wrap(info, op.detail, e, state["record"]) from e

    return run


def _map(it: Iterator, state: dict, fn: Callable) -> Iterator:
    for rec in it:
        state["record"] = rec
        yield fn(rec)


def _flat_map(it: Iterator, state: dict, fn: Callable) -> Iterator:
    for rec in it:
        state["record"] = rec
        yield from fn(rec)


def _filter(it: Iterator, state: dict, pred: Callable) -> Iterator:
    for rec in it:
        state["record"] = rec
        if pred(rec):
            yield rec


def _map_shard(it: Iterator, state: dict, fn: Callable, info: ShardInfo) -> Iterator:
    yield from fn(it, info)


def _window(it: Iterator, size: int) -> Iterator:
    while batch := list(itertools.islice(it, size)):
        yield batch


def _write(it: Iterator, state: dict, op: WriteOp, info: ShardInfo, counter: list) -> Iterator:
    path = render_path(op.pattern, info.shard_idx, info.total_shards, info.input)
    if op.skip_existing and output_exists(path):
        # `it` is never iterated, so nothing upstream runs: the shard's input is not even opened.
        counter[1] += 1
    else:
        counter[0] += write_records(op.format, it, path, op.options)
    yield path


def _counted(it: Iterable, counter: list) -> Iterator:
    for rec in it:
        counter[0] += 1
        yield rec


def run_ops(ops: tuple, records: Iterable, info: ShardInfo, counter: list) -> Iterator:
    """Chain `ops` over `records` lazily; `counter[0]` counts records written (else produced),
    `counter[1]` shards skipped because their output existed."""
    it: Iterator = iter(records)
    wrote = False
    for op in ops:
        if isinstance(op, MapOp):
            it = _guarded(_map, op, info)(it, op.fn)
        elif isinstance(op, FlatMapOp):
            it = _guarded(_flat_map, op, info)(it, op.fn)
        elif isinstance(op, FilterOp):
            it = _guarded(_filter, op, info)(it, op.pred)
        elif isinstance(op, MapShardOp):
            it = _guarded(_map_shard, op, info)(it, op.fn, info)
        elif isinstance(op, WindowOp):
            it = _window(it, op.size)
        elif isinstance(op, TakePerShardOp):
            it = itertools.islice(it, op.n)
        elif isinstance(op, WriteOp):
            it = _guarded(_write, op, info)(it, op, info, counter)
            wrote = True
        elif isinstance(op, Nested):
            it = _guarded(_nested, op, info)(it, op, info)
        else:
            raise TypeError(f"no kernel for {op!r}")
    return it if wrote else _counted(it, counter)


def _nested(it: Iterator, state: dict, op: Nested, info: ShardInfo) -> Iterator:
    try:
        yield from op.backend.run_nested(op.ops, it, op.label)
    except ZephyrError as e:  # already described by the nested run: add where, not a second cause
        raise _WrappedUserError(UserCodeFailure.from_nested(_where(info), e)) from None


@dataclass
class TaskResult:
    """What one task returns: per-shard output lists (or one flat list), the record count and how
    many shards were skipped because their output existed."""

    outputs: list
    records: int
    skipped: int = 0


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
    counter = [0, 0]
    for shard_idx, spec in shards:
        source = spec[1] if spec[0] == "item" else None
        info = ShardInfo(shard_idx, stage.num_shards, source, stage.name)
        try:
            produced = run_ops(stage.ops, shard_records(spec), info, counter)
            if flat:
                outputs.extend(produced)
            else:
                outputs.append(list(produced))
        except _WrappedUserError as e:
            return e.failure
        except Exception as e:  # a failure outside any op (e.g. reading an upstream slice)
            return UserCodeFailure.capture(f"{_where(info)}: {type(e).__name__}: {e}", e)
    return TaskResult(outputs, counter[0], counter[1])


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
