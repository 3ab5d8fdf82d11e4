"""The planner: turns a Dataset's logical ops into a physical plan of typed stages.

Pure: no Dask, no I/O, no clock, so plans are tested in milliseconds and printed by `--dry-run`.
A small fusion state walks the ops: record ops fuse into a Map step, a writer adds a Write step in
the same task, ops whose explicit backend differs from the executing one form a Nested step, and
a reshard closes the stage (the nouns are in `zephyr.stages`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from zephyr.ops import RECORD_OPS, ReshardOp, SourceOp, WriteOp
from zephyr.paths import QuarantineTarget, check_output_compression, validate_pattern
from zephyr.shuffle.ops import DeduplicateOp, GroupByOp, JoinOp
from zephyr.shuffle.steps import Join, Reduce, Scatter, ScatterStage, ShuffleStep
from zephyr.stages import Map, MapStage, Nested, Stage, Write, WriteStage


@dataclass(frozen=True)
class Plan:
    """The physical plan: where shards come from, and the typed stages that run in order."""

    source: SourceOp
    stages: tuple[Stage, ...]

    def describe(self) -> str:
        """The plan as text, one block per stage (what `dataset.plan()` and `--dry-run` print)."""
        lines = [
            f"Plan: {len(self.stages)} stage(s) from {self.source.label} "
            f"{self.source.description} ({len(self.source.items)} shards)"
        ]
        for stage in self.stages:
            lines.append(
                f"  stage {stage.number}: {stage.name}  [{stage.num_shards} shards, input: "
                f"{stage.source}]"
            )
            for op in stage.ops:
                lines.append(f"      {op.detail}")
            for step in stage.steps:
                if isinstance(step, Join):
                    side = step.side
                    lines.append(
                        f"      right side, read in this stage's tasks: {side.name}  "
                        f"[{side.num_shards} shards, input: {side.source}]"
                    )
            if stage.quarantine is not None:
                first = stage.inputs[0] if stage.inputs else None
                where = stage.quarantine.describe(stage.num_shards, first)
                lines.append(f"      bad records (on_error='skip') -> {where}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    @property
    def shuffles(self) -> bool:
        """Whether a stage scatters records (the run needs scratch space)."""
        return any(stage.scatters for stage in self.stages)

    def bind_shuffles(self, folder_of: Any, budget: int) -> Plan:
        """The plan with each shuffle's steps given where their runs go (`folder_of(op)`, a
        folder of this run, then 's<stage>') and a task's memory budget in bytes."""

        def bind(stage: Stage, number: Any) -> Stage:
            steps = []
            for step in stage.steps:
                if isinstance(step, ShuffleStep):
                    step = replace(step, folder=f"{folder_of(step.op)}/s{number}", budget=budget)
                elif isinstance(step, Join):  # its side's intermediate merges: 's<N>j<slot>'
                    step = replace(step, side=bind(step.side, f"{number}j{step.slot}"))
                steps.append(step)
            return replace(stage, steps=tuple(steps))

        stages = [bind(stage, stage.number) for stage in self.stages]
        return Plan(self.source, tuple(stages))

    def __repr__(self) -> str:
        # A REPL echoes this after `.plan()` printed the stages: one line, never the input items.
        shards = " -> ".join(str(stage.num_shards) for stage in self.stages) or "0"
        return (
            f"<Plan: {len(self.stages)} stage(s) from {self.source.label} "
            f"{self.source.description}, shards {shards}; print(plan) shows the stages>"
        )


