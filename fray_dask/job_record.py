"""JobRecord: what a driver knows of one job (replica states, retry budgets, log lines, the
callable's saved return values) and the retry and status rules every cluster applies through it.

No Dask import; imports no cluster implementation (they and fray_dask.cluster import this).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from fray_dask.process import Outcome
from fray_dask.secrets import mask, secret_values
from fray_dask.types import JobId, JobInfo, JobRequest, JobStatus, TaskInfo

# Log lines a driver keeps per job; older lines are dropped (and counted) past this.
MAX_LOG_LINES = 100_000


@dataclass
class _Replica:
    index: int
    status: JobStatus = JobStatus.PENDING
    attempts: int = 0
    failures: int = 0
    preemptions: int = 0
    worker: str | None = None
    error: str | None = None
    result: bytes | None = None  # the runner's pickled outcome of its last run (Outcome.result)

    def info(self) -> TaskInfo:
        return TaskInfo(
            self.index,
            self.status,
            self.attempts,
            self.failures,
            self.preemptions,
            self.worker,
            self.error,
        )


class JobRecord:
    """What a driver knows of one job. All mutation happens under `cond`, which is notified on
    every change so that `wait` and `monitor` wake up."""

    def __init__(self, job_id: JobId, request: JobRequest, replica_count: int):
        self.job_id = job_id
        self.request = request
        self.replicas = [_Replica(i) for i in range(replica_count)]
        self.status = JobStatus.PENDING
        self.error: str | None = None
        self.failed_replica: int | None = None  # the one `error` is about
        self.stop_requested = False
        self.lines: deque[str] = deque(maxlen=MAX_LOG_LINES)
        self.lines_total = 0  # every line ever added, including those dropped from `lines`
        self.cond = threading.Condition()
        env = request.environment
        self.secrets = secret_values(env.env_vars) if env is not None else ()

    # -- log lines ------------------------------------------------------------------------
    def add_lines(self, replica: int, lines: Iterable[str]) -> None:
        """Lines arrive with secrets already masked by the replica's ReplicaProcess, which knows
        its whole environment (inherited secrets too), so they are not masked again here."""
        prefixed = [f"[replica-{replica}] {line}" for line in lines]
        with self.cond:
            self.lines.extend(prefixed)
            self.lines_total += len(prefixed)
            self.cond.notify_all()

    def lines_since(self, position: int) -> tuple[list[str], int]:
        """Lines added after `position` (a count of lines ever added) and the new position."""
        with self.cond:
            first_kept = self.lines_total - len(self.lines)
            start = max(position, first_kept)
            return list(self.lines)[start - first_kept :], self.lines_total

    # -- replica state --------------------------------------------------------------------
    def started(self, replica: int, worker: str | None) -> bool:
        """Marks a replica running; False if the job is being stopped (do not start it)."""
        with self.cond:
            r = self.replicas[replica]
            if r.status.finished():  # a late notice for a replica already stopped or failed
                return False
            r.status, r.worker, r.result = JobStatus.RUNNING, worker, None
            r.attempts += 1
            self.settle()
            return not self.stop_requested

    def ended(
        self, replica: int, outcome: Outcome, preempted: bool = False, spent: int | None = None
    ) -> bool:
        """Records how a replica's run ended; True if it should run again (a retry).

        A failure or preemption is counted on the replica and checked against its budget; a gang
        (all replicas restart together) passes `spent`, the job's own count including this one."""
        with self.cond:
            r = self.replicas[replica]
            r.result = outcome.result
            retry = False
            if self.stop_requested or outcome.status is JobStatus.STOPPED:
                r.status = JobStatus.STOPPED
            elif outcome.status is JobStatus.SUCCEEDED:
                r.status, r.error = JobStatus.SUCCEEDED, None
            elif preempted:
                r.preemptions += 1
                r.error = mask(outcome.error_message or "worker lost", self.secrets)
                used = r.preemptions if spent is None else spent
                retry = used <= self.request.max_retries_preemption
                if not retry:
                    r.error = (
                        f"{r.error} (preempted {used} times; max_retries_preemption="
                        f"{self.request.max_retries_preemption})"
                    )
            else:
                r.failures += 1
                r.error = mask(outcome.error_message or "failed", self.secrets)
                retry = (r.failures if spent is None else spent) <= self.request.max_retries_failure
            if retry:
                r.status = JobStatus.PENDING
            elif r.status not in (JobStatus.SUCCEEDED, JobStatus.STOPPED):
                r.status = JobStatus.FAILED
            self.settle()
            return retry

    def request_stop(self) -> bool:
        """Marks the job as being stopped; False if it had already finished."""
        with self.cond:
            if self.status.finished():
                return False
            self.stop_requested = True
            for r in self.replicas:
                if r.status is JobStatus.PENDING:
                    r.status = JobStatus.STOPPED
            self.settle()
            return True

    def settle(self) -> None:
        """Derives the job's status and error from its replicas' (call after changing them)."""
        states = [r.status for r in self.replicas]
        failed = [r for r in self.replicas if r.status is JobStatus.FAILED]
        if failed and self.error is None:
            self.error = f"replica {failed[0].index}: {failed[0].error}"
            self.failed_replica = failed[0].index
        if all(s.finished() for s in states):
            if failed:
                self.status = JobStatus.FAILED
            elif all(s is JobStatus.SUCCEEDED for s in states):
                self.status = JobStatus.SUCCEEDED
            else:
                self.status = JobStatus.STOPPED
        elif failed:
            self.status = JobStatus.RUNNING  # the rest are being stopped; FAILED once they are
        elif any(s is JobStatus.RUNNING for s in states) or any(r.attempts for r in self.replicas):
            self.status = JobStatus.RUNNING
        else:
            self.status = JobStatus.PENDING
        self.cond.notify_all()

    @property
    def has_failed_replica(self) -> bool:
        with self.cond:
            return any(r.status is JobStatus.FAILED for r in self.replicas)

    def info(self) -> JobInfo:
        with self.cond:
            return JobInfo(
                self.job_id,
                self.status,
                tuple(r.info() for r in self.replicas),
                self.request.name,
                self.error,
            )

    def wait_finished(self, seconds: float) -> bool:
        """Blocks up to `seconds` for the job to finish; True if it has."""
        deadline = time.monotonic() + seconds
        with self.cond:
            while not self.status.finished():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(timeout=remaining)
            return True

    def fail_unfinished(self, message: str) -> None:
        """Marks every replica not yet finished as failed with `message` (the driver lost the
        means to follow them)."""
        with self.cond:
            for r in self.replicas:
                if not r.status.finished():
                    r.status, r.error, r.result = JobStatus.FAILED, message, None
            self.settle()
