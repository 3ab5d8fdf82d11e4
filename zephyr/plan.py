"""The planner: turns a Dataset's logical ops into fused physical stages.

Pure: no Dask, no I/O, no clock, so plans are tested in milliseconds and printed by `--dry-run`.
Consecutive record/shard ops fuse into one task per shard; a stage ends at `reshard`. Ops whose
explicit backend differs from the executing one form a `Nested` stage that runs inside each shard of
its parent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from zephyr.ops import RECORD_OPS, ReshardOp, SourceOp, WriteOp
from zephyr.paths import QuarantineTarget, check_output_compression, validate_pattern

# A stage's title and task-group name hold at most about this many characters of op titles; a longer
# chain keeps its first ops and its last and says how many it left out ("+27").
TITLE_LIMIT = 120


def _elide(parts: list[str], sep: str, limit: int = TITLE_LIMIT) -> str:
    """`parts` joined by `sep` in at most about `limit` characters: the first parts that fit, then
    '+N' for the N parts left out, then the last part."""
    text = sep.join(parts)
    if len(text) <= limit or len(parts) <= 2:
        return text
    budget = limit - len(parts[-1]) - 2 * len(sep) - len(f"+{len(parts)}")
    head: list[str] = []
    for part in parts[:-1]:
        if len(sep.join([*head, part])) > budget:
            break
        head.append(part)
    return sep.join([*head, f"+{len(parts) - 1 - len(head)}", parts[-1]])


def _key_safe(text: str) -> str:
    """`text` without the characters Dask's key parsing splits on ('-') and without whitespace."""
    return "".join("_" if c == "-" or c.isspace() or not c.isprintable() else c for c in text)


@dataclass(frozen=True)
class Nested:
    """Ops run on another backend from inside a parent shard task, one inner shard per record."""

    backend: Any
    ops: tuple

    @property
    def label(self) -> str:
        return "nested[" + " -> ".join(op.label for op in self.ops) + "]"

    @property
    def title(self) -> str:
        return "nested[" + _elide([op.title for op in self.ops], ",") + "]"

    @property
    def detail(self) -> str:
        inner = ", ".join(op.detail for op in self.ops)
        return f"nested on {self.backend!r}: {inner}"


@dataclass(frozen=True)
class Stage:
    """One physical stage: every shard runs `ops` fused in one task.

    `reshard_from` is None for the first stage (its shards are the source items) and the number of
    upstream shards otherwise; `inputs` are the source items of the first stage.
    """

    index: int
    ops: tuple
    num_shards: int
    inputs: tuple | None
    reshard_from: int | None = None
    label: str | None = None  # a given display name (nested stages are named after their parent)
    quarantine: QuarantineTarget | None = None  # where skipped records go; None: nothing skips

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        labels = (["reshard"] if self.reshard_from is not None else []) + [
            op.label for op in self.ops
        ]
        return " -> ".join(labels) or "identity"

    @property
    def title(self) -> str:
        """The stage as logs show it, with the user's function names:
        'load_jsonl -> map(clean) -> filter(long_enough) -> write_jsonl' (`name` has the op kinds
        only). A long chain is elided in the middle; a given `label` is the title, as it is the
        name."""
        if self.label is not None:
            return self.label
        parts = (["reshard"] if self.reshard_from is not None else []) + [
            op.title for op in self.ops
        ]
        return _elide(parts, " -> ") or "identity"

    @property
    def number(self) -> int:
        """The stage's 1-based number, as plans, logs, errors and the dashboard show it."""
        return self.index + 1

    def scope(self, run_id: str) -> str:
        """Run and stage number, 'r2.s1': how logs and the dashboard point at a stage."""
        return f"{run_id}.s{self.number}"

    def task_group(self, scope: str) -> str:
        """The Dask task-group name of this stage's tasks: 'r2.s1.load_jsonl.map(clean).write_jsonl'
        for a stage of run `scope` ('r2'); a nested stage (`run_nested`) names the parent stage's
        scope ('r2.s1') and reads 'r2.s1.nested[map(fetch)]'.

        Holds no '-' and no whitespace: Dask groups a key '<group>-<shard>-<token>' under exactly
        its text before the first '-' (dask.utils.key_split keeps a first word that starts with a
        letter whole, and stops at the shard number). At most about 150 characters.
        """
        parts = (["reshard"] if self.reshard_from is not None else []) + [
            op.title for op in self.ops
        ]
        if self.label is not None:  # nested: named after its parent stage
            body = "nested[" + _elide(parts, ",") + "]"
            return _key_safe(f"{scope}.{body}" if scope else body)
        return _key_safe(f"{self.scope(scope)}.{_elide(parts, '.') or 'identity'}")

    def __repr__(self) -> str:
        # The dataclass repr would list every input item (thousands of paths).
        return f"<Stage {self.index} {self.name!r}: {self.num_shards} shards>"

    @property
    def has_nested(self) -> bool:
        return any(isinstance(op, Nested) for op in self.ops)

    @property
    def writes(self) -> bool:
        return any(isinstance(op, WriteOp) for op in self.ops)


