"""The `kube?name=...&workers=N&image=...&memory=8GB` spec of a Dask cluster on Kubernetes and the
DaskCluster manifest the dask-kubernetes operator runs for it. Pure: no Kubernetes, no Dask client.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass, fields
from importlib import metadata
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fray_dask.sizes import format_size, parse_size

__all__ = [
    "DEFAULT_IMAGE",
    "KubeSpec",
    "dask_cluster_manifest",
    "parse_kube_spec",
    "render_yaml",
    "worker_resources",
]

SCHEME = "kube"
INSTALL = 'pip install "zephyr-dask[k8s]"'
README = "deploy/k8s/README.md"
OPERATOR_INSTALL = (
    "helm install --repo https://helm.dask.org --create-namespace -n dask-operator "
    "--generate-name dask-kubernetes-operator"
)
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
WORKER_DASHBOARD_PORT = 8788
# The scheduler's pod: its memory grows with the number of tasks in flight, not with the data.
SCHEDULER_RESOURCES = {"requests": {"cpu": "1", "memory": "2G"}, "limits": {"memory": "4G"}}
# The dask image has no user of its own; any non-root uid can run dask (it writes only to /tmp).
RUN_AS = 1000
_MIN_MEMORY = 256 * 10**6
# DNS-1123 label, short enough for "<name>-scheduler" (63) as dask-kubernetes requires.
_NAME = re.compile(r"^(?=.{1,53}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAMESPACE = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _default_image() -> str:
    """The stock dask image of the installed `distributed` and this Python: the scheduler and
    workers must speak the client's protocol, and cloudpickled functions need the same Python."""
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    with contextlib.suppress(metadata.PackageNotFoundError):
        version = metadata.version("distributed")
        if re.fullmatch(r"\d+\.\d+\.\d+", version):  # a release: the image tag exists
            return f"ghcr.io/dask/dask:{version}-{python}"
    return f"ghcr.io/dask/dask:latest-{python}"


DEFAULT_IMAGE = _default_image()


@dataclass(frozen=True)
class KubeSpec:
    """A Dask cluster on Kubernetes: `workers` pods of `cpu` CPUs (threads) and `memory` bytes,
    plus `gpu` NVIDIA GPUs each, from `image`, in `namespace`. `timeout` (s) bounds the start.
    `preemptible=False` says the workers run on nodes that are not preempted (they advertise
    NON_PREEMPTIBLE, which fray jobs and actors with preemptible=False need)."""

    name: str = "zephyr"
    workers: int = 2
    image: str = DEFAULT_IMAGE
    memory: int = 8 * 10**9
    cpu: int = 1
    namespace: str = "default"
    timeout: float = 300.0
    gpu: int = 0
    preemptible: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.memory, str):  # KubeSpec(memory="16GB") as in the spec string
            object.__setattr__(self, "memory", parse_size(self.memory, what="kube spec memory"))
        _check(self)

    @property
    def text(self) -> str:
        """The canonical `kube?...` spec (every parameter, fixed order): parses back to `self`."""
        values = {
            "name": self.name,
            "workers": str(self.workers),
            "image": self.image,
            "memory": _size_text(self.memory),
            "cpu": str(self.cpu),
            "namespace": self.namespace,
            "timeout": f"{self.timeout:g}",
            "gpu": str(self.gpu),
            "preemptible": "true" if self.preemptible else "false",
        }
        return f"{SCHEME}?" + "&".join(f"{k}={quote(v, safe=':/@')}" for k, v in values.items())


PARAMETERS = tuple(f.name for f in fields(KubeSpec))
FORM = "kube?name=NAME&workers=N&image=IMAGE&memory=8GB[&cpu=1&namespace=default&timeout=300]"


def _size_text(n: int) -> str:
    """`n` bytes as "8g" when that is exact, else the number of bytes."""
    short = format_size(n)
    return short if parse_size(short) == n else str(n)


def _bad(param: str, value: Any, rule: str, fix: str) -> ValueError:
    return ValueError(f"kube spec {param}={value!r} {rule}; {fix}")


