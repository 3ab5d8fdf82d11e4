"""The reduce side of a shuffle: a Reduce step's kernel. A shard k-way merges the sorted runs
scattered to it (in passes through its scratch folder when there are more than it may read at
once), then calls the reducer once per key with an iterator over that key's records, decoded
from the runs as the reducer pulls them: a key with more records than fit in memory is still
reduced. A deduplicate keeps each key's first record and decodes no other. No Dask."""

from __future__ import annotations

import itertools
import operator
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

from zephyr.errors import short_repr
from zephyr.op_kernels import NO_RECORD, ShardInfo, user_failure
from zephyr.shuffle.runs import Run, merged, write_spill
from zephyr.shuffle.scatter import combined
from zephyr.shuffle.scratch import block_bytes, buffer_bytes, fan_in
from zephyr.shuffle.steps import Reduce

_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


def _group_key(entry: tuple) -> Any:
    return entry[0][0]


def merged_entries(runs: tuple, step: Reduce, shard: int) -> Iterator[tuple[Any, bytes]]:
    """The entries of `runs` in key order (lazily: nothing is read before the first is asked
    for); more runs than the task may read at once are first merged into fewer, `fan_in` at a
    time, keeping their order."""
    op = step.op
    what = "keys" if op.sort_by is None else "(key, sort_by) values"
    runs = list(runs)
    rounds, width = 0, 2  # any task may merge two runs at once: the budget is read for more
    if len(runs) > width:
        buffer = buffer_bytes(step.budget)
        width, block = fan_in(buffer), block_bytes(buffer)
    while len(runs) > width:
        fewer: list[Run] = []
        for i in range(0, len(runs), width):
            group = runs[i : i + width]
            if len(group) == 1:
                fewer.extend(group)
                continue
            url = f"{step.folder}/m{shard:05d}-{uuid.uuid4().hex[:8]}-{rounds}-{i // width}.run"
            ((_, run),) = write_spill(url, [(0, _folded(merged(group, what), op))], block)
            fewer.append(run)
        runs, rounds = fewer, rounds + 1
    yield from merged(runs, what)


def _folded(entries: Iterator, op: Any) -> Iterator:
    """An intermediate merge's entries, each key's first only (deduplicate) or combined."""
    if op.distinct:
        return map(next, map(_second, itertools.groupby(entries, key=_first)))
    if op.combiner is None:
        return entries
    group_key = _first if op.sort_by is None else _group_key
    return itertools.chain.from_iterable(
        _combined_group(op, key, group) for key, group in itertools.groupby(entries, key=group_key)
    )


def _combined_group(op: Any, key: Any, group: Iterator) -> list:
    items = list(itertools.islice(group, 2))
    if len(items) < 2:
        return items
    return combined(op, key, itertools.chain(items, group))


def reduce_groups(entries: Iterator, state: dict, step: Reduce, info: ShardInfo) -> Iterator[Any]:
    """The reducer's values, key by key (a deduplicate: each key's first record)."""
    op = step.op
    loads = pickle.loads
    if op.distinct:  # each group's first entry, decoded; the rest are never decoded
        firsts = map(next, map(_second, itertools.groupby(entries, key=_first)))
        yield from map(loads, map(_second, firsts))
        return
    group_key = _first if op.sort_by is None else _group_key
    reducer = op.reducer
    for key, group in itertools.groupby(entries, key=group_key):
        try:
            out = reducer(key, map(loads, map(_second, group)))
            if isinstance(out, Iterator):
                yield from out
            else:
                yield out
        except Exception as e:
            tail = f"; key: {short_repr(key)}"
            raise user_failure(info, op.detail, e, NO_RECORD, tail=tail) from e
