"""The worker side of DaskCluster: the Dask task that runs one replica's process and reports its
start, log lines and outcome as events on LOG_TOPIC, and the call that kills a job's processes.

Runs in worker processes; imports no driver-side module (fray_dask.dask_cluster imports this).
"""

from __future__ import annotations

import collections
import threading

import distributed

from fray_dask.process import Launch, Outcome, ReplicaProcess
from fray_dask.types import JobStatus
from fray_dask.workdirs import sweep_stale_workdirs

LOG_TOPIC = "fray-job-events"
# A replica's saved return value (pickled) up to this size travels in its "ended" event; a larger
# one is fetched from the task's result instead (the scheduler keeps recent events in memory).
RESULT_EVENT_BYTES = 64 * 1024

# The replica processes running in this worker process, by job id, and the jobs told to stop
# (so a replica that starts after terminate() does not run).
_RUNNING: dict[str, set[ReplicaProcess]] = {}
_STOPPED: collections.deque[str] = collections.deque(maxlen=10_000)
_WORKER_LOCK = threading.Lock()
_SWEPT = threading.Event()  # this worker process swept stale replica work dirs at its first job


def run_replica(launch: Launch, attempt: int) -> Outcome:
    """The Dask task of one replica: announces itself, secedes, runs the child to its end.

    Sends events {"kind": "started" | "lines" | "ended", "job", "replica", "attempt", ...} on
    LOG_TOPIC and returns the Outcome (the driver reads it only when the "ended" event could not
    carry the result)."""
    worker = distributed.get_worker()
    ids = {"job": launch.job_id, "replica": launch.replica, "attempt": attempt}
    if not _SWEPT.is_set():  # left by a worker process that died on this machine
        _SWEPT.set()
        sweep_stale_workdirs()

    def send(lines: list[str]) -> None:
        worker.log_event(LOG_TOPIC, {"kind": "lines", "lines": lines, **ids})

    # A replica that runs for more than a second leaves the worker's thread pool (it keeps its
    # resources), so tasks the job submits itself find a thread; until then they wait at most a
    # second. Seceding at once would cost every short job extra scheduler work.
    process = ReplicaProcess(launch, send, on_long=distributed.secede, long_after=1.0)
    with _WORKER_LOCK:
        if launch.job_id in _STOPPED:
            return Outcome(JobStatus.STOPPED, "stopped before it started")
        _RUNNING.setdefault(launch.job_id, set()).add(process)
    try:
        worker.log_event(LOG_TOPIC, {"kind": "started", "worker": worker.address, **ids})
        outcome = process.run()
        # The outcome also travels as an event, ahead of the task's end on the same streams, so
        # the driver need not fetch the result from the worker (a round trip per job).
        small = outcome.result is None or len(outcome.result) <= RESULT_EVENT_BYTES
        ended = {
            "kind": "ended",
            "status": outcome.status.value,
            "error": outcome.error_message,
            "exit_code": outcome.exit_code,
            "lines": outcome.lines,
            "result": outcome.result if small else None,
            "result_in_task": not small,
        }
        worker.log_event(LOG_TOPIC, {**ended, **ids})
        return outcome
    finally:
        with _WORKER_LOCK:
            running = _RUNNING.get(launch.job_id, set())
            running.discard(process)
            if not running:
                _RUNNING.pop(launch.job_id, None)


def kill_job(job_id: str) -> int:
    """Run on every worker by DaskCluster.terminate(): stops the job's processes in this worker
    process (and any replica of it that starts later); returns how many it killed."""
    with _WORKER_LOCK:
        _STOPPED.append(job_id)
        processes = list(_RUNNING.get(job_id, ()))
    for process in processes:
        process.kill()
    return len(processes)