def _check(spec: KubeSpec) -> None:
    label = "use lowercase letters, digits and '-', starting and ending with a letter or digit"
    if not isinstance(spec.name, str) or not _NAME.match(spec.name):
        rule = "is not a DNS-1123 label of at most 53 characters (the Service is <name>-scheduler)"
        raise _bad("name", spec.name, rule, f"{label}, e.g. name=zephyr")
    if not isinstance(spec.namespace, str) or not _NAMESPACE.match(spec.namespace):
        rule = "is not a Kubernetes namespace name"
        raise _bad("namespace", spec.namespace, rule, f"{label}, e.g. namespace=default")
    if not isinstance(spec.image, str) or not spec.image.strip() or re.search(r"\s", spec.image):
        fix = "write e.g. image=ghcr.io/you/zephyr:1.0 (an image with zephyr-dask installed)"
        raise _bad("image", spec.image, "is not a container image reference", fix)
    for param, least in (("workers", 1), ("cpu", 1), ("gpu", 0)):
        value = getattr(spec, param)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise _bad(param, value, f"is not a whole number >= {least}", f"write e.g. {param}=2")
    if isinstance(spec.memory, bool) or not isinstance(spec.memory, int):
        raise _bad("memory", spec.memory, "is not a number of bytes", "write e.g. memory=8GB")
    if spec.memory < _MIN_MEMORY:
        fix = "write e.g. memory=8GB (8e9 bytes) or memory=8Gi (8 * 2**30 bytes)"
        raise _bad(
            "memory", _size_text(spec.memory), "is less than a Dask worker needs (256MB)", fix
        )
    if isinstance(spec.timeout, bool) or not isinstance(spec.timeout, int | float):
        raise _bad("timeout", spec.timeout, "is not a number of seconds", "write e.g. timeout=300")
    if not spec.timeout > 0:
        raise _bad("timeout", spec.timeout, "is not > 0 seconds", "write e.g. timeout=300")
    if not isinstance(spec.preemptible, bool):
        raise _bad("preemptible", spec.preemptible, "is not true or false", "preemptible=false")


def _params_of(text: str) -> dict[str, str]:
    parts = urlsplit(text.strip())
    scheme = parts.path or parts.scheme
    if scheme != SCHEME or parts.netloc or parts.fragment:
        raise ValueError(f"{text!r} is not a kube spec; write {FORM}")
    query = parse_qs(parts.query, keep_blank_values=True)
    repeated = sorted(k for k, v in query.items() if len(v) > 1)
    if repeated:
        raise ValueError(
            f"kube spec {text!r} gives {', '.join(repeated)} more than once; give each once"
        )
    return {k: v[0] for k, v in query.items()}


