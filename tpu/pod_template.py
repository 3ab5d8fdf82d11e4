"""The pod template of a TPU job: its container (command, resources, security), node selection
and affinity, the payload mount, and the TPU/MEGASCALE environment wiring, as plain dicts.
Pure functions: no Kubernetes client, no Dask, no I/O.
"""

from __future__ import annotations

from typing import Any

from fray_dask.secrets import is_secret
from fray_dask.types import JobRequest
from tpu.k8s_names import JOB_LABEL, SLICE_JOB

__all__ = [
    "COMPLETION_INDEX",
    "JOBSET_JOB_INDEX",
    "MEGASCALE_PORT",
    "PAYLOAD_DIR",
    "PAYLOAD_FILE",
    "WIRED_ENV",
    "pod_spec",
]

PAYLOAD_DIR = "/var/run/fray"
PAYLOAD_FILE = "payload.pkl"
MEGASCALE_PORT = 8080
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOBSET_JOB_INDEX = "metadata.annotations['jobset.sigs.k8s.io/job-index']"
REGION_LABEL = "topology.kubernetes.io/region"
# Env names the manifests set themselves; env_vars may not override them.
WIRED_ENV = ("FRAY_JOB_NAME", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES") + tuple(
    f"MEGASCALE_{v}" for v in ("SLICE_ID", "NUM_SLICES", "PORT", "COORDINATOR_ADDRESS")
)


def pod_spec(
    request: JobRequest,
    image: str,
    name: str,
    command: list[str],
    env_vars: dict[str, str],
    *,
    with_payload: bool,
) -> dict[str, Any]:
    """The pod `spec` every host of the TPU `request` runs: one container "main" running `command`
    in `image` on a node of the slice's accelerator and topology. Its env is FRAY_JOB_NAME=`name`,
    the TPU_WORKER_* (and, for several slices, MEGASCALE_*) wiring, then `env_vars` (secret names
    as secretKeyRef to the Secret `<name>-env`). `with_payload` mounts the ConfigMap
    `<name>-payload` at PAYLOAD_DIR. The caller has checked the request: a TPU device, and
    env_vars that leave WIRED_ENV alone."""
    spec = request.resources.device.spec
    tpu = {"google.com/tpu": str(spec.chips_per_host)}
    requests = dict(tpu)
    if request.resources.cpu:
        requests["cpu"] = _quantity_cpu(request.resources.cpu)
    requests["memory"] = str(request.resources.ram_bytes)
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "command": command,
        "env": _env(request, name, env_vars),
        "resources": {"requests": requests, "limits": dict(tpu)},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": {
            "cloud.google.com/gke-tpu-accelerator": spec.accelerator,
            "cloud.google.com/gke-tpu-topology": spec.topology,
        },
        "tolerations": [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container],
    }
    workspace = request.environment.workspace if request.environment else None
    if workspace:
        container["workingDir"] = workspace
    affinity: dict[str, Any] = {}
    placement = _placement(request)
    if placement:
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": placement}]
            }
        }
    if spec.multi_host and request.resources.replicas == 1:
        # One multi-host slice is one GKE node pool: keep every pod of the Indexed Job in the
        # node pool of its first pod (a JobSet does this with its exclusive-topology annotation).
        affinity["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {JOB_LABEL: name}},
                    "topologyKey": "cloud.google.com/gke-nodepool",
                }
            ]
        }
    if affinity:
        pod["affinity"] = affinity
    if with_payload:
        mount = {"name": "payload", "mountPath": PAYLOAD_DIR, "readOnly": True}
        container["volumeMounts"] = [mount]
        pod["volumes"] = [{"name": "payload", "configMap": {"name": f"{name}-payload"}}]
    return pod


def _field_env(var: str, field_path: str) -> dict[str, Any]:
    return {"name": var, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _env(request: JobRequest, name: str, env_vars: dict[str, str]) -> list[dict[str, Any]]:
    """FRAY_JOB_NAME, the TPU and MEGASCALE wiring, then the user's env_vars (secrets by ref).

    Kubernetes expands `$(VAR)` in a value from the entries above it, which the JobSet's
    TPU_WORKER_HOSTNAMES uses for the slice index."""
    spec = request.resources.device.spec
    slices = request.resources.replicas
    env: list[dict[str, Any]] = [{"name": "FRAY_JOB_NAME", "value": name}]
    if spec.multi_host or slices > 1:
        env.append(_field_env("TPU_WORKER_ID", COMPLETION_INDEX))
    else:
        env.append({"name": "TPU_WORKER_ID", "value": "0"})
    if slices > 1:
        env += [
            _field_env("MEGASCALE_SLICE_ID", JOBSET_JOB_INDEX),
            {"name": "MEGASCALE_NUM_SLICES", "value": str(slices)},
            {"name": "MEGASCALE_PORT", "value": str(MEGASCALE_PORT)},
        ]
        # host 0 of slice 0: JobSet names child Jobs `<jobset>-<replicatedJob>-<j>`
        coordinator = f"{name}-{SLICE_JOB}-0-0.{name}:{MEGASCALE_PORT}"
        env.append({"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": coordinator})
        hosts = [f"{name}-{SLICE_JOB}-$(MEGASCALE_SLICE_ID)-{i}.{name}" for i in range(spec.hosts)]
    elif spec.multi_host:
        hosts = [f"{name}-{i}.{name}" for i in range(spec.hosts)]
    else:
        hosts = ["localhost"]
    env.append({"name": "TPU_WORKER_HOSTNAMES", "value": ",".join(hosts)})
    for var, value in env_vars.items():
        if is_secret(var):
            ref = {"name": f"{name}-env", "key": var}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": var, "value": value})
    return env


def _quantity_cpu(cpu: float) -> str:
    return str(int(cpu)) if float(cpu).is_integer() else f"{round(cpu * 1000)}m"


def _placement(request: JobRequest) -> list[dict[str, Any]]:
    """Node requirements from ResourceConfig: `preemptible=False` keeps off Spot and preemptible
    nodes (GKE labels them; on-demand nodes carry neither label), `regions` limits the region."""
    expressions: list[dict[str, Any]] = []
    if not request.resources.preemptible:
        for label in ("cloud.google.com/gke-spot", "cloud.google.com/gke-preemptible"):
            expressions.append({"key": label, "operator": "DoesNotExist"})
    if request.resources.regions:
        regions = list(request.resources.regions)
        expressions.append({"key": REGION_LABEL, "operator": "In", "values": regions})
    return expressions
