"""GkeTpuCluster: TPU jobs as GKE workloads (a Job, an Indexed Job + Service, or a JobSet from
tpu.manifests) behind the fray_dask Cluster API, followed by polling their pods and streaming logs.

API calls go through tpu/kube_api.py (which imports `kubernetes`, inside functions). No Dask import.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urlencode

from fray_dask.cluster import Cluster, JobRecord, new_job_id, replica_count
from fray_dask.process import Outcome
from fray_dask.secrets import mask
from fray_dask.types import JobId, JobRequest, JobStatus
from tpu.kube_api import READ_TIMEOUT, GkeApiError, KubeApi, creation_error, load_client
from tpu.manifests import (
    JOB_LABEL,
    build_manifests,
    callable_payload,
    k8s_name,
    secret_manifest,
)
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

__all__ = ["GkeApiError", "GkeTpuCluster", "cluster_from_params"]

logger = logging.getLogger("fray_dask")

LOST_TIMEOUT = 60.0  # API server out of reach this long: unfinished jobs fail
LOG_GRACE = 10.0  # how long a finished pod's last log lines may take to arrive
RECREATE_TIMEOUT = 300.0  # an Indexed Job being restarted must be gone within this
_PARAMS = ("namespace", "image", "context", "poll", "timeout", "payload")


class GkeTpuCluster(Cluster):
    """Runs TPU jobs on GKE (`FRAY_CLUSTER_SPEC=gke?namespace=NS&image=IMAGE`).

    `launch` creates the Secret (secret env vars), the payload ConfigMap, the headless Service and
    the Job / JobSet that tpu.manifests builds, all named after the job id. A watcher thread polls
    the pods every `poll_interval` s, streams their logs (`monitor`, `logs`) and applies the retry
    budgets: a preempted pod (DisruptionTarget, node lost) spends `max_retries_preemption`, a crash
    `max_retries_failure`; a multi-host slice restarts as a whole. The API server out of reach for
    `lost_timeout` s fails unfinished jobs. Credentials: `api_client`, else the pod's service
    account, else the kubeconfig (`context`).

    A callable travels in a ConfigMap (up to 900 KiB pickled); with `payload_dir` (an fsspec URL
    such as "gs://bucket/fray-payloads" that the pods can read) it is uploaded there instead, as
    `<payload_dir>/<job name>.pkl`, whatever its size.
    """

    def __init__(
        self,
        namespace: str = "default",
        image: str | None = None,
        *,
        api_client: Any = None,
        context: str | None = None,
        poll_interval: float = 2.0,
        lost_timeout: float = LOST_TIMEOUT,
        payload_dir: str | None = None,
    ):
        super().__init__()
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace or ""):
            raise ValueError(
                f"namespace {namespace!r} is not a Kubernetes namespace name (lowercase letters, "
                "digits and '-'); write e.g. namespace='tpu-jobs'"
            )
        self.namespace, self.image = namespace, image
        self.payload_dir = payload_dir.rstrip("/") if payload_dir else None
        self.poll_interval, self.lost_timeout = poll_interval, lost_timeout
        self._owns_client = api_client is None
        self.api_client = api_client if api_client is not None else load_client(context)
        self._api = KubeApi(self.api_client, namespace)
        self.host = self._api.host
        try:
            self._api.check()
        except Exception:
            self._close_client()
            raise
        params = {
            "namespace": namespace,
            "image": image,
            "context": context,
            "payload": self.payload_dir,
        }
        self.spec = "gke?" + urlencode({k: v for k, v in params.items() if v})
        self._k8s: dict[JobId, JobState] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._failing_since: float | None = None
        self._last_error = ""

    def __repr__(self) -> str:
        return f"GkeTpuCluster({self.host!r}, namespace={self.namespace!r})"

    # -- launching --------------------------------------------------------------------------
    def launch(self, request: JobRequest) -> JobId:
        """Creates the job's objects (nothing is sent before all of them built) and returns."""
        if self._closed.is_set():
            raise RuntimeError("this GkeTpuCluster is closed; create a new one")
        self._check_environment(request)
        env = request.environment
        image = (env.docker_image if env is not None else None) or self.image
        job_id = new_job_id(request)
        name = k8s_name(job_id)
        payload_url = None
        if self.payload_dir and request.entrypoint.callable is not None:
            payload_url = f"{self.payload_dir}/{name}.pkl"
        manifests = build_manifests(
            request, image, namespace=self.namespace, name=name, payload_url=payload_url
        )
        secret = secret_manifest(request, name, self.namespace)
        if payload_url is not None:
            _upload(payload_url, callable_payload(request))
        spec = request.resources.device.spec
        kind = "jobset" if request.resources.replicas > 1 else "job"
        kind = "indexed" if kind == "job" and spec.multi_host else kind
        record = JobRecord(job_id, request, replica_count(request))
        job = JobState(record, name, kind, spec.hosts, [])
        for obj in ([secret] if secret else []) + manifests:
            try:
                created = self._api.create(obj)
            except (GkeApiError, ConnectionError) as e:
                self._rollback(job)
                if payload_url is not None:
                    _remove(payload_url)
                raise creation_error(e, obj, self.namespace, record.secrets) from None
            job.objects.append(obj)
            job.uid = created.get("metadata", {}).get("uid", "")
        self._register(record)
        with self._lock:
            self._k8s[record.job_id] = job
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name=f"fray-gke-watch-{self.namespace}", daemon=True
                )
                self._watcher.start()
        return record.job_id

    @staticmethod
    def _check_environment(request: JobRequest) -> None:
        """pip_packages and extras cannot be installed into a pod's image: refuse them at launch
        rather than let the job fail later on a missing import."""
        env = request.environment
        for field_name in ("pip_packages", "extras"):
            wanted = list(getattr(env, field_name)) if env else []
            if wanted:
                raise ValueError(
                    f"GkeTpuCluster runs job {request.name!r} in its image, which cannot get "
                    f"{field_name}={wanted!r} installed at launch; build them into the image "
                    "(EnvironmentConfig(docker_image=...) or the cluster's image=) and drop "
                    f"{field_name}"
                )

    def _rollback(self, job: JobState) -> None:
        for obj in reversed(job.objects):
            try:
                self._api.delete(obj["kind"], obj["metadata"]["name"], "Background")
            except Exception as e:
                logger.warning("could not delete %s %s: %s", obj["kind"], obj["metadata"], e)

    # -- watching ---------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closed.wait(self.poll_interval):
            with self._lock:
                jobs = [j for j in self._k8s.values() if not j.done]
            ok = True
            for job in jobs:
                try:
                    self._poll(job)
                except Exception as e:
                    ok = False
                    self._last_error = f"{type(e).__name__}: {e}"
                    if not isinstance(e, GkeApiError | ConnectionError):
                        logger.exception("GkeTpuCluster: polling job %s failed", job.record.job_id)
                if job.record.status.finished() and not job.done:
                    job.done = True
                    self._delete_secret(job)
            self._failing_since = None if ok else (self._failing_since or time.monotonic())
            self._fail_if_lost()

    def _fail_if_lost(self) -> None:
        since = self._failing_since
        if since is None or time.monotonic() - since < self.lost_timeout:
            return
        message = (
            f"lost contact with the Kubernetes API server at {self.host} for "
            f"{time.monotonic() - since:.0f} s ({self._last_error}); the pods may still run: "
            f"check `kubectl get jobs,jobsets,pods -n {self.namespace} -l {JOB_LABEL}` and the "
            "kubeconfig, then launch again"
        )
        self._fail_unfinished_jobs(message)

    def _check_health(self) -> None:
        self._fail_if_lost()

    def _poll(self, job: JobState) -> None:
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
            record._update()
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

    def result(self, job_id: JobId, timeout: float | None = None) -> list[Any]:
        """Not available here: a pod's return value stays in the pod (NotImplementedError)."""
        record = self._record(job_id)
        raise NotImplementedError(
            f"GkeTpuCluster cannot return job {record.job_id}'s return values: its pods report "
            "only their status and logs to this driver; have the job write its result to storage "
            "(e.g. gs://bucket/results/<job>.json) and read it after wait()"
        )

    # -- stopping ---------------------------------------------------------------------------
    def _stop(self, record: JobRecord) -> None:
        """Deletes the workload (its pods go with it), the Service, ConfigMap and Secret."""
        with self._lock:
            job = self._k8s[record.job_id]
        job.done = True
        with record.cond:
            for r in record.replicas:
                if not r.status.finished():
                    r.status = JobStatus.STOPPED
            record._update()
        errors = []
        for obj in reversed(job.objects):
            try:
                self._api.delete(obj["kind"], obj["metadata"]["name"], "Background")
            except (GkeApiError, ConnectionError) as e:
                errors.append(f"{obj['kind']} {obj['metadata']['name']}: {e}")
        if errors:
            raise GkeApiError(
                f"terminating job {record.job_id} left objects behind ({'; '.join(errors)}); "
                f"delete them with `kubectl delete jobs,jobsets,services,configmaps,secrets "
                f"-n {self.namespace} -l {JOB_LABEL}={job.name}`"
            )

    def _delete_secret(self, job: JobState) -> None:
        """A finished job's Secret goes at once: no pod of it will read the values again."""
        for obj in job.objects:
            if obj["kind"] == "Secret":
                with contextlib.suppress(Exception):
                    self._api.delete("Secret", obj["metadata"]["name"])

    def close(self) -> None:
        """Terminates unfinished jobs (finished ones stay in the cluster for `kubectl logs`),
        stops the watcher and log streams, and closes the API client if this cluster made it."""
        for record in self._records():
            if not record.status.finished():
                try:
                    self.terminate(record.job_id)
                except Exception as e:
                    logger.warning("GkeTpuCluster.close: %s", e)
        self._closed.set()
        with self._lock:
            watcher, jobs = self._watcher, list(self._k8s.values())
        if watcher is not None:
            watcher.join(timeout=READ_TIMEOUT + 5)
        followers = [p.follower for j in jobs for p in j.pods.values() if p.follower]
        for follower in followers:
            follower.stop()
        for follower in followers:
            follower.thread.join(timeout=5)
        self._close_client()

    def _close_client(self) -> None:
        if self._owns_client:
            with contextlib.suppress(Exception):
                self.api_client.close()