def _integer(param: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _bad(param, text, "is not a whole number", f"write e.g. {param}=2") from None


def parse_kube_spec(text_or_params: str | dict[str, str]) -> KubeSpec:
    """A KubeSpec from `"kube?name=x&workers=4&image=...&memory=16GB"` or from its query
    parameters (as `fray_dask.current` passes them). Missing parameters take KubeSpec's defaults.

    Raises ValueError naming the parameter, the value and a fix for an unknown parameter, a
    repeated one, or a bad value (memory: "8GB"/"8g" = 8e9 bytes, "8Gi" = 8 * 2**30).
    """
    if isinstance(text_or_params, str):
        params = _params_of(text_or_params)
    elif isinstance(text_or_params, dict):
        params = dict(text_or_params)
    else:
        raise TypeError(f"parse_kube_spec needs a str or dict, got {type(text_or_params).__name__}")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(
            f"kube spec does not take {', '.join(unknown)} (its parameters: "
            f"{', '.join(PARAMETERS)}); write {FORM}"
        )
    values: dict[str, Any] = {}
    for key, raw in params.items():
        text = raw.strip()
        if key in ("workers", "cpu", "gpu"):
            values[key] = _integer(key, text)
        elif key == "memory":
            values[key] = parse_size(text, what="kube spec memory")
        elif key == "timeout":
            try:
                values[key] = float(text)
            except ValueError:
                raise _bad(key, raw, "is not a number of seconds", "write timeout=300") from None
        elif key == "preemptible":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise _bad(key, raw, "is not true or false", "write preemptible=false")
            values[key] = text.lower() in ("true", "1", "yes")
        else:
            values[key] = text
    return KubeSpec(**values)


# -- the manifest (pure) ----------------------------------------------------------------------


def worker_resources(spec: KubeSpec) -> dict[str, int]:
    """The Dask resources each worker advertises: what zephyr's DaskBackend and fray_dask
    annotate tasks with (CPU, MEMORY in bytes, GPU, NON_PREEMPTIBLE)."""
    out = {"CPU": spec.cpu, "MEMORY": spec.memory}
    if spec.gpu:
        out["GPU"] = spec.gpu
    if not spec.preemptible:
        out["NON_PREEMPTIBLE"] = 1
    return out


# The helpers below return new objects on every call: the manifest shares none (no YAML anchors).
def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _health() -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http-dashboard"}}


def dask_cluster_manifest(spec: KubeSpec) -> dict[str, Any]:
    """The `kubernetes.dask.org/v1` DaskCluster for the dask-kubernetes operator.

    Scheduler: `dask scheduler` with ports tcp-comm 8786 and http-dashboard 8787, probes on
    /health, and a ClusterIP Service `<name>-scheduler` exposing both. One worker group of
    `spec.workers` pods running `dask worker --nthreads <cpu> --memory-limit <bytes> --resources
    CPU=<cpu>,MEMORY=<bytes>[,GPU=<gpu>][,NON_PREEMPTIBLE=1]`, with container requests = limits
    of the same cpu, memory and GPUs. Pods run as uid 1000 without privilege escalation.
    """
    resources = worker_resources(spec)
    advertised = ",".join(f"{k}={v}" for k, v in resources.items())
    amounts = {"cpu": str(spec.cpu), "memory": str(spec.memory)}
    if spec.gpu:
        amounts["nvidia.com/gpu"] = str(spec.gpu)
    # The operator sets DASK_WORKER_NAME and DASK_SCHEDULER_ADDRESS (the scheduler to join).
    args = [
        "dask", "worker", "--name", "$(DASK_WORKER_NAME)",
        "--dashboard", "--dashboard-address", str(WORKER_DASHBOARD_PORT),
        "--nthreads", str(spec.cpu), "--memory-limit", str(spec.memory),
        "--resources", advertised,
    ]  # fmt: skip
    worker = {
        "name": "worker",
        "image": spec.image,
        "args": args,
        "ports": [
            {"name": "http-dashboard", "containerPort": WORKER_DASHBOARD_PORT, "protocol": "TCP"}
        ],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "securityContext": _container_security(),
    }
    scheduler = {
        "name": "scheduler",
        "image": spec.image,
        "args": ["dask", "scheduler", "--host", "0.0.0.0"],
        # As on the embedded cluster: a task lost with its worker fails at once and the driver
        # (zephyr's max_retries, fray's retry budgets) decides whether to run it again.
        "env": [{"name": "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "value": "0"}],
        "ports": [
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {**_health(), "initialDelaySeconds": 0, "periodSeconds": 2},
        "livenessProbe": {**_health(), "initialDelaySeconds": 15, "periodSeconds": 20},
        "resources": {k: dict(v) for k, v in SCHEDULER_RESOURCES.items()},
        "securityContext": _container_security(),
    }
    service_ports = [
        {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT, "targetPort": "tcp-comm"},
        {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT,
         "targetPort": "http-dashboard"},
    ]  # fmt: skip
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": spec.name, "namespace": spec.namespace},
        "spec": {
            "idleTimeout": 0,
            "worker": {
                "replicas": spec.workers,
                "spec": {"securityContext": _pod_security(), "containers": [worker]},
            },
            "scheduler": {
                "spec": {"securityContext": _pod_security(), "containers": [scheduler]},
                "service": {
                    "type": "ClusterIP",
                    "selector": {
                        "dask.org/cluster-name": spec.name,
                        "dask.org/component": "scheduler",
                    },
                    "ports": service_ports,
                },
            },
        },
    }


# deploy/k8s/daskcluster.yaml: every default but a fixed image, so the file does not change with
# the distributed and Python versions of whoever renders it.
DEPLOY_SPEC = "kube?image=ghcr.io/dask/dask:2026.8.0-py3.11"
RENDER_COMMAND = f"python -m fray_dask.kube --render '{DEPLOY_SPEC}' > deploy/k8s/daskcluster.yaml"


def render_yaml(spec: KubeSpec) -> str:
    """The DaskCluster of `spec` as YAML, keys in manifest order, under a header saying how it
    was made (deploy/k8s/daskcluster.yaml is this for DEPLOY_SPEC)."""
    import yaml

    header = (
        "# A Dask cluster for the dask-kubernetes operator: kubectl apply -f <this file>.\n"
        f"# Generated from {spec.text}\n"
        "# by `python -m fray_dask.kube --render SPEC`; edit fray_dask/kube_spec.py\n"
        "# and re-render deploy/k8s/daskcluster.yaml: a test checks that they agree.\n"
    )
    body = yaml.safe_dump(dask_cluster_manifest(spec), sort_keys=False, width=100)
    return header + body
