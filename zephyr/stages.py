"""The physical plan's nouns: the steps one task runs (Map, Write, Nested), the typed stages built
from them (MapStage, WriteStage, NestedStage) and the typed input of each shard (SourceItem,
ReshardSlices). Pure data: no Dask, no I/O; `zephyr.plan` builds these, `zephyr.kernels` runs them.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

from zephyr.ops import WriteOp
from zephyr.paths import QuarantineTarget

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


# -- steps: what a task does to a shard's stream, in order. Each kind has its kernel
# (zephyr.kernels.STEP_KERNELS). `entries` are what the step adds to its stage's `ops`: the
# logical ops a person reads in plans, and that skipped-record counts are keyed by.
@dataclass(frozen=True)
class Map:
    """Record and shard ops (map, flat_map, filter, map_shard, window, take_per_shard) fused into
    one chain of generators over the shard's records."""

    ops: tuple

    @property
    def entries(self) -> tuple:
        return self.ops


@dataclass(frozen=True)
class Write:
    """Writes the shard's records to one file named by the op's pattern; the shard then yields
    that path. Runs in the same task as the steps before it."""

    op: WriteOp

    @property
    def entries(self) -> tuple:
        return (self.op,)


@dataclass(frozen=True)
class Nested:
    """Ops run on another backend from inside a parent shard task, one inner shard per record
    (`stage` is what that backend runs)."""

    backend: Any
    ops: tuple

    @property
    def entries(self) -> tuple:
        return (self,)

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

    @property
    def stage(self) -> NestedStage:
        return NestedStage(0, (Map(self.ops),), -1, None, label=self.label)


# Shuffles add Scatter, Reduce and Join (zephyr.shuffle.steps): a ScatterStage ends in a Scatter,
# and the stage after it starts with a Reduce, whose `shard_inputs` makes that stage's inputs.


# -- shard inputs: what the driver hands a task for each shard. NamedTuples, not dataclasses:
# Dask finds the upstream futures inside a NamedTuple (and rebuilds it on the worker), not inside
# a dataclass.
class SourceItem(NamedTuple):
    """A shard of the first stage: one source item (a file path or a list element)."""

    item: Any

    # What `ShardInfo.input` shows and `{basename}` is taken from: the item itself (read by a C
    # getter: this runs once per shard).
    input = property(operator.itemgetter(0))

    def records(self) -> tuple:
        return (self.item,)


class ReshardSlices(NamedTuple):
    """A shard after a reshard: (upstream result, start, stop) slices of kept upstream outputs,
    read in order. The upstream result is a TaskResult (a Dask future until the task runs)."""

    parts: tuple

    @property
    def input(self) -> None:
        return None  # a resharded shard has no source item

    def records(self) -> Any:
        return itertools.chain.from_iterable(
            upstream.outputs[start:stop] for upstream, start, stop in self.parts
        )