@dataclass(frozen=True)
class Plan:
    source: SourceOp
    stages: tuple[Stage, ...]

    def describe(self) -> str:
        """The plan as text, one block per stage (what `dataset.plan()` and `--dry-run` print)."""
        lines = [
            f"Plan: {len(self.stages)} stage(s) from {self.source.label} "
            f"{self.source.description} ({len(self.source.items)} shards)"
        ]
        for stage in self.stages:
            src = (
                f"reshard of {stage.reshard_from} shards"
                if stage.reshard_from is not None
                else "source"
            )
            lines.append(
                f"  stage {stage.number}: {stage.name}  [{stage.num_shards} shards, input: {src}]"
            )
            for op in stage.ops:
                lines.append(f"      {op.detail}")
            if stage.quarantine is not None:
                first = stage.inputs[0] if stage.inputs else None
                where = stage.quarantine.describe(stage.num_shards, first)
                lines.append(f"      bad records (on_error='skip') -> {where}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        # A REPL echoes this after `.plan()` printed the stages: one line, never the input items.
        shards = " -> ".join(str(stage.num_shards) for stage in self.stages) or "0"
        return (
            f"<Plan: {len(self.stages)} stage(s) from {self.source.label} "
            f"{self.source.description}, shards {shards}; print(plan) shows the stages>"
        )


def _group_nested(ops: list, executor: Any) -> list:
    """Replace runs of ops whose backend is set and differs from the executor by Nested stages."""
    out: list = []
    for op in ops:
        backend = op.backend
        if backend is None or backend is executor:
            out.append(op)
        elif out and isinstance(out[-1], Nested) and out[-1].backend is backend:
            out[-1] = Nested(backend, out[-1].ops + (op,))
        else:
            out.append(Nested(backend, (op,)))
    return out


def compute_plan(source: SourceOp, ops: tuple, executor: Any = None) -> Plan:
    """Fuse `ops` into stages for execution on `executor` and validate writer templates.

    Raises ValueError for a template that cannot name each shard (before any work starts).
    """
    stages: list[Stage] = []
    current: list = []
    num_shards = len(source.items)
    inputs: tuple | None = source.items
    reshard_from: int | None = None

    def close() -> None:
        fused = tuple(_group_nested(current, executor))
        stages.append(Stage(len(stages), fused, num_shards, inputs, reshard_from))

    for op in ops:
        if isinstance(op, ReshardOp):
            close()
            current, reshard_from, inputs = [], num_shards, None
            num_shards = op.num_shards
            continue
        if not isinstance(op, RECORD_OPS):
            raise TypeError(f"unknown op {op!r}")
        if isinstance(op, WriteOp):
            validate_pattern(op.pattern, num_shards, inputs)
            check_output_compression(op.pattern, op.format)
        current.append(op)
    close()
    return Plan(source, tuple(_with_quarantine(stages)))


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
        for op in stage.ops:
            if isinstance(op, WriteOp):
                first = stage.inputs[0] if stage.inputs else None
                target = QuarantineTarget(None, op.pattern, stage.number)
                return target.describe(stage.num_shards, first).rstrip("/")
    return None
