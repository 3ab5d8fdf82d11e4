"""JobPoller: follows a GKE job through its pods and workload (Job, Indexed Job, JobSet) and books
what it sees on the job's JobRecord: starts, log streams, preemptions and failures against their
budgets, gang restarts. Called by GkeTpuCluster's watcher thread; no Kubernetes or Dask import.
"""

from __future__ import annotations

import logging
import threading
import time

from fray_dask.process import Outcome
from fray_dask.secrets import mask
from fray_dask.types import JobStatus
from tpu.kube_api import GkeApiError, KubeApi, creation_error
from tpu.pods import (
    COMPLETION_INDEX,
    CONTROLLER_UID,
    JOB_INDEX,
    RESTART_ATTEMPT,
    JobState,
    LogFollower,
    PodState,
    condition,
    ran,
    terminal,
)

logger = logging.getLogger("fray_dask")

LOG_GRACE = 10.0  # how long a finished pod's last log lines may take to arrive
RECREATE_TIMEOUT = 300.0  # an Indexed Job being restarted must be gone within this


class JobPoller:
    """The rules that turn what the API server reports of a job into its record's states, for
    the jobs of one namespace. `closed` ends the log streams it opens."""

    def __init__(self, api: KubeApi, namespace: str, closed: threading.Event):
        self._api, self.namespace, self._closed = api, namespace, closed

    def poll(self, job: JobState) -> None:
        """Reads the job's pods and workload once and books what changed on its record: starts,
        ends, retries, a gang's restart (an Indexed Job is recreated here). API errors
        propagate (GkeApiError, ConnectionError); the caller counts them towards its timeout."""
        if job.record.status.finished():
            return
        if job.recreate_at is not None:
            return self._recreate(job)
        listed = sorted(
            self._api.pods(job.name),
            key=lambda p: (p["metadata"].get("creationTimestamp", ""), not terminal(p)),
        )
        workload = self._api.read(job.workload["kind"], job.workload["metadata"]["name"])
        now = time.monotonic()
        listed_uids = set()
        for obj in listed:
            uid = obj["metadata"]["uid"]
            listed_uids.add(uid)
            if uid not in job.pods:
                pod = self._new_pod(job, obj)
                if pod is None:
                    continue
                job.pods[uid] = pod
            job.pods[uid].obj = obj
        for pod in job.pods.values():
            pod.gone = pod.uid not in listed_uids
            if pod.ended_at is None and (pod.gone or terminal(pod.obj)):
                pod.ended_at = now
        self._advance_pods(job, now)
        if workload is None:
            job.record.fail_unfinished(
                f"{job.workload['kind']} {self.namespace}/{job.name} was deleted outside this "
                "launcher (kubectl delete?)"
            )
        elif job.kind == "job":
            self._single_status(job, workload, now)
        else:
            self._gang_status(job, workload, now)

    def _new_pod(self, job: JobState, obj: dict) -> PodState | None:
        """Tracks a pod of the job's current attempt (None for a pod of an earlier one)."""
        meta = obj["metadata"]
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        if job.kind == "jobset":
            attempt = int(labels.get(RESTART_ATTEMPT, job.attempt))
        else:
            owner = next((labels[k] for k in CONTROLLER_UID if k in labels), job.uid)
            attempt = job.attempt if owner == job.uid or not job.uid else -1
        if attempt < job.attempt:
            return None
        host = int(notes.get(COMPLETION_INDEX, labels.get(COMPLETION_INDEX, 0)))
        slice_ = int(notes.get(JOB_INDEX, labels.get(JOB_INDEX, 0)))
        replica = slice_ * job.hosts + host
        if replica >= len(job.record.replicas):
            logger.warning("pod %s has replica index %d out of range", meta["name"], replica)
            return None
        return PodState(meta["name"], meta["uid"], replica, attempt)

    def _advance_pods(self, job: JobState, now: float) -> None:
        """Reports pod starts and ends to the record, one pod at a time per replica: a pod that
        replaces another is followed once the earlier one is accounted for, so a replica's log
        lines stay in order and its states in sequence."""
        busy: set[int] = set()
        for pod in job.pods.values():
            if pod.closed:
                continue
            if pod.replica in busy or pod.attempt > job.attempt:
                busy.add(pod.replica)
                continue
            busy.add(pod.replica)
            if not pod.started and not pod.gone and ran(pod.obj):
                pod.started = True
                pod.follower = LogFollower(
                    self._api, job.record, pod.name, pod.replica, self._closed
                )
                job.record.started(pod.replica, pod.name)
            if pod.ended_at is None or not self._logs_in(pod, now):
                continue
            kind, message = pod.outcome()
            if kind == "succeeded":
                pod.closed = True
                job.record.ended(pod.replica, Outcome(JobStatus.SUCCEEDED))
            elif job.kind == "job":  # a gang's failures wait for its workload's verdict
                pod.closed = True
                if pod.vanished and not pod.started:
                    continue  # deleted before it ran: Kubernetes makes another
                preempted = kind == "preempted"
                used = job.record.replicas[0].preemptions + 1
                if preempted and used > job.record.request.max_retries_preemption:
                    self._api.delete("Job", job.name, "Background")  # no more replacements
                job.record.ended(0, Outcome(JobStatus.FAILED, message), preempted=preempted)

    def _logs_in(self, pod: PodState, now: float) -> bool:
        """True once an ended pod's log is fully read (or waited for LOG_GRACE s)."""
        if pod.follower is None or pod.follower.done.is_set():
            return True
        if now - (pod.ended_at or now) < LOG_GRACE:
            return False
        pod.follower.stop()
        return True

    def _single_status(self, job: JobState, workload: dict, now: float) -> None:
        """A one-host Job: Kubernetes replaces pods itself; its verdict settles what the pods'
        own ends did not (a missed pod, DeadlineExceeded)."""
        end = condition(workload, "Complete", "Failed")
        if end is None:
            return
        job.gang_end_at = job.gang_end_at or now
        pending = [p for p in job.pods.values() if not p.closed]
        if pending and now - job.gang_end_at < LOG_GRACE:
            return
        if end["type"] == "Complete":
            job.record.ended(0, Outcome(JobStatus.SUCCEEDED))
        else:
            job.record.fail_unfinished(
                f"Job {self.namespace}/{job.name} failed ({end.get('reason')}: "
                f"{end.get('message')})"
            )

    def _gang_status(self, job: JobState, workload: dict, now: float) -> None:
        """An Indexed Job or a JobSet fails or restarts as a whole; the budgets apply per job.

        Indexed Job: its Failed condition ends the attempt (reason PodFailurePolicy: the
        DisruptionTarget rule fired, a preemption; else a failure) and the launcher deletes and
        recreates it within the budgets. JobSet: Kubernetes restarts it; status.restarts minus
        restartsCountTowardsMax counts preemptions, capped here at max_retries_preemption."""
        failed = condition(workload, "Failed")
        status = workload.get("status") or {}
        restarts = int(status.get("restarts") or 0)
        if failed is None and (job.kind == "indexed" or restarts <= job.attempt):
            if condition(workload, "Complete", "Completed"):
                job.gang_end_at = job.gang_end_at or now
                if now - job.gang_end_at >= LOG_GRACE or all(p.closed for p in job.pods.values()):
                    for r in job.record.info().tasks:
                        if not r.status.finished():
                            job.record.ended(r.replica, Outcome(JobStatus.SUCCEEDED))
            return
        job.gang_end_at = job.gang_end_at or now
        ours = [p for p in job.pods.values() if p.attempt == job.attempt]
        settled = all(p.ended_at is not None and self._logs_in(p, now) for p in ours)
        if not settled and now - job.gang_end_at < 3 * LOG_GRACE:
            return  # the rest of the gang is still being stopped
        job.gang_end_at = None
        if job.kind == "indexed":
            # The DisruptionTarget -> FailJob rule gives reason PodFailurePolicy; a node-level
            # end (shutdown, spot reclaim) without that condition is a preemption as well.
            kinds = {p.outcome()[0] for p in ours if p.ended_at is not None and not p.vanished}
            preempted = failed.get("reason") == "PodFailurePolicy" or (
                "preempted" in kinds and "failed" not in kinds
            )
            if self._end_attempt(job, ours, preempted, 1, failed, final=False):
                self._api.delete("Job", job.name, "Foreground")  # its pods go before it does
                job.recreate_at = now
            return
        counted = int(status.get("restartsCountTowardsMax") or 0)
        new_failures = counted - job.failures
        new_preemptions = restarts - counted - job.preemptions
        if new_failures > 0:
            self._end_attempt(job, ours, False, new_failures, None, final=False, stop="JobSet")
        if new_preemptions > 0:
            self._end_attempt(job, ours, True, new_preemptions, None, final=False, stop="JobSet")
        if failed is not None:
            self._end_attempt(job, ours, False, 1, failed, final=True)
        job.attempt = restarts

    def _end_attempt(
        self,
        job: JobState,
        pods: list[PodState],
        preempted: bool,
        count: int,
        condition: dict | None,
        final: bool,
        stop: str | None = None,
    ) -> bool:
        """Books `count` gang failures on the pod that caused them; True if the gang runs again.

        The culprit is the first pod of the attempt seen to end the matching way (else the first
        that did not succeed); the other replicas restart with it, or are stopped. Out of budget,
        the workload of kind `stop` is deleted first (Kubernetes would restart it)."""
        want = "preempted" if preempted else "failed"
        # Pods seen to end, not those that vanished: a controller deletes the rest of the gang
        # (and JobSet even the failed pod) as soon as one pod fails.
        seen = [(p, *p.outcome()) for p in pods if p.ended_at is not None and not p.vanished]
        seen.sort(key=lambda o: o[0].ended_at or 0.0)
        culprit = next((o for o in seen if o[1] == want), None)
        culprit = culprit or next((o for o in seen if o[1] != "succeeded"), None)
        if culprit is not None:
            message = culprit[2]
        else:
            message = (
                f"{job.workload['kind']} {job.name} restarted its slices after a {want} pod; "
                "its pods were gone before this launcher saw which one ended, so the count is "
                f"kept on replica 0 (kubectl get events -n {self.namespace} names the pod)"
            )
        if condition is not None:
            reason, why = condition.get("reason"), condition.get("message")
            message = f"{message} ({job.workload['kind']} {reason}: {why})"
        request, record = job.record.request, job.record
        if preempted:
            job.preemptions += count
            used, budget, knob = job.preemptions, request.max_retries_preemption, "preemption"
        else:
            job.failures += count
            used, budget, knob = job.failures, request.max_retries_failure, "failure"
        again = not final and used <= budget
        if not again:
            message = f"{message} ({want} {used} times; max_retries_{knob}={budget})"
        for pod in pods:
            pod.closed = True
            if pod.follower is not None and not pod.follower.done.is_set():
                pod.follower.stop()
        if not again and stop is not None:
            self._api.delete(stop, job.name, "Background")
        with record.cond:
            if record.status.finished():
                return False
            index = culprit[0].replica if culprit else 0
            r = record.replicas[index]
            r.preemptions += count if preempted else 0
            r.failures += 0 if preempted else count
            r.error = mask(message, record.secrets)
            for other in record.replicas:
                if again:
                    other.status = JobStatus.PENDING
                elif other.index == index:
                    other.status = JobStatus.FAILED
                elif other.status is not JobStatus.SUCCEEDED:
                    other.status = JobStatus.STOPPED
            record.settle()
        return again

    def _recreate(self, job: JobState) -> None:
        """The gang restart of an Indexed Job: once the old Job (and its pods) is gone, the same
        Job is created again, so pod hostnames and TPU_WORKER_HOSTNAMES still match."""
        if self._api.read("Job", job.name) is not None:
            if time.monotonic() - (job.recreate_at or 0) > RECREATE_TIMEOUT:
                job.record.fail_unfinished(
                    f"Job {self.namespace}/{job.name} was not deleted within "
                    f"{RECREATE_TIMEOUT:g} s for its restart; check `kubectl describe job "
                    f"{job.name} -n {self.namespace}` (pods stuck terminating?)"
                )
            return
        try:
            created = self._api.create(job.workload)
        except GkeApiError as e:
            job.record.fail_unfinished(str(creation_error(e, job.workload, self.namespace, ())))
            return
        job.uid = created["metadata"].get("uid", "")
        job.attempt += 1
        job.recreate_at = None
        if job.record.status.finished():  # terminate() ran meanwhile: its delete came first
            self._api.delete("Job", job.name, "Background")
