"""The logical shuffle ops of a Dataset (group_by, deduplicate, sorted_merge_join): frozen
dataclasses, as zephyr.ops. Pure data: the planner turns them into a Scatter and a Reduce step
(zephyr.shuffle.steps), or a Join step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from zephyr.ops import callable_name


def _names(**fns: Callable | None) -> str:
    return ", ".join(f"{name}={callable_name(fn)}" for name, fn in fns.items() if fn is not None)


@dataclass(frozen=True)
class GroupByOp:
    """Route records by `key(record)` to `num_output_shards` shards (None: as many as the stage
    has) and call `reducer(key, items)` once per key, keys in sorted order within each shard."""

    key: Callable
    reducer: Callable
    sort_by: Callable | None = None
    num_output_shards: int | None = None
    combiner: Callable | None = None
    scratch: str | None = None
    backend: Any = None
    distinct: ClassVar[bool] = False  # keeps every record (deduplicate keeps one per key)
    per_record: ClassVar[bool] = (
        True  # its functions see one record: failures name where it was read
    )

    @property
    def label(self) -> str:
        return "group_by"

    @property
    def detail(self) -> str:
        shards = f", num_output_shards={self.num_output_shards}" if self.num_output_shards else ""
        fns = _names(
            key=self.key, reducer=self.reducer, sort_by=self.sort_by, combiner=self.combiner
        )
        return f"group_by({fns}{shards})"


@dataclass(frozen=True)
class DeduplicateOp:
    """Keep the first record of each `key(record)` in the dataset's order."""

    key: Callable
    num_output_shards: int | None = None
    scratch: str | None = None
    backend: Any = None
    distinct: ClassVar[bool] = True
    per_record: ClassVar[bool] = True
    sort_by: ClassVar[None] = None
    combiner: ClassVar[None] = None

    @property
    def label(self) -> str:
        return "deduplicate"

    @property
    def detail(self) -> str:
        shards = f", num_output_shards={self.num_output_shards}" if self.num_output_shards else ""
        return f"deduplicate(key={callable_name(self.key)}{shards})"


def merge_records(left: Any, right: Any) -> Any:
    """sorted_merge_join's default combiner: the two dicts merged (the right's fields win), or the
    left record alone (copied) when the right is None (how="left" without a match)."""
    if right is None and isinstance(left, dict):
        return dict(left)
    if isinstance(left, dict) and isinstance(right, dict):
        return {**left, **right}
    raise TypeError(
        "the default combiner of sorted_merge_join merges two dicts, got "
        f"{type(left).__name__} and {type(right).__name__}; pass combiner=fn(left, right) -> "
        "record for other records"
    )


@dataclass(frozen=True)
class JoinOp:
    """Join shard i of this dataset with shard i of `right` (a Dataset), both sorted by key."""

    right: Any
    left_key: Callable
    right_key: Callable
    combiner: Callable = merge_records
    how: str = "inner"
    backend: Any = None
    per_record: ClassVar[bool] = True

    @property
    def label(self) -> str:
        return "sorted_merge_join"

    @property
    def title(self) -> str:
        return f"sorted_merge_join({self.how})"

    @property
    def detail(self) -> str:
        fns = _names(left_key=self.left_key, right_key=self.right_key, combiner=self.combiner)
        return f"sorted_merge_join({fns}, how={self.how!r})"
