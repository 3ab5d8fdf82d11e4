"""The Cluster protocol (launch, poll, monitor, terminate, list_jobs, wait, result), shared by
every implementation over the JobRecord of each job (fray_dask.job_record), and the helpers they
use to create one.

No Dask import. Implementations decide where a replica runs; the retry and status rules live in
JobRecord so that every cluster applies the same ones.
"""

from __future__ import annotations

import abc
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from fray_dask import results
from fray_dask.job_record import JobRecord
from fray_dask.types import JobFailedError, JobId, JobInfo, JobRequest, JobStatus


def new_job_id(request: JobRequest) -> JobId:
    return JobId(f"{request.name}-{uuid.uuid4().hex[:8]}")


def replica_count(request: JobRequest) -> int:
    """Processes a request runs: one per replica, or per host of every slice for a TPU."""
    device = request.resources.device
    hosts = device.vm_count() if device.kind == "tpu" else 1
    return request.resources.replicas * hosts


class Cluster(abc.ABC):
    """Where jobs run. `launch` returns at once with a JobId; `poll` and `list_jobs` are
    snapshots; `wait` and `monitor` block until jobs finish; `terminate` stops a job's processes
    and returns once they are signalled.

    A cluster is also a context manager: leaving it terminates the jobs it still runs.
    """

    #: The FRAY_CLUSTER_SPEC that jobs launched here see, so that their own launches and
    #: `fray_job_ctx()` reach the same cluster.
    spec: str

    def __init__(self) -> None:
        self._jobs: dict[JobId, JobRecord] = {}
        self._jobs_lock = threading.Lock()
        self._warned: set[str] = set()  # request fields this cluster ignores, reported once

    @abc.abstractmethod
    def launch(self, request: JobRequest) -> JobId:
        """Starts `request` and returns its id without waiting for it to run."""

    @abc.abstractmethod
    def _stop(self, record: JobRecord) -> None:
        """Signals every process of a job being stopped."""

    def close(self) -> None:
        """Terminates the jobs still running and releases the cluster's resources."""
        for record in self._records():
            if not record.status.finished():
                self.terminate(record.job_id)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared implementation ------------------------------------------------------------
    def _register(self, record: JobRecord) -> None:
        with self._jobs_lock:
            self._jobs[record.job_id] = record

    def _record(self, job_id: JobId | str) -> JobRecord:
        with self._jobs_lock:
            record = self._jobs.get(JobId(job_id))
        if record is None:
            raise KeyError(
                f"no job {job_id!r} on this cluster ({type(self).__name__}); job ids come from "
                "launch() on the same cluster object, see list_jobs()"
            )
        return record

    def _records(self) -> list[JobRecord]:
        with self._jobs_lock:
            return list(self._jobs.values())

    def poll(self, job_id: JobId) -> JobInfo:
        """The job's current JobInfo (never blocks)."""
        self._check_health()
        return self._record(job_id).info()

    def list_jobs(self) -> list[JobInfo]:
        """Every job launched through this cluster object, oldest first."""
        self._check_health()
        return [r.info() for r in self._records()]

    def _fail_unfinished_jobs(self, message: str) -> None:
        """Fails every unfinished job with `message` (the cluster lost the means to follow
        them)."""
        for record in self._records():
            if not record.status.finished():
                record.fail_unfinished(message)

    def _check_health(self) -> None:  # noqa: B027 - a cluster in this process is always reachable
        """Fails the unfinished jobs if the cluster can no longer report on them (called at
        least once a second while someone waits)."""

    def logs(self, job_id: JobId) -> list[str]:
        """The job's log lines so far, each prefixed `[replica-N] ` (the last MAX_LOG_LINES)."""
        return self._record(job_id).lines_since(0)[0]

    def terminate(self, job_id: JobId) -> None:
        """Stops the job: its status becomes `stopped` and its processes get SIGTERM (then
        SIGKILL after a grace period). Does nothing to a finished job."""
        record = self._record(job_id)
        if record.request_stop():
            self._stop(record)

    def monitor(
        self,
        job_id: JobId,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        """Streams the job's log lines, from its first, to `on_line` (default: print to stdout)
        as they arrive; returns the final JobInfo once the job finished and its lines are out.

        Raises TimeoutError after `timeout` seconds if the job is still running.
        """
        record = self._record(job_id)
        emit = on_line or (lambda line: print(line, file=sys.stdout, flush=True))
        deadline = None if timeout is None else time.monotonic() + timeout
        position = 0
        while True:
            with record.cond:
                # Finished means every line is in: DaskCluster waits for a replica's last lines
                # before it records the replica's end.
                finished = record.status.finished()
                if record.lines_total == position and not finished:
                    remaining = 1.0 if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(self._timeout_message([record], timeout))
                    record.cond.wait(timeout=min(remaining, 1.0))
            self._check_health()
            lines, position = record.lines_since(position)
            for line in lines:
                emit(line)
            if finished and not lines:
                return record.info()

    def wait(
        self,
        job_ids: JobId | Iterable[JobId],
        raise_on_failure: bool = False,
        timeout: float | None = None,
    ) -> JobInfo | list[JobInfo]:
        """Blocks until the job (or every job of a list) finished; returns its JobInfo (or the
        list, in order).

        With `raise_on_failure=True`, the first job that failed or was stopped raises
        JobFailedError carrying its JobInfo and error message. `timeout` (seconds) raises
        TimeoutError naming the jobs still running.
        """
        single = isinstance(job_ids, str)
        records = [self._record(j) for j in ([job_ids] if single else list(job_ids))]
        deadline = None if timeout is None else time.monotonic() + timeout
        for record in records:
            while not record.wait_finished(1.0):
                self._check_health()
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(self._timeout_message(records, timeout))
            if raise_on_failure and record.status is not JobStatus.SUCCEEDED:
                raise JobFailedError(record.info())
        infos = [r.info() for r in records]
        return infos[0] if single else infos

    def result(self, job_id: JobId, timeout: float | None = None) -> list[Any]:
        """The return value of each replica of a callable job, in replica order; blocks until the
        job ended (`timeout` seconds: TimeoutError naming the job and its state).

        A job that failed raises the exception its callable raised, with its type and message, the
        traceback from the job's process as `__cause__` and a note naming the job and replica;
        when there is none to raise (killed, non-zero exit, lost worker, an unpicklable exception)
        or the job was stopped, JobFailedError carrying its JobInfo. A job that runs a command
        (`Entrypoint.from_binary`) has no return value: ValueError, at once. With retries, the
        values are those of each replica's last run. A replica that exits 0 without returning
        (`os._exit(0)`) gives None.

        Values travel pickled to this driver and stay in its memory as long as the cluster object
        keeps the job's record (after close() too): return small things (metrics, paths) and
        write large ones to storage. A GKE cluster cannot fetch them (NotImplementedError).

            square = Entrypoint.from_callable(pow, args=[3, 2])
            job = cluster.launch(JobRequest(name="square", entrypoint=square))
            assert cluster.result(job) == [9]
        """
        record = self._record(job_id)
        entrypoint = record.request.entrypoint
        if entrypoint.callable is None:
            raise ValueError(
                f"job {record.job_id} ran the command {entrypoint.description!r}, which has no "
                "return value; result() is for Entrypoint.from_callable jobs. Read its output "
                "with logs(), or have the command write its result to a file"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            if record.wait_finished(left):
                break
            self._check_health()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {record.job_id} is still {record.status.value} after {timeout:g} s, so "
                    "it has no result yet; call result() again, pass a longer timeout (None waits "
                    "for its end), or terminate() it"
                )
        if record.status is JobStatus.SUCCEEDED:
            return results.values(record)
        results.raise_failure(record)

    @staticmethod
    def _timeout_message(records: list[JobRecord], timeout: float | None) -> str:
        running = [f"{r.job_id} ({r.status.value})" for r in records if not r.status.finished()]
        return (
            f"jobs still running after {timeout:g} s: {', '.join(running)}; wait longer, or "
            "terminate() them"
        )
