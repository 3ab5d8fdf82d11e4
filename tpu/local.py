"""LocalTpuCluster (`FRAY_CLUSTER_SPEC=tpu-local`): a TPU job as slices x hosts processes on this
machine, each wired like its GKE pod (tpu.local_pods). Imports no jax, Kubernetes or Dask.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from typing import Any

from fray_dask.cluster import JobRecord, new_job_id, replica_count
from fray_dask.environment import check_request
from fray_dask.local import LocalCluster
from fray_dask.process import Launch, Outcome, ReplicaProcess, serialize_entrypoint
from fray_dask.types import EnvironmentConfig, JobId, JobRequest, JobStatus
from tpu.k8s_names import k8s_name
from tpu.local_pods import LocalPod, local_pods, require_tpu

__all__ = ["LocalTpuCluster", "cluster_from_params"]

logger = logging.getLogger("fray_dask")


class LocalTpuCluster(LocalCluster):
    """Runs a TPU job as slices x hosts local processes wired like its GKE pods
    (`FRAY_CLUSTER_SPEC=tpu-local`); see local_pods for the environment.

    The job is one gang, as a JobSet or Indexed Job is on GKE: when a process fails the others
    are stopped, and the whole gang restarts while the job's failed gangs so far stay within
    max_retries_failure (a JobSet's maxRestarts). A replica's end is recorded when its gang ends.
    Logs are `[replica-N]` lines with N = slice * hosts + host; terminate sends SIGTERM, then
    SIGKILL.
    """

    spec = "tpu-local"

    def launch(self, request: JobRequest) -> JobId:
        """Starts the job's processes and returns at once; wiring errors raise here."""
        require_tpu(request)
        check_request(request, type(self).__name__, self._warned)
        payload = serialize_entrypoint(request)
        job_id = new_job_id(request)
        local_pods(request, k8s_name(job_id))  # wiring errors raise in the caller
        record = JobRecord(job_id, request, replica_count(request))
        self._register(record)
        logger.info(
            "LocalTpuCluster runs job %r (%s x %d slices) as %d local processes",
            request.name,
            request.resources.device.type,
            request.resources.replicas,
            len(record.replicas),
        )
        self._start_thread(f"fray-local-tpu-{job_id}", self._supervise, record, payload)
        return job_id

    def _start_thread(self, name: str, target: Any, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def _supervise(self, record: JobRecord, payload: bytes | None) -> None:
        try:
            while self._run_attempt(record, payload):
                pass
        except Exception as e:  # never leave the job RUNNING forever
            logger.exception("LocalTpuCluster lost job %s", record.job_id)
            record.fail_unfinished(f"tpu-local supervisor failed: {type(e).__name__}: {e}")
            self._stop(record)

    def _run_attempt(self, record: JobRecord, payload: bytes | None) -> bool:
        """Runs the whole gang once; True if it should run again."""
        request, count = record.request, len(record.replicas)
        pods = local_pods(request, k8s_name(record.job_id))
        processes = []
        for index, pod in enumerate(pods):
            launch = self._launch(record, pod, payload, index, count)
            process = ReplicaProcess(launch, lambda lines, i=index: record.add_lines(i, lines))
            processes.append(process)
            with self._lock:
                self._processes[(record.job_id, index)] = process
        try:
            if record.stop_requested:  # read after registering: terminate() sees them or we see it
                for index in range(count):
                    record.ended(index, Outcome(JobStatus.STOPPED))
                return False
            for index in range(count):
                if not record.started(index, "localhost"):
                    for process in processes:
                        process.kill()
            outcomes, first = self._run_gang(record, processes)
        finally:
            with self._lock:
                for index in range(count):
                    self._processes.pop((record.job_id, index), None)
        if first is None:
            for index, outcome in enumerate(outcomes):
                record.ended(index, outcome)
            return False
        # The gang failed at `first`: it alone is charged the failure, against the job's budget
        # (every failed gang so far, as a JobSet's maxRestarts counts); the others were stopped
        # for it (and stay RUNNING in the record if the gang restarts: started() counts them).
        spent = sum(r.failures for r in record.replicas) + 1
        if record.ended(first, outcomes[first], spent=spent):
            record.add_lines(first, [f"fray: restarting all {count} processes of the gang"])
            return True
        for index, outcome in enumerate(outcomes):
            if index != first:
                ok = outcome.status is JobStatus.SUCCEEDED
                record.ended(index, outcome if ok else Outcome(JobStatus.STOPPED))
        return False

    def _launch(
        self, record: JobRecord, pod: LocalPod, payload: bytes | None, index: int, count: int
    ) -> Launch:
        request = record.request
        environment = dataclasses.replace(
            request.environment or EnvironmentConfig(), env_vars=pod.env
        )
        binary, args = (None, ()) if payload is not None else (pod.command[0], pod.command[1:])
        return Launch(
            record.job_id, request.name, environment, payload, binary, tuple(args), index, count,
            self.spec,
        )  # fmt: skip

    def _run_gang(
        self, record: JobRecord, processes: list[ReplicaProcess]
    ) -> tuple[list[Outcome], int | None]:
        """Runs the processes until all ended; at the first failure stops the others. Returns
        every outcome and the index of the first failure (None if there was none)."""
        results: queue.Queue[tuple[int, Outcome]] = queue.Queue()

        def run(index: int, process: ReplicaProcess) -> None:
            try:
                outcome = process.run()
            except Exception as e:  # never leave a replica without an outcome
                outcome = Outcome(JobStatus.FAILED, f"{type(e).__name__}: {e}")
            results.put((index, outcome))

        threads = [
            self._start_thread(f"fray-local-tpu-{record.job_id}-{i}", run, i, process)
            for i, process in enumerate(processes)
        ]
        outcomes: list[Outcome] = [Outcome(JobStatus.STOPPED)] * len(processes)
        first = None
        for _ in processes:
            index, outcome = results.get()
            outcomes[index] = outcome
            if outcome.status is JobStatus.FAILED and first is None:
                first = index
                if len(processes) > 1 and not record.stop_requested:
                    record.add_lines(
                        index,
                        [f"fray: replica {index} failed; stopping the other processes of the gang"],
                    )
                for other, process in enumerate(processes):
                    if other != index:
                        process.kill()
        for thread in threads:
            thread.join()
        return outcomes, first


def cluster_from_params(params: dict[str, str]) -> LocalTpuCluster:
    """The cluster for `FRAY_CLUSTER_SPEC=tpu-local`, which takes no parameters."""
    if params:
        raise ValueError(
            f"cluster spec 'tpu-local' does not take {', '.join(sorted(params))} (its "
            "parameters: none); write FRAY_CLUSTER_SPEC=tpu-local"
        )
    return LocalTpuCluster()
