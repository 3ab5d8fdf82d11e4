"""LocalCluster: every replica of a job is a child process of this one, supervised by a thread.

No Dask import. Jobs share this machine without resource accounting; use DaskCluster to queue jobs
by CPU, memory and GPU.
"""

from __future__ import annotations

import logging
import threading

from fray_dask.cluster import Cluster, JobRecord, new_job_id, replica_count
from fray_dask.environment import check_request
from fray_dask.process import Launch, Outcome, ReplicaProcess, serialize_entrypoint
from fray_dask.types import JobId, JobRequest, JobStatus
from fray_dask.workdirs import sweep_stale_workdirs

logger = logging.getLogger("fray_dask")


class LocalCluster(Cluster):
    """Runs each replica as a subprocess on this machine (`FRAY_CLUSTER_SPEC=local`).

    Log lines are kept per job, prefixed `[replica-N]`; `monitor` streams them. A failed replica is
    restarted up to `max_retries_failure` times; when one fails for good, the others are stopped.
    TPU jobs run one process per slice host, as on a real slice.
    """

    spec = "local"

    def __init__(self) -> None:
        super().__init__()
        sweep_stale_workdirs()  # replica work dirs whose driver died (see fray_dask.workdirs)
        self._processes: dict[tuple[JobId, int], ReplicaProcess] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(jobs={len(self._records())})"

    def launch(self, request: JobRequest) -> JobId:
        check_request(request, type(self).__name__, self._warned)
        device = request.resources.device
        if device.kind in ("gpu", "tpu") and device.kind not in self._warned:
            self._warned.add(device.kind)
            logger.warning(
                "LocalCluster does not reserve devices: job %r asks for %s and runs as %d plain "
                "process(es) on this machine with whatever devices it has",
                request.name,
                device,
                replica_count(request),
            )
        payload = serialize_entrypoint(request)
        count = replica_count(request)
        record = JobRecord(new_job_id(request), request, count)
        self._register(record)
        for index in range(count):
            launch = Launch.of(record.job_id, request, payload, index, count, self.spec)
            thread = threading.Thread(
                target=self._supervise,
                args=(record, launch),
                name=f"fray-local-{record.job_id}-{index}",
                daemon=True,
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        return record.job_id

    def _supervise(self, record: JobRecord, launch: Launch) -> None:
        index = launch.replica
        while True:
            process = ReplicaProcess(launch, lambda lines: record.add_lines(index, lines))
            with self._lock:
                self._processes[(record.job_id, index)] = process
            if not record.started(index, "localhost"):
                outcome = Outcome(JobStatus.STOPPED)
            else:
                try:
                    outcome = process.run()
                except Exception as e:  # never leave a replica RUNNING forever
                    outcome = Outcome(JobStatus.FAILED, f"{type(e).__name__}: {e}")
            with self._lock:
                self._processes.pop((record.job_id, index), None)
            if not record.ended(index, outcome):
                break
        if record.has_failed_replica and record.request_stop():
            self._stop(record)

    def _stop(self, record: JobRecord) -> None:
        with self._lock:
            processes = [p for (job, _), p in self._processes.items() if job == record.job_id]
        for process in processes:
            process.kill()

    def close(self, timeout: float = 30.0) -> None:
        """Terminates running jobs and waits up to `timeout` s for their supervisors."""
        super().close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=timeout)
