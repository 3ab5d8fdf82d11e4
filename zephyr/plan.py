"""The planner: turns a Dataset's logical ops into fused physical stages.

Pure: no Dask, no I/O, no clock, so plans are tested in milliseconds and printed by `--dry-run`.
Consecutive record/shard ops fuse into one task per shard; a stage ends at `reshard`. Ops whose
explicit backend differs from the executing one form a `Nested` stage that runs inside each shard of
its parent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from zephyr.io.paths import validate_pattern
from zephyr.ops import RECORD_OPS, ReshardOp, SourceOp, WriteOp


@dataclass(frozen=True)
class Nested:
    """Ops run on another backend from inside a parent shard task, one inner shard per record."""

    backend: Any
    ops: tuple

    @property
    def label(self) -> str:
        return "nested[" + " -> ".join(op.label for op in self.ops) + "]"

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

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        labels = (["reshard"] if self.reshard_from is not None else []) + [
            op.label for op in self.ops
        ]
        return " -> ".join(labels) or "identity"

    @property
    def key_name(self) -> str:
        """The stage name as Dask key words (letters only) so the dashboard groups its tasks."""
        labels = (["reshard"] if self.reshard_from is not None else []) + [
            op.label for op in self.ops
        ]
        words = [re.sub(r"[^A-Za-z]", "", label) for label in labels]
        return "-".join(w for w in words if w) or "identity"

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
                f"  stage {stage.index}: {stage.name}  [{stage.num_shards} shards, input: {src}]"
            )
            for op in stage.ops:
                lines.append(f"      {op.detail}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


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
        current.append(op)
    close()
    return Plan(source, tuple(stages))
