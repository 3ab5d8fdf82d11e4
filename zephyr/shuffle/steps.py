"""The physical steps of shuffles, beside zephyr.stages' Map, Write and Nested: Scatter ends a
ScatterStage (each shard writes its records as sorted runs, one per output shard, and yields
where they are), Reduce starts the next stage (each shard merges its runs and reduces per key),
Join merges a stage's stream with a shard of another dataset. Pure data: no Dask, no I/O."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from zephyr.ops import short_name
from zephyr.stages import Stage


@dataclass(frozen=True)
class ShuffleStep:
    """What both sides of a shuffle hold: the op (a GroupByOp or DeduplicateOp), and, set when a
    backend starts the run (zephyr.plan.Plan.bind_shuffles), the stage's scratch `folder` and a
    task's memory `budget` in bytes. The step is its own entry in its stage's ops."""

    op: Any
    folder: str | None = field(default=None, kw_only=True)
    budget: int | None = field(default=None, kw_only=True)

    @property
    def entries(self) -> tuple:
        return (self,)


@dataclass(frozen=True)
class Scatter(ShuffleStep):
    """Routes each record by the op's key to one of `partitions` output shards, through sorted
    runs written under `folder`."""

    partitions: int = 1

    @property
    def label(self) -> str:
        return "scatter"

    @property
    def title(self) -> str:
        return f"scatter({short_name(self.op.key)})"

    @property
    def detail(self) -> str:
        return f"{self.op.detail}: scatter by key into {self.partitions} shards (sorted runs)"


@dataclass(frozen=True)
class Reduce(ShuffleStep):
    """Merges the sorted runs of one output shard and reduces each key's records: the reducer of
    a group_by, or the first record of a deduplicate (a shard with more runs than it may read at
    once merges them in passes, through `folder`)."""

    upstream_shards: int = 0

    @property
    def label(self) -> str:
        return "reduce"

    @property
    def title(self) -> str:
        fn = getattr(self.op, "reducer", None)
        return f"reduce({short_name(fn)})" if fn is not None else f"reduce({self.op.label})"

    @property
    def detail(self) -> str:
        return f"{self.op.detail}: merge the sorted runs of {self.upstream_shards} shards by key"

    def shard_inputs(self, stage: Stage, upstream: list) -> list[tuple[int, ShuffleInput]]:
        """Shard j's input: the runs of output shard j, in the order of the shards that wrote
        them (each a tuple of (partition, Run) pairs, `upstream` in shard order)."""
        runs: list[list] = [[] for _ in range(stage.num_shards)]
        for written in upstream:
            for part, run in written:
                runs[part].append(run)
        return [(j, ShuffleInput(tuple(r))) for j, r in enumerate(runs)]


@dataclass(frozen=True)
class Join:
    """Merges the stage's stream (sorted by key) with the same shard of `side`, the last stage of
    the right dataset, run inside this task; `slot` is this join's place among the stage's
    joins (JoinInput.sides)."""

    op: Any  # JoinOp
    side: Stage
    slot: int = 0

    @property
    def entries(self) -> tuple:
        return (self.op,)


class ShuffleInput(NamedTuple):
    """A shard after a shuffle: the sorted runs (zephyr.shuffle.runs.Run) it merges."""

    runs: tuple

    @property
    def input(self) -> None:
        return None  # a shuffled shard has no source item

    def records(self) -> tuple:
        return ()  # the Reduce step reads the runs itself


class JoinInput(NamedTuple):
    """A shard of a stage with Join steps: its own input and, per join, the right side's."""

    main: Any
    sides: tuple

    input = property(operator.attrgetter("main.input"))
    runs = property(operator.attrgetter("main.runs"))  # a Reduce stage's own runs

    def records(self) -> Any:
        return self.main.records()


@dataclass(frozen=True, repr=False)
class ScatterStage(Stage):
    """A stage ending in a Scatter: each shard yields where its runs are ((partition, Run)
    pairs), which the driver fetches and hands to the next stage's shards."""

    emits_records: ClassVar[bool] = False
    scatters: ClassVar[bool] = True
