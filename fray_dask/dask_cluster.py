"""DaskCluster: each replica of a job is a Dask task that holds the job's resources (CPU, MEMORY,
GPU, TPU) on its worker while the job's own child process runs there (fray_dask.dask_replica).

A task running for more than a second secedes from the worker's thread pool, so a job occupies
resources, not a thread: tasks the job submits itself (fray_job_ctx(), zephyr) can run on the same
worker. Log lines, start notices and outcomes travel as Dask events on one topic (the task's result
is only a fallback). Where a replica goes is decided by fray_dask.placement, not by Dask.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import distributed
from distributed import Client

from fray_dask.cluster import Cluster, JobRecord, new_job_id, replica_count
from fray_dask.connect import connect
from fray_dask.connection import CONNECT_TIMEOUT
from fray_dask.dask_replica import LOG_TOPIC, kill_job, run_replica
from fray_dask.environment import check_request
from fray_dask.placement import Dispatcher, Pending, usage
from fray_dask.process import Launch, Outcome, serialize_entrypoint
from fray_dask.resources import check_satisfiable, dask_resources
from fray_dask.types import JobId, JobRequest, JobStatus
from fray_dask.workdirs import sweep_stale_workdirs

logger = logging.getLogger("fray_dask")

# CONNECT_TIMEOUT (fray_dask.connection) is also for how long a connected scheduler may be out of
# reach before unfinished jobs fail.
# How long a finished replica's result may wait for its last log lines to arrive.
LINES_GRACE_SECONDS = 5.0

# The DaskCluster that launched each job, for routing events. A client has one handler per
# topic, and several DaskCluster objects may share the embedded cluster's client.
_DRIVERS: dict[str, DaskCluster] = {}
_SUBSCRIBED: weakref.WeakSet[Client] = weakref.WeakSet()
_DRIVERS_LOCK = threading.Lock()


def _route_event(event: tuple[float, dict[str, Any]]) -> None:
    """Runs in a client's event loop: hands a worker's event to the cluster that owns its job."""
    _, msg = event
    with _DRIVERS_LOCK:
        cluster = _DRIVERS.get(msg.get("job", ""))
    if cluster is not None:
        cluster._on_event(msg)


def _task_key(job_id: str, replica: int, attempt: int) -> str:
    return f"fray-job-{job_id}-replica-{replica}-attempt-{attempt}"


@dataclass
class _Attempt:
    """What the driver knows of a replica's current attempt (one Dask task, run_replica). Events
    naming an earlier attempt of the replica are not recorded here."""

    number: int  # 1, then one more for every retry
    future: distributed.Future | None = None  # None before submission and once it ended for good
    starts: int = 0  # times seen starting; a second start is the scheduler running it again
    lines: int = 0  # log lines received from it
    outcome: Outcome | None = None  # from its "ended" event, unless its result was too big for one


# -- driver side ------------------------------------------------------------------------------


class DaskCluster(Cluster):
    """Runs jobs on a Dask cluster: `DaskCluster()` starts (or reuses) the embedded LocalCluster,
    `DaskCluster("tcp://host:8786")` connects to a running scheduler.

    A replica waits in this driver's queue (fray_dask.placement) until some worker has its
    resources free; a request no worker could ever satisfy is refused at launch. A replica whose
    worker dies is restarted elsewhere up to `max_retries_preemption` times; one that fails, up to
    `max_retries_failure` times. A scheduler out of reach for `timeout` s fails unfinished jobs.
    """

    def __init__(self, address: str | Client | None = None, timeout: float = CONNECT_TIMEOUT):
        super().__init__()
        sweep_stale_workdirs()  # those of dead drivers and workers on this machine
        self._conn = connect(address, timeout)  # shared with every other user in this process
        self.client = self._conn.client
        self.timeout = timeout
        self.address = self.client.scheduler.address
        self.spec = f"dask?address={self.address}"
        # Each replica's current attempt, under `_lock` (the event loop and Dask's callback
        # thread both update them).
        self._attempts: dict[tuple[JobId, int], _Attempt] = {}
        self._lost_since: float | None = None
        self._lock = threading.Lock()
        self._workers_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._dispatcher = Dispatcher(lambda: self.client.run_on_scheduler(usage, self.client.id))
        with _DRIVERS_LOCK:
            if self.client not in _SUBSCRIBED:
                _SUBSCRIBED.add(self.client)
                self.client.subscribe_topic(LOG_TOPIC, _route_event)

    def __repr__(self) -> str:
        return f"DaskCluster({self.address!r}, jobs={len(self._records())})"

    @property
    def dashboard_link(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.client.dashboard_link
        return None

    # -- launching --------------------------------------------------------------------------
    def launch(self, request: JobRequest) -> JobId:
        resources = dask_resources(request.resources)
        self._require_scheduler()
        try:
            check_satisfiable(request, resources, self._workers)
        except ValueError:  # the cached list may predate a worker that just joined
            self._workers_cache = (0.0, [])
            check_satisfiable(request, resources, lambda: self._workers(wait=False))
        check_request(request, type(self).__name__, self._warned)
        payload = serialize_entrypoint(request)
        count = replica_count(request)
        record = JobRecord(new_job_id(request), request, count)
        self._register(record)
        with _DRIVERS_LOCK:
            _DRIVERS[record.job_id] = self
        for index in range(count):
            launch = Launch.of(record.job_id, request, payload, index, count, self.spec)
            self._submit(record, launch, resources, attempt=1)
        return record.job_id

    def _require_scheduler(self) -> None:
        if self.client.status != "running":
            raise ConnectionError(
                f"the Dask scheduler at {self.address} is out of reach (client "
                f"{self.client.status}); check that `dask scheduler` still runs there, then "
                "create a new DaskCluster"
            )

    def _workers(self, wait: bool = True) -> list[dict[str, Any]]:
        """The workers' info, cached for a second (launching 200 jobs asks once), waiting up to
        `timeout` s for a first worker to join (if `wait`)."""
        stamp, workers = self._workers_cache
        if workers and time.monotonic() - stamp < 1.0:
            return workers
        deadline = time.monotonic() + (self.timeout if wait else 0)
        while True:
            self._require_scheduler()
            workers = list(self.client.scheduler_info(n_workers=-1).get("workers", {}).values())
            if workers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self._workers_cache = (time.monotonic(), workers)
        return workers

    def _submit(
        self, record: JobRecord, launch: Launch, resources: dict[str, float], attempt: int
    ) -> None:
        """Queues a replica; the dispatcher submits it once a worker has `resources` free."""

        def submit(worker: str) -> None:
            # The attempt is recorded before its task exists, so no event of it finds the last
            # attempt's record instead.
            current = _Attempt(attempt)
            with self._lock:
                self._attempts[(record.job_id, launch.replica)] = current
            # Pinned loosely: if `worker` is gone by then, Dask may use any worker that fits.
            future = self.client.submit(
                run_replica,
                launch,
                attempt,
                key=key,
                resources=resources,
                workers=[worker],
                allow_other_workers=True,
                pure=False,
                retries=0,
            )
            with self._lock:
                current.future = future
            future.add_done_callback(lambda f: self._on_done(record, launch, resources, current, f))

        key = _task_key(record.job_id, launch.replica, attempt)
        cancelled = lambda: record.stop_requested or record.status.finished()  # noqa: E731
        self._dispatcher.put(Pending(key, resources, submit, cancelled))

    # -- events from workers ----------------------------------------------------------------
    def _on_event(self, msg: dict[str, Any]) -> None:
        """Runs in the client's event loop: must only record, never block."""
        with self._jobs_lock:
            record = self._jobs.get(JobId(msg["job"]))
        if record is None or (record.status.finished() and msg["kind"] != "lines"):
            return
        replica, attempt = msg["replica"], msg["attempt"]
        with self._lock:
            current = self._attempts.get((record.job_id, replica))
            if current is not None and current.number != attempt:
                current = None  # an earlier attempt's late event: only its lines still count
        if msg["kind"] == "lines":
            record.add_lines(replica, msg["lines"])
            if current is not None:
                with self._lock:
                    current.lines += len(msg["lines"])
        elif msg["kind"] == "ended":
            if current is not None and not msg["result_in_task"]:  # else _on_done reads the task
                status = JobStatus(msg["status"])
                outcome = Outcome(
                    status, msg["error"], msg["exit_code"], msg["lines"], msg["result"]
                )
                with self._lock:
                    current.outcome = outcome
            # Its process has exited: the next replica may head for this worker now (the task
            # frees the resources a moment later, before that replica can arrive).
            self._dispatcher.release(_task_key(record.job_id, replica, attempt))
        elif msg["kind"] == "started" and current is not None:
            with self._lock:
                current.starts += 1
                again = current.starts > 1
            if again:
                # The scheduler re-ran this attempt after its worker died
                # (distributed.scheduler.allowed-failures > 0): a preemption.
                record.ended(replica, Outcome(JobStatus.FAILED, "worker lost"), preempted=True)
            record.started(replica, msg["worker"])

    def _on_done(
        self,
        record: JobRecord,
        launch: Launch,
        resources: dict[str, float],
        attempt: _Attempt,
        future: distributed.Future,
    ) -> None:
        """Runs in Dask's callback thread once a replica's task ended, however it ended."""
        self._dispatcher.release(future.key)  # its resources are free again
        index = launch.replica
        preempted = False
        try:
            if future.status == "finished":
                with self._lock:
                    outcome, attempt.outcome = attempt.outcome, None
                if outcome is None:  # its event did not come first after all
                    outcome = future.result()
                self._await_lines(record.job_id, index, attempt, outcome.lines)
            elif future.status == "cancelled":
                preempted = not record.stop_requested
                outcome = Outcome(JobStatus.STOPPED if not preempted else JobStatus.FAILED)
            else:
                error = future.exception()
                preempted = isinstance(error, distributed.KilledWorker)
                message = "worker lost" if preempted else f"{type(error).__name__}: {error}"
                outcome = Outcome(JobStatus.FAILED, message)
        except Exception as e:  # the scheduler went away: the replica's fate is unknown
            outcome = Outcome(JobStatus.FAILED, f"lost contact with the Dask cluster: {e}")
        with self._lock:
            unseen = attempt.starts == 0
            attempt.starts = max(attempt.starts, 1)
        if unseen and outcome.status is not JobStatus.STOPPED:
            record.started(index, None)  # its start notice is still in flight
        if record.ended(index, outcome, preempted=preempted):
            with contextlib.suppress(Exception):
                self._submit(record, launch, resources, attempt.number + 1)
                return
            record.ended(index, Outcome(JobStatus.FAILED, "cannot resubmit: client closed"))
        with self._lock:
            attempt.future = None
        if record.has_failed_replica and record.request_stop():
            self._stop(record)
        if record.status.finished():
            self._forget(record.job_id)

    def _forget(self, job_id: JobId) -> None:
        """Drops a finished job's routing and attempts (its record, logs and info stay)."""
        with _DRIVERS_LOCK:
            _DRIVERS.pop(job_id, None)
        with self._lock:
            for key in [k for k in self._attempts if k[0] == job_id]:
                del self._attempts[key]

    def _await_lines(self, job_id: JobId, replica: int, attempt: _Attempt, expected: int) -> None:
        deadline = time.monotonic() + LINES_GRACE_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if attempt.lines >= expected:
                    return
            time.sleep(0.005)
        logger.warning("job %s replica %d: some log lines did not arrive", job_id, replica)

    def _check_health(self) -> None:
        """A scheduler out of reach for `timeout` s fails every unfinished job, instead of
        leaving waiters blocked on jobs nobody can report on."""
        if self.client.status == "running":
            self._lost_since = None
            return
        now = time.monotonic()
        if self._lost_since is None:
            self._lost_since = now
        if now - self._lost_since < self.timeout:
            return
        message = (
            f"lost contact with the Dask scheduler at {self.address} (client {self.client.status} "
            f"for {now - self._lost_since:.0f} s); the job's processes may still run on their "
            "workers. Check the scheduler, then launch the job again"
        )
        self._fail_unfinished_jobs(message)

    # -- stopping ---------------------------------------------------------------------------
    def _stop(self, record: JobRecord) -> None:
        """Kills the job's processes on every worker, then cancels replicas not yet started."""
        with contextlib.suppress(Exception):
            self.client.run(kill_job, record.job_id, on_error="ignore")
        with self._lock:
            futures = {
                i: a.future
                for (job, i), a in self._attempts.items()
                if job == record.job_id and a.future is not None
            }
        tasks = record.info().tasks
        pending = [f for i, f in futures.items() if tasks[i].status is not JobStatus.RUNNING]
        if pending:
            with contextlib.suppress(Exception):
                self.client.cancel(pending)

    def close(self) -> None:
        """Terminates running jobs; releases the connection (the client closes with its last
        user, unless it is the embedded cluster's or one the caller handed in)."""
        super().close()
        self._dispatcher.close()
        with _DRIVERS_LOCK:
            for job_id in [j for j, c in _DRIVERS.items() if c is self]:
                del _DRIVERS[job_id]
        if self._conn.release():  # this was the client's last user: it is closed now
            with _DRIVERS_LOCK:
                _SUBSCRIBED.discard(self.client)
