"""`max_parallelism` across a Dask cluster: each backend with a limit has one distributed.Semaphore
(named `zephyr-<backend id>`) whose leases its tasks hold while they run, wherever they run (a
top-level run, several runs at once, nested runs inside other tasks).

Worker side: a bounded cache of Semaphore objects, and `slot()` that holds a lease. Scheduler side:
`close_idle`, which the driver runs when a run ends, so semaphores of finished runs do not pile up
in the scheduler; a task that finds its semaphore closed registers it again.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import distributed

PREFIX = "zephyr-"
MAX_CACHED = 32  # Semaphore objects kept per process (each runs a lease-refresh callback)

_SEMAPHORES: OrderedDict[str, distributed.Semaphore] = OrderedDict()
_LOCK = threading.Lock()


def semaphore(name: str, leases: int) -> distributed.Semaphore:
    """This process's Semaphore object for `name` (registered with the scheduler on first use);
    the least recently used ones beyond MAX_CACHED that hold no lease are dropped."""
    with _LOCK:
        sem = _SEMAPHORES.get(name)
        if sem is None:
            sem = _SEMAPHORES[name] = distributed.Semaphore(max_leases=leases, name=name)
        _SEMAPHORES.move_to_end(name)
        idle = [n for n, s in _SEMAPHORES.items() if not s._leases and n != name]
        for old in idle[: max(0, len(_SEMAPHORES) - MAX_CACHED)]:
            _forget(old)
        return sem


def _forget(name: str) -> None:
    sem = _SEMAPHORES.pop(name, None)
    callback = getattr(sem, "refresh_callback", None)
    if callback is not None:
        callback.stop()


def cached() -> list[str]:
    """The semaphore names this process holds objects for (least recently used first)."""
    with _LOCK:
        return list(_SEMAPHORES)


def _acquire(sem: distributed.Semaphore) -> None:
    """One lease; while waiting for it the task secedes from the worker's thread pool, so waiting
    tasks never starve running ones of threads."""
    if not sem.acquire(timeout=0):
        distributed.secede()
        try:
            sem.acquire()
        finally:
            distributed.rejoin()


@contextlib.contextmanager
def slot(name: str | None, leases: int) -> Iterator[None]:
    """Hold one lease of the semaphore `name` (None: no limit) while the block runs."""
    if name is None:
        yield
        return
    sem = semaphore(name, leases)
    try:
        _acquire(sem)
    except RuntimeError as e:  # closed by close_idle since this object registered: register anew
        if "not known" not in str(e):
            raise
        with _LOCK:
            _forget(name)
        sem = semaphore(name, leases)
        _acquire(sem)
    try:
        yield
    finally:
        sem.release()


def close_idle(dask_scheduler: Any = None) -> list[str]:
    """On the scheduler: closes zephyr's semaphores that no task holds or waits for; returns
    their names."""
    ext = dask_scheduler.extensions["semaphores"]
    closed = []
    for name in [n for n in ext.max_leases if isinstance(n, str) and n.startswith(PREFIX)]:
        if not ext.leases.get(name) and not ext.metrics["pending"].get(name):
            ext.close(name=name)
            closed.append(name)
    return closed
