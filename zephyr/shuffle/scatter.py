"""The map side of a shuffle: a Scatter step's kernel. Each record is encoded once (pickle: every
Python value comes back as it was), routed by a stable hash of its key to an output shard, and
buffered; when the buffer reaches the task's budget (zephyr.shuffle.scratch) it is sorted by key
and written as one spill file of runs. All the shards of one task share the buffer (tiny shards
packed into a task make a few runs, not one file each); when the task ends it writes the rest and
returns (output shard, Run) pairs. No Dask."""

from __future__ import annotations

import itertools
import operator
import pickle
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from zephyr.op_kernels import NO_RECORD, ShardInfo, user_failure
from zephyr.shuffle.keys import key_bytes
from zephyr.shuffle.runs import sort_entries, write_spill
from zephyr.shuffle.scratch import block_bytes, buffer_bytes
from zephyr.shuffle.steps import Scatter

# What one buffered record costs besides its encoded bytes and its key's bytes: the entry tuple,
# the bytes object, the key object and a list slot.
ENTRY_OVERHEAD = 150
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


class Spiller:
    """One task's buffers, a list of (sort key, payload) entries per output shard that has any,
    and a deduplicate's seen-set, shared by the shards the task runs (in order)."""

    def __init__(self, step: Scatter, shard: int):
        self.step = step
        self.buffers: defaultdict[int, list] = defaultdict(list)
        self.limit = buffer_bytes(step.budget)
        self.block = block_bytes(self.limit)
        self.used = 0
        self.spills = 0
        self.base = f"{step.folder}/{shard:05d}-{uuid.uuid4().hex[:8]}"
        self.written: list = []
        self.seen: set | None = set() if step.op.distinct else None
        self.seen_bytes = 0
        self.cleared = False  # the seen-set was emptied once (it is bounded)

    @property
    def unique(self) -> bool:
        """Whether no key is buffered twice: the seen-set has held every key so far."""
        return self.seen is not None and not self.cleared

    def finish(self, info: ShardInfo) -> list:
        """Write what is buffered; the (output shard, Run) pairs of every run the task wrote."""
        try:
            self.spill()
        except Exception as e:  # keys that cannot be ordered, a combiner that raises
            raise user_failure(info, self.step.op.detail, e, NO_RECORD) from e
        return self.written

    def relieve(self) -> None:
        """The buffer is full: combine it where a combiner may shrink it enough, else spill."""
        if self.step.op.combiner is not None:
            self.combine()
            if self.used <= self.limit // 2:
                return
        self.spill(combined=True)

    def spill(self, combined: bool = False) -> None:
        """Write the buffered records (sorted by key in each output shard, combined where the op
        has a combiner) as one spill file."""
        if combined or self.step.op.combiner is None:
            self.sort()
        else:
            self.combine()
        if not self.buffers:
            return
        url = f"{self.base}-{self.spills}.run"
        parts = ((p, self.buffers[p]) for p in sorted(self.buffers))
        self.written.extend(write_spill(url, parts, self.block))
        self.spills += 1
        self.buffers = defaultdict(list)
        self.used = 0

    def sort(self) -> None:
        what = "keys" if self.step.op.sort_by is None else "(key, sort_by) values"
        distinct = self.step.op.distinct and not self.unique
        for p, entries in self.buffers.items():
            sort_entries(entries, what)
            if distinct and len(entries) > 1:  # the first record of each key, picked in C
                keys = list(map(_first, entries))
                firsts = itertools.chain((True,), map(operator.ne, keys[1:], keys))
                self.buffers[p] = list(itertools.compress(entries, firsts))

    def combine(self) -> None:
        """Apply the combiner to every key with more than one buffered record (found in C: only
        repeated keys cost Python work)."""
        self.sort()
        op = self.step.op
        group_key = _first if op.sort_by is None else _group_key
        used = 0
        for p, entries in self.buffers.items():
            keys = list(map(group_key, entries))
            repeats = list(
                itertools.compress(range(1, len(keys)), map(operator.eq, keys[1:], keys))
            )
            if repeats:
                out, done = [], 0
                for first, last in _spans(repeats):
                    out.extend(entries[done : first - 1])
                    out.extend(combined(op, keys[first], entries[first - 1 : last + 1]))
                    done = last + 1
                out.extend(entries[done:])
                self.buffers[p] = entries = out
            used += sum(map(len, map(_second, entries))) + len(entries) * ENTRY_OVERHEAD
        self.used = used


def _spans(indexes: list[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive `indexes`."""
    first = last = indexes[0]
    for i in indexes[1:]:
        if i != last + 1:
            yield first, last
            first = i
        last = i
    yield first, last


def _group_key(entry: tuple) -> Any:
    return entry[0][0]


def combined(op: Any, key: Any, items: Iterable) -> list:
    """The combiner's records for `key` in place of `items` ((sort key, payload) entries, read
    once), encoded as entries again."""
    records = op.combiner(key, (pickle.loads(payload) for _, payload in items))
    out = []
    for record in records:
        sort_key = key if op.sort_by is None else (key, op.sort_by(record))
        out.append((sort_key, pickle.dumps(record, protocol=5)))
    return out


def scatter(it: Iterator, state: dict, spiller: Spiller) -> Iterator:
    """Route and buffer the shard's records into the task's `spiller` (spilling when it is
    full); yields nothing: the task's runs come from `Spiller.finish` when all its shards ran."""
    op = spiller.step.op
    key_fn, sort_by, n = op.key, op.sort_by, spiller.step.partitions
    buffers, limit, used = spiller.buffers, spiller.limit, spiller.used
    seen, seen_bytes, seen_limit = spiller.seen, spiller.seen_bytes, spiller.limit // 4
    dumps, crc = pickle.dumps, zlib.crc32
    try:
        for record in it:
            state["record"] = record
            key = key_fn(record)
            raw = key.encode("utf-8", "surrogatepass") if type(key) is str else key_bytes(key)
            if seen is not None:  # deduplicate: the task's repeats never leave it
                try:
                    if key in seen:
                        continue
                    seen.add(key)
                    seen_bytes += len(raw) + ENTRY_OVERHEAD
                    if seen_bytes > seen_limit:  # bounded: repeats further apart meet in the merge
                        seen.clear()
                        seen_bytes, spiller.cleared = 0, True
                except TypeError:  # an unhashable key: the merge alone drops its repeats
                    seen = spiller.seen = None
            payload = dumps(record, 5)
            entry = (key if sort_by is None else (key, sort_by(record)), payload)
            buffers[crc(raw) % n].append(entry)
            used += len(payload) + len(raw) + ENTRY_OVERHEAD
            if used > limit:
                state["record"] = NO_RECORD  # a failure now is the combiner's or the keys' order
                spiller.used = used
                spiller.relieve()
                buffers, used = spiller.buffers, spiller.used
    finally:
        spiller.used, spiller.seen_bytes = used, seen_bytes
    state["record"] = NO_RECORD
    yield from ()
