"""The cluster side of DaskBackend: what one Dask task runs (a stage over a batch of shards), the
stage payload it loads (pickled on the driver by `pickle_stage`), and the scheduler's view the
driver's stall rule reads (`cluster_view`).

Imports distributed but nothing of the driver (the max_parallelism semaphore: dask_limits). A task
returns a TaskResult, or a UserCodeFailure when user code raised: failures travel as values, so
Dask neither retries them nor logs them as a crash ("Compute Failed") on the worker; the driver
sees the value's type without fetching it (Future.type) and raises the ZephyrError. Only
infrastructure failures (a lost worker) make a task fail in Dask's eyes.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any

import cloudpickle
import distributed
from dask.utils import key_split

from fray_dask.pickling import dumps
from zephyr.backends import dask_counts
from zephyr.backends.dask_limits import slot
from zephyr.errors import UserCodeFailure, ZephyrError
from zephyr.kernels import KeptCounts, TaskResult, run_task
from zephyr.stages import Nested, SourceItem, Stage

_STAGE_CACHE: OrderedDict[str, Stage] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def pickle_stage(stage: Stage) -> bytes:
    """On the driver: the payload of `stage`'s tasks. Raises ZephyrError naming the op whose
    function cannot be pickled."""
    try:
        return dumps(stage)
    except Exception as e:
        culprit = "a function"
        for op in stage.ops:
            inner = op.ops if isinstance(op, Nested) else (op,)
            for o in inner:
                try:
                    dumps(o)
                except Exception:
                    culprit = o.detail
                    break
        raise ZephyrError(
            f"stage '{stage.name}' cannot be sent to Dask workers: {culprit} cannot be pickled "
            f"({type(e).__name__}: {e}); define it at module level and do not capture locks, "
            "open files, clients or other process-local objects"
        ) from e


def load_stage(token: str, payload: bytes) -> Stage:
    """Unpickle a stage once per worker process (tasks of a stage share the scattered payload)."""
    with _CACHE_LOCK:
        stage = _STAGE_CACHE.get(token)
        if stage is None:
            stage = cloudpickle.loads(payload)
            _STAGE_CACHE[token] = stage
            while len(_STAGE_CACHE) > 32:
                _STAGE_CACHE.popitem(last=False)
        return stage


def parent_scope() -> str:
    """Inside a zephyr task: its run and stage ('r2.s1', read from its key), which names the task
    group of a nested stage it runs; '' outside a task."""
    with contextlib.suppress(Exception):
        parts = key_split(distributed.get_worker().get_current_task()).split(".")
        if len(parts) > 2 and parts[0][1:].isdigit() and parts[1][1:].isdigit():
            return ".".join(parts[:2])
    return ""


class Opaque:
    """Hides a batch of (shard index, SourceItem) pairs from Dask, which would otherwise walk every
    element looking for futures (items hold none; ReshardSlices do and are passed as they are).

    Travels as two plain lists, the shard indexes and the items, which pickle in C; the worker
    rebuilds the pairs."""

    __slots__ = ("value",)

    def __init__(self, value: list):
        self.value = value

    def __reduce__(self) -> tuple:
        return _opaque_sources, ([i for i, _ in self.value], [spec.item for _, spec in self.value])


def _opaque_sources(indexes: list, items: list) -> Opaque:
    return Opaque([(i, SourceItem(item)) for i, item in zip(indexes, items, strict=True)])


def task_shards(shards: list) -> Any:
    """What `dask_task` is given for a batch of (shard index, input) pairs: the batch inside an
    Opaque when it holds source items only, else as it is (Dask resolves the upstream futures in
    its ReshardSlices)."""
    return Opaque(shards) if all(isinstance(s, SourceItem) for _, s in shards) else shards


def dask_task(
    payload: bytes, token: str, shards: Any, keep: bool, sem: str | None, leases: int
) -> TaskResult | UserCodeFailure:
    """Run the stage pickled in `payload` over `shards` on this worker, holding a lease of the
    semaphore `sem` if the backend caps its parallelism (`keep`: see Backend._submit)."""
    if isinstance(shards, Opaque):
        shards = shards.value
    stage = load_stage(token, payload)
    with slot(sem, leases):
        result = run_task(stage, shards, keep)
    if keep and isinstance(result, TaskResult):  # kept for the next stage, not fetched
        dask_counts.report(token, result.records_in, result.records)
    return result


def result_lengths(result: TaskResult) -> KeptCounts:
    """The counts of a kept task result: its outputs, records in and out, skipped records."""
    return KeptCounts(len(result.outputs), result.records_in, result.records, result.errors)


def cluster_view(keys: list, dask_scheduler: Any = None) -> dict:
    """On the scheduler: how many workers it has, and the states of `keys` and of their unfinished
    dependencies (a reshard's tasks wait on upstream results that may need recomputing)."""
    states = []
    for key in keys:
        ts = dask_scheduler.tasks.get(key)
        if ts is None:
            continue
        states.append(ts.state)
        states.extend(dep.state for dep in ts.dependencies if dep.state != "memory")
    return {"workers": len(dask_scheduler.workers), "states": states}