def reshard_slices(lengths: list[int], num_shards: int) -> list[list[tuple[int, int, int]]]:
    """Split the concatenation of upstream outputs (with `lengths`) into `num_shards` contiguous
    ranges.

    Returns, per output shard, (upstream_index, start, stop) slices. Shard sizes differ by at most
    one.
    """
    total = sum(lengths)
    bounds = [total * j // num_shards for j in range(num_shards + 1)]
    offsets = list(itertools.accumulate(lengths, initial=0))
    out: list[list[tuple[int, int, int]]] = []
    for j in range(num_shards):
        lo, hi = bounds[j], bounds[j + 1]
        slices = []
        for u, length in enumerate(lengths):
            start, stop = max(lo, offsets[u]), min(hi, offsets[u] + length)
            if start < stop:
                slices.append((u, start - offsets[u], stop - offsets[u]))
        out.append(slices)
    return out


# -- stages: every shard of a stage runs its `steps` fused in one task
@dataclass(frozen=True, repr=False)
class Stage:
    """One physical stage; its kind (the subclass) says what its shards produce.

    `upstream` is the index of the stage whose outputs feed this one, None for a first stage
    (its shards are the source items, `inputs`); `reshard_from` is then the number of upstream
    shards; `quarantine` is where skipped records go (None: nothing skips).
    """

    index: int
    steps: tuple
    num_shards: int
    inputs: tuple | None
    reshard_from: int | None = None
    quarantine: QuarantineTarget | None = None
    upstream: int | None = None
    writes: ClassVar[bool] = False  # whether its shards commit files (a WriteStage)
    # whether its shards' outputs are records (counted as they leave); a writer's are paths
    emits_records: ClassVar[bool] = True
    # whether its shards' outputs are runs of a shuffle (fetched, not kept on the cluster)
    scatters: ClassVar[bool] = False

    @cached_property
    def ops(self) -> tuple:
        """The stage's logical ops in order, each step's `entries` (a Nested step is one)."""
        return tuple(entry for step in self.steps for entry in step.entries)

    @property
    def _shuffled(self) -> bool:
        """Whether the stage's first step makes its inputs (a Reduce after a shuffle)."""
        return bool(self.steps) and hasattr(self.steps[0], "shard_inputs")

    @property
    def _parts(self) -> list:
        return ["reshard"] if self.reshard_from is not None and not self._shuffled else []

    @property
    def source(self) -> str:
        """Where its shards come from, as plans print it."""
        if self.reshard_from is None:
            return "source"
        how = "shuffle" if self._shuffled else "reshard"
        return f"{how} of {self.reshard_from} shards"

    @property
    def name(self) -> str:
        """The op kinds: 'reshard -> load_jsonl -> map -> write_jsonl'."""
        return " -> ".join(self._parts + [op.label for op in self.ops]) or "identity"

    @property
    def title(self) -> str:
        """The stage as logs show it, with the user's function names:
        'load_jsonl -> map(clean) -> filter(long_enough) -> write_jsonl' (`name` has the op kinds
        only). A long chain is elided in the middle."""
        return _elide(self._parts + [op.title for op in self.ops], " -> ") or "identity"

    @property
    def number(self) -> int:
        """The stage's 1-based number, as plans, logs, errors and the dashboard show it."""
        return self.index + 1

    def scope(self, run_id: str) -> str:
        """Run and stage number, 'r2.s1': how logs and the dashboard point at a stage."""
        return f"{run_id}.s{self.number}"

    def task_group(self, scope: str) -> str:
        """The Dask task-group name of this stage's tasks: 'r2.s1.load_jsonl.map(clean).write_jsonl'
        for a stage of run `scope` ('r2').

        Holds no '-' and no whitespace: Dask groups a key '<group>-<shard>-<token>' under exactly
        its text before the first '-' (dask.utils.key_split keeps a first word that starts with a
        letter whole, and stops at the shard number). At most about 150 characters.
        """
        parts = self._parts + [op.title for op in self.ops]
        return _key_safe(f"{self.scope(scope)}.{_elide(parts, '.') or 'identity'}")

    @property
    def has_nested(self) -> bool:
        return any(isinstance(step, Nested) for step in self.steps)

    def shard_inputs(self, upstream: list, lengths: list[int]) -> list[tuple[int, Any]]:
        """(shard index, input) of each shard: the source items of a first stage; the runs
        scattered to it after a shuffle (`upstream`: each upstream shard's outputs); else slices
        of the `upstream` results (kept outputs of the previous stage, with `lengths` outputs)."""
        if self._shuffled:
            return self.steps[0].shard_inputs(self, upstream)
        if self.reshard_from is None:
            return [(i, SourceItem(item)) for i, item in enumerate(self.inputs or ())]
        slices = reshard_slices(lengths, self.num_shards)
        return [
            (j, ReshardSlices(tuple((upstream[u], a, b) for u, a, b in sl)))
            for j, sl in enumerate(slices)
        ]

    def __repr__(self) -> str:
        # The dataclass repr would list every input item (thousands of paths).
        return f"<{type(self).__name__} {self.index} {self.name!r}: {self.num_shards} shards>"


@dataclass(frozen=True, repr=False)
class MapStage(Stage):
    """A stage whose shards produce records: streamed to the caller by the last stage, kept on
    the cluster as the next stage's input otherwise."""


@dataclass(frozen=True, repr=False)
class WriteStage(Stage):
    """A stage with a Write step: each shard commits one file (its quarantine file first) and
    yields its path."""

    writes: ClassVar[bool] = True
    emits_records: ClassVar[bool] = False

    @property
    def writer(self) -> WriteOp:
        """The stage's (first) writer."""
        return next(step.op for step in self.steps if isinstance(step, Write))


@dataclass(frozen=True, repr=False)
class NestedStage(Stage):
    """The ops of a Nested step, run by its backend from inside a parent shard task: one shard per
    parent record (`num_shards` is -1: not known in advance), named after the parent's step
    (`label`), skipping nothing."""

    label: str = ""

    @property
    def name(self) -> str:
        return self.label

    @property
    def title(self) -> str:
        return self.label

    def task_group(self, scope: str) -> str:
        """'r2.s1.nested[map(fetch)]': the parent stage's scope ('r2.s1'), then the ops."""
        body = "nested[" + _elide(self._parts + [op.title for op in self.ops], ",") + "]"
        return _key_safe(f"{scope}.{body}" if scope else body)