@dataclass
class FusionState:
    """What the planner holds while it walks the logical ops in order: the stages closed so far,
    the steps of the open stage, and the record ops waiting to become its next Map step.

    Each kind of logical op has its method: `fuse` (a record op), `write`, `nest` (an op for
    another backend), `reshard` (closes the stage), `shuffle` (closes the stage in a Scatter step
    and opens the next with a Reduce step), `join` (runs the right dataset's stages first and
    reads its last stage inside the open one).
    """

    executor: Any
    num_shards: int
    inputs: tuple | None  # the source items of the open stage; None after a reshard
    reshard_from: int | None = None
    upstream: int | None = None  # the index of the stage feeding the open one
    stages: list[Stage] = field(default_factory=list)
    steps: list = field(default_factory=list)
    pending: list = field(default_factory=list)

    def add(self, op: Any) -> None:
        """Place one logical op; raises TypeError for an op the planner does not know."""
        if isinstance(op, ReshardOp):
            self.reshard(op)
        elif isinstance(op, (GroupByOp, DeduplicateOp)):
            self.shuffle(op)
        elif isinstance(op, JoinOp):
            self.join(op)
        elif not isinstance(op, RECORD_OPS):
            raise TypeError(f"unknown op {op!r}")
        elif isinstance(op, WriteOp):  # Dataset gives writers no backend of their own
            self.write(op)
        elif op.backend is not None and op.backend is not self.executor:
            self.nest(op)
        else:
            self.fuse(op)

    def fuse(self, op: Any) -> None:
        self.pending.append(op)

    def write(self, op: WriteOp) -> None:
        """A Write step in the open stage's task. Raises ValueError for a template that cannot
        name each shard (before any work starts)."""
        validate_pattern(op.pattern, self.num_shards, self.inputs)
        check_output_compression(op.pattern, op.format)
        self._flush()
        self.steps.append(Write(op))

    def nest(self, op: Any) -> None:
        """Consecutive ops for the same other backend share one Nested step."""
        self._flush()
        last = self.steps[-1] if self.steps else None
        if isinstance(last, Nested) and last.backend is op.backend:
            self.steps[-1] = Nested(op.backend, last.ops + (op,))
        else:
            self.steps.append(Nested(op.backend, (op,)))

    def reshard(self, op: ReshardOp) -> None:
        self.end_stage()
        self._follow(op.num_shards)

    def _follow(self, num_shards: int) -> None:
        """Open a stage fed by the one just closed, with `num_shards` shards."""
        self.upstream = len(self.stages) - 1
        self.reshard_from, self.inputs = self.num_shards, None
        self.num_shards = num_shards

    def shuffle(self, op: GroupByOp | DeduplicateOp) -> None:
        """A Scatter closes the open stage; the next starts with a Reduce of its runs."""
        partitions = op.num_output_shards or self.num_shards
        self._flush()
        self.steps.append(Scatter(op, partitions))
        self.end_stage()
        self._follow(partitions)
        self.steps.append(Reduce(op, self.reshard_from))

    def join(self, op: JoinOp) -> None:
        """The right dataset's stages but its last run first (they join this plan); its last
        stage is read inside each task of the open stage, shard i beside shard i. Raises
        ValueError (before any work starts) when the two sides' shard counts differ."""
        right = op.right.compute_plan(self.executor)
        side = right.stages[-1]
        if side.num_shards != self.num_shards:
            raise ValueError(
                f"{op.detail}: both sides must have the same number of shards, and this dataset "
                f"has {self.num_shards} where it joins while the right one has {side.num_shards}; "
                "group_by both on their join key with the same num_output_shards"
            )
        skipping = [o for o in side.ops if getattr(o, "skips", False)]
        if skipping:
            raise ValueError(
                f"{op.detail}: the right dataset's last stage is read inside the join's tasks, "
                f"where skipped records have no quarantine, and {skipping[0].detail} has "
                "on_error='skip'; drop it there, or end the right dataset in a group_by"
            )
        offset = len(self.stages)
        self.stages.extend(_shifted(stage, offset) for stage in right.stages[:-1])
        self._flush()
        slot = sum(isinstance(step, Join) for step in self.steps)
        self.steps.append(Join(op, replace(_shifted(side, offset), index=-1), slot))

    def _flush(self) -> None:
        if self.pending:
            self.steps.append(Map(tuple(self.pending)))
            self.pending = []

    def end_stage(self) -> None:
        """Close the open stage; its kind follows from its steps."""
        self._flush()
        steps = tuple(self.steps)
        if steps and isinstance(steps[-1], Scatter):
            kind: type[Stage] = ScatterStage
        elif any(isinstance(s, Write) for s in steps):
            kind = WriteStage
        else:
            kind = MapStage
        index = len(self.stages)
        self.stages.append(
            kind(
                index,
                steps,
                self.num_shards,
                self.inputs,
                self.reshard_from,
                upstream=self.upstream,
            )  # fmt: skip
        )
        self.steps = []


