"""GkeTpuCluster: TPU jobs as GKE workloads (a Job, an Indexed Job + Service, or a JobSet from
tpu.manifests) behind the fray_dask Cluster API: creating, watching (tpu.job_poller follows each
job's pods), stopping; and `cluster_from_params` for FRAY_CLUSTER_SPEC=gke?...

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
from fray_dask.types import JobId, JobRequest, JobStatus
from tpu.job_poller import JobPoller
from tpu.kube_api import READ_TIMEOUT, GkeApiError, KubeApi, creation_error, load_client
from tpu.manifests import (
    JOB_LABEL,
    build_manifests,
    callable_payload,
    k8s_name,
    secret_manifest,
)
from tpu.pods import JobState

__all__ = ["GkeApiError", "GkeTpuCluster", "cluster_from_params"]

logger = logging.getLogger("fray_dask")

LOST_TIMEOUT = 60.0  # API server out of reach this long: unfinished jobs fail
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
        self._poller = JobPoller(self._api, namespace, self._closed)
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
                    self._poller.poll(job)
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
            record.settle()
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
