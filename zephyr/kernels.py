"""Per-shard execution: a stage's steps run as chained generators over one shard's records, one
kernel per step kind (STEP_KERNELS: Map, Write, Nested), and `run_task`, which runs a stage over a
batch of shards in this process.

Runs inside whatever process a backend chose (driver, thread, Dask worker); imports no Dask. Records
stream: a shard is materialised only when the next stage needs all of it (a reshard keeps its
stage's output). Records that an op with on_error="skip" leaves out go to the shard's quarantine
(`zephyr.quarantine`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zephyr.errors import UserCodeFailure, WrappedUserError, ZephyrError
from zephyr.io.atomic import existing_outputs, output_exists
from zephyr.io.provenance import current_position
from zephyr.io.writers import write_records
from zephyr.op_kernels import OP_KERNELS, ShardInfo, guarded, registrar, shard_where
from zephyr.ops import FlatMapOp, WriteOp, reader_name
from zephyr.paths import render_path
from zephyr.quarantine import ShardQuarantine, merge_stats
from zephyr.shuffle.join import merge_join
from zephyr.shuffle.merge import merged_entries, reduce_groups
from zephyr.shuffle.scatter import Spiller, scatter
from zephyr.shuffle.steps import Join, Reduce, Scatter
from zephyr.stages import Map, Nested, Stage, Write

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


# -- the registry: step type -> kernel(step, records, task, shard info, the shard's quarantine,
# index of the step's first entry in Stage.ops)
StepKernel = Callable[..., Iterator]
STEP_KERNELS: dict[type, StepKernel] = {}


# A physical step kind registers its kernel with `@step_kernel(<Step>)`.
step_kernel = registrar(STEP_KERNELS)


def _reads(op: Any) -> bool:
    return isinstance(op, FlatMapOp) and reader_name(op.fn) is not None


class StageTask:
    """A stage as one task runs it: each step's kernel, looked up once for all the task's shards,
    where records_in is counted, and the task's Counts (see Counts: records read, written or
    produced, shards skipped because their output existed). `spec` is the input of the shard
    being run (a Reduce reads its runs there, a Join its right side); `pooled` holds what a step
    shares across the task's shards (a Scatter's buffers), each finished when the task ends."""

    __slots__ = ("stage", "counts", "reader", "chain", "spec", "pooled")

    def __init__(self, stage: Stage, counts: Counts):
        self.stage, self.counts = stage, counts
        self.spec: Any = None
        self.pooled: dict[int, Any] = {}
        # the index in Stage.ops of the op after which records_in is counted (a reader), if any
        self.reader = next((i for i, op in enumerate(stage.ops) if _reads(op)), None)
        self.chain: list[tuple[StepKernel, Any, int]] = []
        at = 0
        for step in stage.steps:
            kernel = STEP_KERNELS.get(type(step))
            if kernel is None:
                raise TypeError(f"no kernel for {step!r}")
            self.chain.append((kernel, step, at))
            at += len(step.entries)

    def run(
        self, records: Iterable, info: ShardInfo, quarantine: ShardQuarantine | None = None
    ) -> Iterator:
        """Chain the step kernels over one shard's `records` lazily (call `counts.settle()` once
        the iterator is consumed). Ops that skip records report them to `quarantine` (the
        shard's, present when the stage has such ops)."""
        counts = self.counts
        it = iter(records) if self.reader is not None else counts.tally(records, "records_in")
        for kernel, step, at in self.chain:
            it = kernel(step, it, self, info, quarantine, at)
        return counts.tally(it, "records_out") if self.stage.emits_records else it


_NO_ERRORS: dict = {}  # the skipped-record tallies of a shard without a quarantine (read only)


@step_kernel(Map)
def _map_step(
    step: Map, it: Iterator, task: StageTask, info: ShardInfo, quarantine: Any, at: int
) -> Iterator:
    errors = quarantine.ops if quarantine is not None else _NO_ERRORS
    for i, op in enumerate(step.ops, at):
        kernel = OP_KERNELS.get(type(op))
        if kernel is None:
            raise TypeError(f"no kernel for {op!r}")
        it = kernel(op, it, info, errors.get(i))
        if i == task.reader:
            it = task.counts.tally(it, "records_in")
    return it


@step_kernel(Write)
def _write_step(
    step: Write, it: Iterator, task: StageTask, info: ShardInfo, quarantine: Any, at: int
) -> Iterator:
    return guarded(_write, step.op, info)(it, step.op, info, task.counts, quarantine)


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


def _then_commit(it: Iterator, quarantine: ShardQuarantine) -> Iterator:
    """The records of a shard, then its quarantine file committed: the writer sees the end of its
    input after that, so the quarantine file is in place before the output is (a shard skipped
    with skip_existing never loses its quarantine file)."""
    yield from it
    quarantine.commit()


@step_kernel(Nested)
def _nested_step(
    step: Nested, it: Iterator, task: StageTask, info: ShardInfo, quarantine: Any, at: int
) -> Iterator:
    return guarded(_nested, step, info)(it, step, info)


@step_kernel(Scatter)
def _scatter_step(
    step: Scatter, it: Iterator, task: StageTask, info: ShardInfo, quarantine: Any, at: int
) -> Iterator:
    records = task.counts.tally(it, "records_out")  # what a scatter stage passes on
    spiller = task.pooled.get(id(step))
    if spiller is None:  # the task's first shard: one buffer for all its shards
        spiller = task.pooled[id(step)] = Spiller(step, info.shard_idx)
    return guarded(scatter, step.op, info)(records, spiller)


@step_kernel(Reduce)
def _reduce_step(
    step: Reduce, it: Iterator, task: StageTask, info: ShardInfo, quarantine: Any, at: int
) -> Iterator:
    entries = merged_entries(task.spec.runs, step, info.shard_idx)
    return guarded(reduce_groups, step.op, info)(
        task.counts.tally(entries, "records_in"), step, info
    )


@step_kernel(Join)
def _join_step(
    step: Join, it: Iterator, task: StageTask, info: ShardInfo, quarantine: Any, at: int
) -> Iterator:
    spec = task.spec.sides[step.slot]
    side = StageTask(step.side, Counts())  # the right side's counts are not this stage's
    side.spec = spec
    side_info = ShardInfo(info.shard_idx, step.side.num_shards, spec.input, step.side.name)
    right = side.run(spec.records(), side_info)
    return guarded(_join, step.op, info)(it, right, step.op)


def _join(it: Iterator, state: dict, right: Iterator, op: Any) -> Iterator:
    yield from merge_join(it, right, op.left_key, op.right_key, op.combiner, op.how, state)


def _nested(it: Iterator, state: dict, step: Nested, info: ShardInfo) -> Iterator:
    try:
        yield from step.backend.run_nested(step.stage, it)
    except ZephyrError as e:  # already described by the nested run: add where, not a second cause
        raise WrappedUserError(UserCodeFailure.from_nested(shard_where(info), e)) from None


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


def run_task(
    stage: Stage, shards: list[tuple[int, Any]], keep: bool
) -> TaskResult | UserCodeFailure:
    """Run `stage` over each (shard_idx, input) in `shards` (inputs are zephyr.stages.SourceItem
    or ReshardSlices), in order, in this process.

    Returns the outputs, one list per shard, or one flat list with `keep` (the result is the next
    stage's input: see Backend._submit), or, if user code raised, a UserCodeFailure describing
    it; the caller raises it as a ZephyrError on the driver.
    """
    outputs: list = []
    counts = Counts()
    task = StageTask(stage, counts)
    name = stage.name
    errors: dict | None = {} if stage.quarantine is not None else None
    pos = current_position()
    for shard_idx, spec in shards:
        source = spec.input
        info = ShardInfo(shard_idx, stage.num_shards, source, name)
        pos.clear()  # no position of an earlier shard run by this thread may leak into this one
        quarantine = None
        try:
            if stage.quarantine is not None:
                path = stage.quarantine.path(shard_idx, stage.num_shards, source)
                quarantine = ShardQuarantine(path, name, shard_idx, source, stage.ops)
            task.spec = spec
            produced = task.run(spec.records(), info, quarantine)
            if keep:
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
            return UserCodeFailure.capture(f"{shard_where(info)}: {type(e).__name__}: {e}", e)
    try:  # what the shards left pooled (a scatter's last runs) goes with the last shard's outputs
        for pooled in task.pooled.values():
            (outputs if keep else outputs[-1]).extend(pooled.finish(info))
    except WrappedUserError as e:
        return e.failure
    counts.settle()
    return TaskResult(outputs, counts.records_out, counts.skipped, errors, counts.records_in)


def existing_stage_outputs(stage: Stage) -> list[str] | None:
    """The output paths of `stage` if it ends in a writer with `skip_existing=True` and every one
    already exists (checked on the driver, one listing per folder); else None. Then neither the
    stage nor anything upstream of it needs to run."""
    last = stage.steps[-1] if stage.steps else None
    if not isinstance(last, Write) or not last.op.skip_existing or stage.num_shards < 1:
        return None
    writer = last.op
    inputs = stage.inputs or (None,) * stage.num_shards
    paths = [
        render_path(writer.pattern, j, stage.num_shards, inputs[j]) for j in range(stage.num_shards)
    ]
    return paths if len(existing_outputs(paths)) == len(set(paths)) else None