def _shifted(stage: Stage, offset: int) -> Stage:
    """`stage` of another plan placed `offset` stages later in this one."""
    upstream = None if stage.upstream is None else stage.upstream + offset
    return replace(stage, index=stage.index + offset, upstream=upstream)


def compute_plan(source: SourceOp, ops: tuple, executor: Any = None) -> Plan:
    """Fuse `ops` into stages for execution on `executor` and validate writer templates.

    Raises ValueError for a template that cannot name each shard (before any work starts).
    """
    state = FusionState(executor, len(source.items), source.items)
    for op in ops:
        state.add(op)
    state.end_stage()
    return Plan(source, tuple(_with_quarantine(state.stages)))


def _with_quarantine(stages: list[Stage]) -> list[Stage]:
    """Give each stage with an op that may skip records its quarantine target; raise ValueError
    (before any work starts) when skipped records would have nowhere to go."""
    out = []
    for k, stage in enumerate(stages):
        skipping = [op for op in stage.ops if getattr(op, "skips", False)]
        for op in stage.ops:
            if isinstance(op, Nested) and any(getattr(o, "skips", False) for o in op.ops):
                raise ValueError(
                    f"{op.detail}: on_error='skip' is not supported on an op given another "
                    "backend; drop backend= or on_error='skip' from that op"
                )
        if not skipping:
            out.append(stage)
            continue
        writer_at = next((i for i, op in enumerate(stage.ops) if isinstance(op, WriteOp)), None)
        late = [
            op
            for i, op in enumerate(stage.ops)
            if writer_at is not None and i > writer_at and getattr(op, "skips", False)
        ]
        if late:
            raise ValueError(
                f"{late[0].detail} has on_error='skip' but comes after "
                f"{stage.ops[writer_at].detail} in stage {stage.number} '{stage.name}', so its "
                "skipped records could not be committed with the shard's output; move it before "
                "the writer"
            )
        folders = sorted({op.quarantine for op in skipping if op.quarantine is not None})
        if len(folders) > 1:
            raise ValueError(
                f"stage {stage.number} '{stage.name}' is given several quarantine folders "
                f"{folders}; a stage's skipped records go to one folder: give the same one"
            )
        folder = folders[0].rstrip("/") if folders else None
        writer = stage.ops[writer_at].pattern if writer_at is not None else None
        if folder is None and writer is None:
            folder = _downstream_folder(stages[k + 1 :])
            if folder is None:
                raise ValueError(
                    f"{skipping[0].detail} has on_error='skip' but stage {stage.number} "
                    f"'{stage.name}' writes no files and no later stage does, so its skipped "
                    "records have no place to go; pass quarantine='<folder>' (e.g. "
                    "quarantine='gs://bucket/quarantine') or end the pipeline in a writer"
                )
        out.append(replace(stage, quarantine=QuarantineTarget(folder, writer, stage.number)))
    return out


def _downstream_folder(later: list[Stage]) -> str | None:
    """The quarantine folder beside the output of shard 0 of the first writer in a later stage."""
    for stage in later:
        if isinstance(stage, WriteStage):
            first = stage.inputs[0] if stage.inputs else None
            target = QuarantineTarget(None, stage.writer.pattern, stage.number)
            return target.describe(stage.num_shards, first).rstrip("/")
    return None
