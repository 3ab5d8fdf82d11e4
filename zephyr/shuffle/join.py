"""The merge join of two streams sorted by key (a sorted_merge_join's shard): one pass over
each side, holding only the right side's records of the current key. A key that goes down on
either side is an error, never a wrong join. No Dask."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from zephyr.shuffle.keys import KeyOrderError, unorderable

_END = object()


class NotSortedError(ValueError):
    """A side of a sorted_merge_join is not sorted by its key."""


def _check_order(side: str, previous: Any, key: Any) -> None:
    try:
        if key < previous:
            raise NotSortedError(
                f"the {side} side is not sorted by its key ({key!r} comes after {previous!r}), "
                "and sorted_merge_join needs both sides sorted: produce each with group_by on "
                "the join key and the same num_output_shards"
            )
    except TypeError:
        raise unorderable([previous, key], f"{side} keys") from None


def merge_join(
    left: Iterator,
    right: Iterator,
    left_key: Callable,
    right_key: Callable,
    combiner: Callable,
    how: str,
    state: dict,
) -> Iterator:
    """combiner(l, r) for each pair of records with equal keys (all pairs for repeated keys), in
    the left's order; with how="left", combiner(l, None) for a left record without a match."""
    right = iter(right)
    r = next(right, _END)
    rk = right_key(r) if r is not _END else None
    group_key: Any = _END
    group: list = []
    previous: Any = _END
    for record in left:
        state["record"] = record
        key = left_key(record)
        if previous is not _END and key != previous:
            _check_order("left", previous, key)
        previous = key
        if group_key is _END or group_key != key:
            group_key, group = key, []
            try:
                while r is not _END and rk < key:  # right records no left record matches
                    r, rk = _advance(right, right_key, rk)
                while r is not _END and rk == key:
                    group.append(r)
                    r, rk = _advance(right, right_key, rk)
            except TypeError as e:
                if isinstance(e, KeyOrderError):
                    raise
                raise unorderable([key, rk], "join keys") from None
        if group:
            for match in group:
                yield combiner(record, match)
        elif how == "left":
            yield combiner(record, None)


def _advance(right: Iterator, right_key: Callable, previous: Any) -> tuple[Any, Any]:
    r = next(right, _END)
    if r is _END:
        return r, None
    key = right_key(r)
    if key != previous:
        _check_order("right", previous, key)
    return r, key
