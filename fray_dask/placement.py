"""Where a job's replica runs on Dask: a driver-side queue that submits a replica only once some
worker has its resources free, pinned to that worker.

Why not leave it to Dask: the scheduler checks a task's resource restrictions against a worker's
total resources and then places by expected start time, which ignores resources in use; a seceded
replica adds no occupancy, so a second replica can be sent to a worker whose CPU a first one holds,
and it waits there while another worker sits idle. Worse, a worker starts resource-restricted
tasks strictly in priority order, so the waiting replica also blocks every restricted task queued
behind it on that worker (actors, zephyr stages). The free resources are read on the scheduler
(`WorkerState.used_resources`), which counts every client's tasks.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("fray_dask")

# How often queued replicas are reconsidered without a wake-up (other drivers' tasks finishing,
# workers joining).
POLL_SECONDS = 0.5


def usage(client_id: str, dask_scheduler: Any = None) -> dict[str, tuple[dict, dict]]:
    """Run on the scheduler (`client.run_on_scheduler`): for each running worker, its total
    resources and those held by tasks of *other* clients (this client's own are tracked by the
    dispatcher itself)."""
    out = {}
    for ws in dask_scheduler.running:
        others = dict(ws.used_resources)
        for ts in ws.processing:
            if ts.resource_restrictions and any(
                cs.client_key == client_id for cs in ts.who_wants or ()
            ):
                for name, amount in ts.resource_restrictions.items():
                    others[name] = others.get(name, 0) - amount
        out[ws.address] = (dict(ws.resources), others)
    return out


def actor_hosts(dask_scheduler: Any = None) -> dict[str, tuple[dict[str, float], int]]:
    """Run on the scheduler: each running worker's total resources and how many actors it holds."""
    return {ws.address: (dict(ws.resources), len(ws.actors)) for ws in dask_scheduler.running}


def fits(offer: dict[str, float], needed: dict[str, float]) -> bool:
    return all(name in offer and offer[name] >= amount for name, amount in needed.items())


def choose(free: dict[str, dict[str, float]], needed: dict[str, float]) -> str | None:
    """The worker with the most free CPU (then memory) among those that fit, or None."""
    candidates = [addr for addr, offer in free.items() if fits(offer, needed)]
    if not candidates:
        return None
    return max(candidates, key=lambda a: (free[a].get("CPU", 0), free[a].get("MEMORY", 0), a))


@dataclass
class Pending:
    """A replica waiting for a worker; `submit(worker)` sends it there."""

    key: str
    needed: dict[str, float]
    submit: Callable[[str], None]
    cancelled: Callable[[], bool]


@dataclass
class Dispatcher:
    """Submits queued replicas as workers free up. One thread per DaskCluster; it wakes when a
    replica is queued or ends, and every POLL_SECONDS.

    Free resources = a worker's total - what other clients' tasks hold (read from the scheduler
    at most every POLL_SECONDS) - what this driver's submitted, unfinished replicas hold (tracked
    here). A replica ending frees its share at once, without a round trip to the scheduler.
    """

    read_usage: Callable[[], dict[str, tuple[dict, dict]]]
    queue: collections.deque[Pending] = field(default_factory=collections.deque)
    ours: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False
    thread: threading.Thread | None = None
    _usage: dict[str, tuple[dict, dict]] = field(default_factory=dict)
    _read_at: float = float("-inf")

    def put(self, item: Pending) -> None:
        with self.cond:
            self.queue.append(item)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="fray-dispatch", daemon=True)
                self.thread.start()
            self.cond.notify()

    def release(self, key: str) -> None:
        """The replica submitted as `key` ended: its resources are free again."""
        with self.cond:
            if self.ours.pop(key, None) is not None:
                self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.queue.clear()
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.queue:
                    self.cond.wait()
                if self.closed:
                    return
            try:
                self._round()
            except Exception as e:  # the scheduler is unreachable: retry, the jobs stay pending
                logger.debug("placement round failed: %s", e)
            with self.cond:
                if not self.closed and self.queue:
                    self.cond.wait(timeout=POLL_SECONDS)

    def _free(self) -> dict[str, dict[str, float]]:
        if time.monotonic() - self._read_at > POLL_SECONDS:
            self._usage = self.read_usage()
            self._read_at = time.monotonic()
        free = {
            addr: {name: total - others.get(name, 0) for name, total in resources.items()}
            for addr, (resources, others) in self._usage.items()
        }
        for worker, needed in self.ours.values():
            if worker in free:
                for name, amount in needed.items():
                    free[worker][name] = free[worker].get(name, 0) - amount
        return free

    def _round(self) -> None:
        free = self._free()
        with self.cond:
            waiting: collections.deque[Pending] = collections.deque()
            placed = []
            unfit: set[frozenset] = set()  # shapes that fit nowhere this round
            while self.queue:
                item = self.queue.popleft()
                if item.cancelled():
                    continue
                shape = frozenset(item.needed.items())
                worker = None if shape in unfit else choose(free, item.needed)
                if worker is None:
                    unfit.add(shape)
                    waiting.append(item)  # a smaller request behind it may still fit
                    continue
                for name, amount in item.needed.items():
                    free[worker][name] -= amount
                self.ours[item.key] = (worker, item.needed)
                placed.append((item, worker))
            self.queue = waiting
        for item, worker in placed:
            try:
                item.submit(worker)
            except Exception:  # the client is closing: nothing will run it
                self.release(item.key)