def _upload(url: str, payload: bytes) -> None:
    """Writes a job's pickled callable where its pods read it (`python -m tpu.run <url>`)."""
    import fsspec

    try:
        with fsspec.open(url, "wb") as f:
            f.write(payload)
    except Exception as e:
        raise OSError(
            f"cannot write the job's payload to {url} ({type(e).__name__}: {e}); check the "
            "payload_dir and its credentials (gs:// needs gcsfs: pip install 'zephyr-dask[gcs]')"
        ) from None


def _remove(url: str) -> None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        fs.rm(path)
    except Exception as e:
        logger.warning("could not delete the payload %s: %s", url, e)


def cluster_from_params(params: dict[str, str]) -> GkeTpuCluster:
    """A GkeTpuCluster for `FRAY_CLUSTER_SPEC=gke?namespace=NS&image=IMAGE[&context=CTX]
    [&poll=SECONDS][&timeout=SECONDS][&payload=gs://bucket/prefix]`; unknown parameters raise
    ValueError listing the known."""
    unknown = sorted(set(params) - set(_PARAMS))
    if unknown:
        raise ValueError(
            f"cluster spec 'gke' does not take {', '.join(unknown)} (its parameters: "
            f"{', '.join(_PARAMS)})"
        )
    numbers = {}
    for key, default in (("poll", 2.0), ("timeout", LOST_TIMEOUT)):
        text = params.get(key, str(default))
        try:
            numbers[key] = float(text)
        except ValueError:
            numbers[key] = -1.0
        if numbers[key] <= 0:
            raise ValueError(f"cluster spec gke {key}={text!r} is not a number of seconds > 0")
    return GkeTpuCluster(
        params.get("namespace") or "default",
        params.get("image") or None,
        context=params.get("context") or None,
        poll_interval=numbers["poll"],
        lost_timeout=numbers["timeout"],
        payload_dir=params.get("payload") or None,
    )
