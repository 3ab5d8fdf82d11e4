"""Where a run's shuffle data goes and how much of it a task may hold in memory.

Scratch: the op's `scratch=`, else the backend's, else $ZEPHYR_SCRATCH, else a folder in this
machine's temporary directory (a DaskBackend refuses that default when its workers run on other
machines: they would not see each other's runs). Each run writes under its own folder there,
removed when the run ends, whether it succeeded or not.

Memory: a task's budget is the backend's `memory` setting (the MEMORY resource each task claims),
else the Dask workers' memory limit divided by their threads, else (SyncBackend, ThreadBackend)
this machine's memory divided by twice `max_parallelism` (the CPU count when unset). A scatter
task buffers at most half of what is left of the budget once its process's own memory is counted
(at least MIN_BUFFER), then spills a sorted run; a reduce task reads each run a block at a time
and merges at most as many runs at once as blocks fit in that buffer, in passes when there are
more.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

import psutil

from zephyr.shuffle.runs import BLOCK_BYTES, filesystem

SCRATCH_ENV = "ZEPHYR_SCRATCH"
MIN_BUFFER = 4 << 20
MAX_FAN_IN = 256  # runs merged at once, however large the buffer (open files)


def default_root() -> str:
    """$ZEPHYR_SCRATCH, else a folder in this machine's temporary directory."""
    return os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), "zephyr-scratch")


def run_folder(root: str, run_id: str) -> str:
    """A fresh folder for one run's shuffles under `root`."""
    return f"{root.rstrip('/')}/{run_id}-{uuid.uuid4().hex[:12]}"


def remove(folder: str) -> None:
    """Delete `folder` and everything in it (nothing if it does not exist)."""
    fs, path = filesystem(folder)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def local_budget(memory: int | None, threads: int) -> int:
    """A task's memory budget on an in-process backend with `threads` threads."""
    if memory:
        return memory
    return psutil.virtual_memory().total // (2 * max(1, threads))


def worker_budget(memory: int | None, workers: list[dict]) -> int | None:
    """A task's memory budget on Dask workers (their info dicts): the `memory` setting, else the
    smallest memory limit per thread; None if no worker has a limit."""
    if memory:
        return memory
    limits = [
        w["memory_limit"] / max(1, w.get("nthreads", 1)) for w in workers if w.get("memory_limit")
    ]
    return int(min(limits)) if limits else None


def buffer_bytes(budget: int) -> int:
    """What a task may buffer, in this process now: half of `budget` (set on every shuffle step
    when a backend starts the run) less the process's memory."""
    used = psutil.Process().memory_info().rss
    return max(MIN_BUFFER, (budget - used) // 2)


def block_bytes(buffer: int) -> int:
    """The size of a run's blocks for a task that may buffer `buffer` bytes."""
    return max(64 << 10, min(BLOCK_BYTES, buffer // 64))


def fan_in(buffer: int) -> int:
    """How many runs a reduce task merges at once with `buffer` bytes (a decoded block takes
    about twice its encoded size)."""
    return max(2, min(MAX_FAN_IN, buffer // (2 * block_bytes(buffer))))
