"""The few Kubernetes API calls the GKE launcher makes (create, read, delete, list pods, stream a
log), as raw JSON through the official client, and their errors. With tpu/launcher.py, the only
modules that import `kubernetes` (inside functions). No Dask import.
"""

from __future__ import annotations

import contextlib
import json
import os
from functools import partial
from typing import Any

from fray_dask.secrets import mask
from tpu.k8s_names import JOB_LABEL

__all__ = ["GkeApiError", "KubeApi", "creation_error", "load_client"]

INSTALL = 'pip install "zephyr-dask[k8s]"'
CONNECT_TIMEOUT = 3.0  # seconds to open a connection to the API server
READ_TIMEOUT = 30.0  # seconds for an answer to one API call
LOG_READ_TIMEOUT = 120.0  # a silent log stream is reopened after this (lines already read skipped)
JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
PLURALS = {
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Job": "jobs",
    "JobSet": "jobsets",
}


class GkeApiError(RuntimeError):
    """The Kubernetes API server refused a request; `status` is its HTTP status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def kubernetes_module() -> Any:
    try:
        import kubernetes
    except ImportError as e:
        raise ImportError(f"GkeTpuCluster needs the Kubernetes client: {INSTALL}") from e
    return kubernetes


# -- the few API calls, as raw JSON -----------------------------------------------------------


class KubeApi:
    """The REST calls the launcher makes. Responses are read as plain JSON dicts (the same
    shapes as tpu.manifests' output); errors become GkeApiError or ConnectionError."""

    def __init__(self, api_client: Any, namespace: str):
        k = kubernetes_module().client
        self.ns = namespace
        self.host = api_client.configuration.host
        self.core = k.CoreV1Api(api_client)
        self.batch = k.BatchV1Api(api_client)
        self.custom = k.CustomObjectsApi(api_client)
        self.version = k.VersionApi(api_client)
        self.timeout = (CONNECT_TIMEOUT, READ_TIMEOUT)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(...) without preloading: the raw urllib3 response, or ApiException / an urllib3
        error as GkeApiError / ConnectionError."""
        ApiException = kubernetes_module().client.ApiException
        try:
            return fn(*args, _preload_content=False, **kwargs)
        except ApiException as e:
            raise GkeApiError(status_text(e), e.status) from None
        except Exception as e:  # urllib3: refused, timed out, DNS, TLS
            if type(e).__module__.startswith(("urllib3", "socket", "ssl")) or isinstance(
                e, OSError
            ):
                raise ConnectionError(
                    f"cannot reach the Kubernetes API server at {self.host} ({type(e).__name__}: "
                    f"{str(e)[:200]}); check the kubeconfig context (kubectl config "
                    "current-context, or pass context=...), or on GKE run `gcloud container "
                    "clusters get-credentials CLUSTER --location LOCATION`"
                ) from None
            raise

    def _json(self, fn: Any, *args: Any, **kwargs: Any) -> dict:
        return json.loads(self._call(fn, *args, _request_timeout=self.timeout, **kwargs).data)

    def check(self) -> None:
        self._json(self.version.get_code)

    def _verbs(self, kind: str) -> tuple[Any, Any, Any]:
        """create(body), read(name) and delete(name) of a kind in this namespace."""
        if kind == "JobSet":
            c, where = self.custom, (*JOBSET[:2], self.ns, JOBSET[2])
            return (
                partial(c.create_namespaced_custom_object, *where),
                partial(c.get_namespaced_custom_object, *where),
                partial(c.delete_namespaced_custom_object, *where),
            )
        api, noun = {
            "Secret": (self.core, "secret"),
            "ConfigMap": (self.core, "config_map"),
            "Service": (self.core, "service"),
            "Pod": (self.core, "pod"),
            "Job": (self.batch, "job"),
        }[kind]
        return (
            partial(getattr(api, f"create_namespaced_{noun}"), self.ns),
            lambda name, **kw: getattr(api, f"read_namespaced_{noun}")(name, self.ns, **kw),
            lambda name, **kw: getattr(api, f"delete_namespaced_{noun}")(name, self.ns, **kw),
        )

    def create(self, obj: dict) -> dict:
        return self._json(self._verbs(obj["kind"])[0], obj)

    def read(self, kind: str, name: str) -> dict | None:
        """The object, or None if it does not exist."""
        try:
            return self._json(self._verbs(kind)[1], name)
        except GkeApiError as e:
            if e.status == 404:
                return None
            raise

    def delete(self, kind: str, name: str, propagation: str | None = None) -> bool:
        """Deletes an object (and, by `propagation`, what it owns); False if already gone."""
        policy = {"propagation_policy": propagation} if propagation else {}
        try:
            self._json(self._verbs(kind)[2], name, **policy)
            return True
        except GkeApiError as e:
            if e.status == 404:
                return False
            raise

    def pods(self, job: str) -> list[dict]:
        selector = f"{JOB_LABEL}={job}"
        return self._json(self.core.list_namespaced_pod, self.ns, label_selector=selector)["items"]

    def log_stream(self, pod: str) -> Any:
        return self._call(
            self.core.read_namespaced_pod_log,
            pod,
            self.ns,
            container="main",
            follow=True,
            _request_timeout=(CONNECT_TIMEOUT, LOG_READ_TIMEOUT),
        )


def status_text(e: Any) -> str:
    """`HTTP 403 Forbidden: <the Status message>` from an ApiException."""
    message = ""
    with contextlib.suppress(Exception):
        message = json.loads(e.body or "{}").get("message", "")
    return f"HTTP {e.status} {e.reason}" + (f": {message}" if message else "")


def load_client(context: str | None) -> Any:
    """An ApiClient from the pod's service account when running in a pod (and no context was
    asked for), else from the kubeconfig (its current context, or `context`)."""
    k = kubernetes_module()
    cfg = k.client.Configuration()
    try:
        if context is not None:
            raise k.config.ConfigException("a kubeconfig context was asked for")
        k.config.load_incluster_config(client_configuration=cfg)
    except k.config.ConfigException:
        try:
            # KUBECONFIG as it is now (the client reads it once, at import)
            path = os.environ.get("KUBECONFIG") or None
            k.config.load_kube_config(path, context=context, client_configuration=cfg)
        except (k.config.ConfigException, OSError) as e:
            raise ConnectionError(
                f"no Kubernetes credentials: not running in a pod, and the kubeconfig "
                f"{os.environ.get('KUBECONFIG') or '~/.kube/config'}"
                f"{' context ' + repr(context) if context else ''} cannot be loaded ({e}); run "
                "`gcloud container clusters get-credentials CLUSTER --location LOCATION` or "
                "pass context= (kubectl config get-contexts)"
            ) from None
    cfg.retries = 1  # an unreachable server is reported in seconds, not after 4 attempts
    return k.client.ApiClient(cfg)


def creation_error(e: Exception, obj: dict, namespace: str, secrets: tuple[str, ...]) -> Exception:
    """The error for a failed create: the object, the HTTP status and the likely fix."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if isinstance(e, ConnectionError):
        return ConnectionError(f"creating {kind} {namespace}/{name}: {e}")
    status = getattr(e, "status", None)
    fixes = {
        401: "the credentials were refused; refresh them (gcloud container clusters "
        "get-credentials CLUSTER --location LOCATION)",
        403: f"these credentials may not create {PLURALS[kind]} in namespace {namespace}; "
        "apply deploy/k8s/rbac.yaml in that namespace (sed 's/namespace: default/namespace: "
        f"{namespace}/' deploy/k8s/rbac.yaml | kubectl apply -f -) and run as its service "
        "account fray-launcher",
        404: "install the JobSet controller (kubectl apply --server-side -f "
        "https://github.com/kubernetes-sigs/jobset/releases/download/v0.8.0/manifests.yaml)"
        if kind == "JobSet"
        else f"does namespace {namespace} exist? kubectl create namespace {namespace}",
        409: "an object of that name exists already; delete it or launch again (new job id)",
        422: "the API server rejected the manifest (tpu.render_yaml shows it; check the "
        "Kubernetes version)",
    }
    fix = fixes.get(status, "see the API server's message")
    text = f"creating {kind} {namespace}/{name} failed: {e}; {fix}"
    return GkeApiError(mask(text, secrets), status)
