"""The Dataset methods that move records between shards by key or gather them: group_by,
deduplicate, sorted_merge_join, reduce, count, and take (which runs). A mixin of
zephyr.dataset.Dataset; the ops are in zephyr.shuffle.ops and zephyr.ops."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from zephyr.ops import ReshardOp, ShardReduceOp
from zephyr.shuffle.ops import DeduplicateOp, GroupByOp, JoinOp, merge_records


def _fn(value: object, method: str, name: str, optional: bool = False) -> None:
    if (value is None and optional) or callable(value):
        return
    raise TypeError(
        f"Dataset.{method} takes a function as {name}, got {type(value).__name__} {value!r}"
    )


def _shards(value: object, method: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(
            f"Dataset.{method} takes num_output_shards as an integer >= 1 (or None: as many as "
            f"the dataset has), got {value!r}"
        )


def _scratch(value: object, method: str) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise TypeError(
            f"Dataset.{method} takes scratch as a folder path or URL string (e.g. "
            f"'gs://bucket/tmp'), got {value!r}"
        )


def count_records(records: Iterable) -> int:
    """How many records `records` yields (count()'s local reducer)."""
    return sum(1 for _ in records)


class ShuffleMethods:
    """group_by, deduplicate, sorted_merge_join, reduce, count and take (see the README's
    "Shuffles" for the memory rule and scratch location)."""

    __slots__ = ()

    def group_by(
        self,
        key: Callable[[Any], Any],
        *,
        reducer: Callable[[Any, Iterator], Any],
        sort_by: Callable[[Any], Any] | None = None,
        num_output_shards: int | None = None,
        combiner: Callable[[Any, Iterator], Iterable] | None = None,
        scratch: str | None = None,
    ) -> Any:
        """Route every record by `key(record)` to one of `num_output_shards` shards (default: as
        many as the dataset has there) and call `reducer(key, items)` once per key, `items` an
        iterator over that key's records (ordered by `sort_by(record)` when given). The reducer
        returns one value, or an iterator (a generator) whose values are all kept. Within an
        output shard, keys come out in sorted order.

        `combiner(key, items) -> iterable of records of the same shape` pre-aggregates on the map
        side before records leave their shard and again when runs are merged in passes; it must
        be associative (count: sum partial counts). Keys must hash the same in every process
        (str, bytes, numbers, tuples of those, ...: not sets) and be comparable with each other.
        Memory is bounded: records beyond a task's budget spill to sorted runs under `scratch`
        (default: the backend's), and a key's items stream from those runs.
        """
        _fn(key, "group_by", "key")
        _fn(reducer, "group_by", "reducer")
        _fn(sort_by, "group_by", "sort_by", optional=True)
        _fn(combiner, "group_by", "combiner", optional=True)
        _shards(num_output_shards, "group_by")
        _scratch(scratch, "group_by")
        op = GroupByOp(key, reducer, sort_by, num_output_shards, combiner, scratch)
        return self._with(op)

    def deduplicate(
        self,
        key: Callable[[Any], Any],
        num_output_shards: int | None = None,
        *,
        scratch: str | None = None,
    ) -> Any:
        """Keep one record per `key(record)`: the first in the dataset's order (shard by shard,
        record by record), so every run of the same input keeps the same records. Each shard
        drops its own repeats first, then records shuffle by key as in `group_by`; output
        shards hold their records in key order."""
        _fn(key, "deduplicate", "key")
        _shards(num_output_shards, "deduplicate")
        _scratch(scratch, "deduplicate")
        return self._with(DeduplicateOp(key, num_output_shards, scratch))

    def sorted_merge_join(
        self,
        right: Any,
        left_key: Callable[[Any], Any],
        right_key: Callable[[Any], Any],
        combiner: Callable[[Any, Any], Any] | None = None,
        how: str = "inner",
    ) -> Any:
        """Join shard i of this dataset with shard i of `right`, both sorted by their keys with
        the same number of shards (as `group_by` on the join key with the same
        num_output_shards gives). Each pair of records with equal keys gives `combiner(left,
        right)` (default: the two dicts merged, the right's fields winning); a key repeated on
        both sides gives every pair. `how="left"` also keeps left records without a match, as
        `combiner(left, None)`. Different shard counts raise ValueError before any work starts;
        a side found unsorted raises an error naming the two keys."""
        if not isinstance(right, type(self)):
            raise TypeError(
                f"Dataset.sorted_merge_join takes a Dataset as right, got {type(right).__name__}"
            )
        _fn(left_key, "sorted_merge_join", "left_key")
        _fn(right_key, "sorted_merge_join", "right_key")
        _fn(combiner, "sorted_merge_join", "combiner", optional=True)
        if how not in ("inner", "left"):
            raise ValueError(f"Dataset.sorted_merge_join takes how='inner' or 'left', got {how!r}")
        op = JoinOp(right, left_key, right_key, combiner or merge_records, how)
        return self._with(op)

    def reduce(
        self,
        local_reducer: Callable[[Iterator], Any],
        global_reducer: Callable[[Iterator], Any] | None = None,
    ) -> Any:
        """A dataset of one record: `global_reducer(values)` (default: `local_reducer`), where
        `values` iterates `local_reducer(records)` of every shard in order. Every shard is
        reduced, an empty one too, and the global reducer runs once even with no shards at all
        (its iterator is then empty)."""
        _fn(local_reducer, "reduce", "local_reducer")
        _fn(global_reducer, "reduce", "global_reducer", optional=True)
        return (
            self._with(ShardReduceOp(local_reducer, "local_reduce"))
            ._with(ReshardOp(1))
            ._with(ShardReduceOp(global_reducer or local_reducer, "global_reduce"))
        )

    def count(self) -> Any:
        """A dataset of one record, the number of records: `[0]` for an empty dataset."""
        return self.reduce(count_records, sum)

    def take(self, n: int, backend: Any = None) -> list:
        """Run the dataset and return its first `n` records in shard order (fewer if it has
        fewer). The last stage's shards run in rounds (the first of one shard), each only as
        large as the records seen so far say is needed; stages before it run whole."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"Dataset.take takes an integer >= 0, got {n!r}")
        if backend is None:
            backend = self._source.backend
        if backend is None:
            from zephyr.backends.config import flow_backend

            backend = flow_backend()
        return backend.take(self, n)
