"""One DaskBackend run's calls to its cluster: every wait has a deadline, the stall rule runs
whenever one passes, a lost scheduler becomes ClusterLost, and finished results are fetched
together. The driver side of the Dask backend, with zephyr.backends.dask (which submits).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

import distributed
from distributed import Client

from fray_dask.connection import Connection
from zephyr.backends.base import ClusterLost, ClusterStalled, TaskLost
from zephyr.backends.dask_board import StageBoard
from zephyr.backends.dask_checks import stall_reason
from zephyr.backends.dask_tasks import cluster_view, result_lengths
from zephyr.errors import ZephyrError
from zephyr.kernels import KeptCounts, TaskResult


@dataclass
class DaskRun:
    """Per-execution state: the connection to submit through and each stage's payload; `scope`
    names its task groups (Stage.task_group): the run id, or a nested stage's parent stage."""

    conn: Connection
    token: str
    resources: dict | None
    payloads: dict
    threads: int
    no_worker_timeout: float
    scope: str = ""
    board: StageBoard | None = None  # reports to the dashboard's Zephyr page
    stalled_since: float | None = None  # when tasks were first seen that no worker can run
    counts: deque = field(default_factory=deque)  # live counts of kept results (dask_counts)

    @property
    def client(self) -> Client:
        return self.conn.client

    @property
    def poll(self) -> float:
        """Seconds between looks at the cluster while waiting (the stall rule runs at each)."""
        return min(5.0, max(0.2, self.no_worker_timeout / 4))

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call the client; a failure caused by a lost scheduler becomes ClusterLost."""
        try:
            return fn(*args, **kwargs)
        except (ClusterLost, ClusterStalled, TaskLost, ZephyrError, TimeoutError):
            raise  # a deadline passing is the caller's to handle (TimeoutError is an OSError)
        except Exception as e:
            self.raise_if_lost(e)
            raise

    def raise_if_lost(self, error: BaseException | None) -> None:
        """Raise ClusterLost if the client has lost its scheduler (after `error`, if any)."""
        client = self.client
        comm_error = isinstance(error, (distributed.comm.CommClosedError, OSError)) and not (
            isinstance(error, TimeoutError)
        )
        if client.status == "running" and not comm_error:
            return
        address = client.scheduler.address if client.scheduler else self.conn.address
        cause = f" ({type(error).__name__})" if error is not None else ""
        if self.conn.owns and self.conn.cluster is None:
            self.conn.close(timeout=1)  # stop reconnecting; the next execute connects afresh
        raise ClusterLost(f"lost the connection to the Dask scheduler at {address}{cause}")

    def wait_any(self, handles: list) -> None:
        # Dask keeps a task that no worker can run waiting forever, silently (queued with no
        # workers at all, no-worker when no worker has its resources): wake up now and then to
        # apply the stall rule.
        while True:
            try:
                with self.client.as_current():
                    distributed.wait(handles, timeout=self.poll, return_when="FIRST_COMPLETED")
                return
            except TimeoutError:
                self.check_stalled(handles)
            except (CancelledError, distributed.comm.CommClosedError, OSError) as e:
                self.raise_if_lost(e)  # cancelled futures or a closed comm
                return  # the outcomes say which tasks were cancelled (then resubmitted)

    def check_stalled(self, handles: list) -> None:
        """Raise ClusterStalled once the tasks have waited `no_worker_timeout` s with no worker
        able to run them (no workers at all, or none with their resources)."""
        view = self.call(self.client.run_on_scheduler, cluster_view, [h.key for h in handles])
        workers = lambda: self.call(self.conn.workers)  # noqa: E731 - asked only if needed
        reason = stall_reason(view, self.resources, workers, self.client.scheduler.address)
        if reason is None:
            self.stalled_since = None
            return
        now = time.monotonic()
        if self.stalled_since is None:
            self.stalled_since = now
        elif now - self.stalled_since >= self.no_worker_timeout:
            raise ClusterStalled(
                f"no worker has been able to run them for {now - self.stalled_since:.0f} s (the "
                f"rule: no_worker_timeout={self.no_worker_timeout:g} s): {reason}"
            )

    def outcomes(self, handles: list, keep: bool) -> list:
        values: list = [None] * len(handles)
        fetch: list[int] = []
        for i, handle in enumerate(handles):
            status = handle.status
            if status == "finished":
                # Future.type is reported with the task's completion: a kept result stays on the
                # cluster unless it is a failure (or its type is unknown) and must be read.
                if keep and handle.type is TaskResult:
                    values[i] = handle
                else:
                    fetch.append(i)
            elif status == "error":
                values[i] = self.error_outcome(handle)
            else:  # cancelled (by a lost scheduler, or one that restarted) or lost with its data
                self.raise_if_lost(None)
                values[i] = TaskLost(f"task {handle.key} is {status}")
        if fetch:
            fetched = self.gather([handles[i] for i in fetch])
            for i, value in zip(fetch, fetched, strict=True):
                kept = keep and isinstance(value, TaskResult)
                values[i] = handles[i] if kept else value
        if self.board is not None:
            self.board.settled(handles, values)
        return values

    def error_outcome(self, handle: Any) -> Any:
        exc = self.call(handle.exception, timeout=self.poll)
        if isinstance(exc, distributed.scheduler.KilledWorker):
            return TaskLost(f"{type(exc).__name__}: {exc}")
        self.raise_if_lost(exc)
        raise ZephyrError(
            f"Dask task {handle.key} failed outside user code: {type(exc).__name__}: {exc}"
        ) from exc

    def gather(self, futures: list) -> list:
        """The values of finished `futures`, fetched together. A result whose worker died before it
        was fetched is recomputed by Dask; meanwhile the stall rule applies."""
        client = self.client
        while True:
            try:
                # Client.gather has no deadline of its own; its coroutine with one is the same call.
                return client.sync(client._gather, futures, callback_timeout=self.poll)
            except TimeoutError:
                self.check_stalled(futures)
            except Exception as e:
                self.raise_if_lost(e)
                return [self.gather_one(f) for f in futures]

    def gather_one(self, future: Any) -> Any:
        """One future's outcome after a batch fetch failed (a task failed or was lost meanwhile)."""
        self.wait_any([future])
        if future.status == "finished":
            try:
                return self.call(future.result, timeout=self.poll)
            except TimeoutError:  # lost again between the wait and the fetch
                return TaskLost(f"task {future.key}: its result was lost before it was fetched")
        if future.status == "error":
            return self.error_outcome(future)
        self.raise_if_lost(None)
        return TaskLost(f"task {future.key} is {future.status}")

    def lengths(self, refs: list) -> list[KeptCounts]:
        """The counts of kept task results, computed where they are (not fetched)."""
        keys = [f"{ref.key}-lengths" for ref in refs]  # in the stage's task group
        futures = self.call(self.client.map, result_lengths, refs, key=keys, pure=False)
        lengths = self.gather(futures)
        lost = [x for x in lengths if not isinstance(x, tuple)]
        if lost:
            raise ClusterStalled(f"{len(lost)} of them were lost with their workers ({lost[0]})")
        return lengths
