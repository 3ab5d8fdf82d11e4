"""How the driver loop packs shard specs into tasks: sized to the shards' measured cost, so tiny
shards share a task and slow ones run alone. Pure: no Dask, no I/O; the clock is injectable."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable

# Packed tasks aim at about this much work each: large against Dask's few milliseconds per task,
# small against a stage's length.
TARGET_TASK_SECONDS = 0.25


class Packer:
    """Draws the batches of shard specs that become tasks, sized to the shards' cost.

    The first tasks of a stage run `first` shards each. As tasks finish, the stage's rate (shards
    finished per second since its first task) says what one shard costs, and later tasks are sized
    to about TARGET_TASK_SECONDS of work per slot: tiny shards share a task (per-task overhead is
    paid per batch, not per record), slow shards run alone. A task never takes more than `limit`
    shards, or so many that fewer than two tasks per slot would remain (the stage's tail stays
    balanced). Growth is at most 8x per step, as a rate measured on small batches is dominated by
    overhead.
    """

    def __init__(
        self,
        specs: Iterable,
        first: int,
        limit: int = 1,
        slots: int = 1,
        total: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock
        self._specs = iter(specs)
        self._size = max(1, first)
        self._limit = max(self._size, limit)
        self._slots = max(1, slots)
        self._left = total
        self._finished = 0
        self._t0: float | None = None

    def take(self) -> list | None:
        """The next batch of specs, or None when all are taken."""
        if self._t0 is None:
            self._t0 = self._clock()
        batch = list(itertools.islice(self._specs, self._size))
        if self._left is not None:
            self._left -= len(batch)
        return batch or None

    def observe(self, finished: int) -> None:
        """Record that `finished` more shards have finished; resize the next batches."""
        self._finished += finished
        if self._limit <= 1 or self._left is None or self._t0 is None or not finished:
            return
        elapsed = max(self._clock() - self._t0, 1e-6)
        ideal = int(TARGET_TASK_SECONDS * self._finished / elapsed / self._slots)
        balanced = math.ceil(self._left / (2 * self._slots))
        self._size = max(1, min(ideal, 8 * self._size, balanced, self._limit))
