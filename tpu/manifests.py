"""A TPU JobRequest as Kubernetes manifests (plain dicts): a Job, an Indexed Job + headless Service,
or a JobSet, with the TPU/MEGASCALE environment wiring. Pure functions: no Kubernetes client, no
Dask, no I/O; `yaml` is imported only by render_yaml.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fray_dask.secrets import is_secret, secret_values
from fray_dask.types import JobRequest

__all__ = [
    "K8S_NAME_MAX",
    "MAX_CONFIGMAP_PAYLOAD",
    "MEGASCALE_PORT",
    "PAYLOAD_DIR",
    "build_manifests",
    "callable_payload",
    "k8s_name",
    "render_yaml",
    "secret_manifest",
]

# Room for the suffixes Kubernetes and JobSet add: pod hostnames `<name>-slice-<j>-<i>` and the
# label value `batch.kubernetes.io/job-name` must stay within 63 characters.
K8S_NAME_MAX = 40
# A ConfigMap holds at most 1 MiB; keep a margin for metadata.
MAX_CONFIGMAP_PAYLOAD = 900 * 1024
PAYLOAD_DIR = "/var/run/fray"
PAYLOAD_FILE = "payload.pkl"
MEGASCALE_PORT = 8080
# payload_url forms the bootstrap can read: object stores and HTTP through fsspec, or a path that
# the image or a mounted volume provides (an absolute path or file://).
PAYLOAD_URL_SCHEMES = ("gs", "gcs", "s3", "http", "https", "file")

MANAGED_BY = {"app.kubernetes.io/managed-by": "fray-dask"}
JOB_LABEL = "fray-dask/job"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOBSET_JOB_INDEX = "metadata.annotations['jobset.sigs.k8s.io/job-index']"
EXCLUSIVE_TOPOLOGY = "alpha.jobset.sigs.k8s.io/exclusive-topology"
SLICE_JOB = "slice"  # the JobSet's one replicatedJob
REGION_LABEL = "topology.kubernetes.io/region"
# Env names the manifests set themselves; env_vars may not override them.
WIRED_ENV = ("FRAY_JOB_NAME", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES") + tuple(
    f"MEGASCALE_{v}" for v in ("SLICE_ID", "NUM_SLICES", "PORT", "COORDINATOR_ADDRESS")
)

_HEX_SUFFIX = re.compile(r"^(.*)-([0-9a-f]{8})$")


# -- names and payloads ---------------------------------------------------------------------------


def k8s_name(job_id: str) -> str:
    """A Kubernetes object name for a job id or name: a DNS-1035 label (lowercase letters, digits
    and '-', starting with a letter, ending with a letter or digit), at most K8S_NAME_MAX chars.

    Other characters become '-'. A job id's 8-hex suffix (`train-1a2b3c4d`) survives shortening;
    a long name without one gets a hash of the whole name as its suffix, so two long names that
    share a prefix stay distinct. A leading digit gets a "job-" prefix (Service names must start
    with a letter). Example: `k8s_name("My_Job.v2-1a2b3c4d") == "my-job-v2-1a2b3c4d"`.
    """
    if not isinstance(job_id, str):
        raise TypeError(f"k8s_name needs a job id str, got {type(job_id).__name__} {job_id!r}")
    clean = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")
    if not clean:
        raise ValueError(
            f"job id {job_id!r} has no letters or digits to build a Kubernetes name from; "
            "name the job with letters and digits"
        )
    if clean[0].isdigit():
        clean = f"job-{clean}"
    if len(clean) <= K8S_NAME_MAX:
        return clean
    match = _HEX_SUFFIX.match(clean)
    if match:
        stem, suffix = match.groups()
    else:
        stem, suffix = clean, hashlib.sha1(job_id.encode()).hexdigest()[:8]
    stem = stem[: K8S_NAME_MAX - len(suffix) - 1].rstrip("-")
    return f"{stem}-{suffix}"


def callable_payload(request: JobRequest) -> bytes:
    """cloudpickle of `(fn, args, kwargs)` for the request's callable entrypoint: what
    `python -m tpu.run` loads. ValueError for a binary entrypoint, or when the callable or its
    arguments cannot be pickled (the message names the job, the callable and the cause)."""
    ep = request.entrypoint
    if ep.callable is None:
        raise ValueError(
            f"job {request.name!r} runs the binary {ep.description!r}, which has no payload; "
            "only a callable entrypoint is pickled"
        )
    # The payload and error every cluster uses (imported here: this module stays light).
    from fray_dask.process import serialize_entrypoint

    return serialize_entrypoint(request)


# -- the manifests --------------------------------------------------------------------------------


def build_manifests(
    request: JobRequest,
    image: str,
    *,
    namespace: str = "default",
    name: str | None = None,
    payload_url: str | None = None,
) -> list[dict]:
    """The Kubernetes objects that run a TPU `request` in `image`, in creation order.

    - ConfigMap `<name>-payload` holding the pickled callable (only for a callable entrypoint
      without `payload_url`; the caller uploads `callable_payload(request)` to `payload_url`);
    - headless Service `<name>` (only for a multi-host slice, replicas == 1);
    - the workload: a batch/v1 Job (one single-host slice), an Indexed Job (one multi-host
      slice) or a jobset.x-k8s.io/v1alpha2 JobSet (replicas > 1 slices).

    `name` defaults to `k8s_name(request.name)`. Secret env vars appear only as secretKeyRef to
    the Secret `<name>-env` that `secret_manifest` returns. Raises ValueError, before building
    anything, for a non-TPU device, an empty image, a bad payload_url, an unpicklable or too large
    callable, env_vars that override the wired names, or a secret value written into the command.
    Kubernetes expands `$(VAR)` in a binary's args from the container env (`$$(VAR)` escapes).
    `image` None or empty falls back to the environment's `docker_image` (the launcher passes
    its choice: docker_image, else the cluster's image). `workspace` becomes the container's
    workingDir; `pip_packages` and `extras` are not applied here: the image must hold what the job
    needs (GkeTpuCluster refuses them).
    """
    device = request.resources.device
    if device.kind != "tpu":
        raise ValueError(
            f"job {request.name!r} asks for device {device!r}, but GKE TPU manifests need a TPU; "
            "use ResourceConfig(device=TpuConfig(type='v5litepod-16')) or another cluster"
        )
    if not image and request.environment is not None:
        image = request.environment.docker_image
    if not isinstance(image, str) or not image.strip():
        raise ValueError(
            f"job {request.name!r} has no container image (got {image!r}); "
            "pass image= or EnvironmentConfig(docker_image=...)"
        )
    name = k8s_name(request.name) if name is None else name
    _check_name(name)
    env_vars = dict(request.environment.env_vars) if request.environment else {}
    wired = [k for k in env_vars if k in WIRED_ENV]
    if wired:
        raise ValueError(
            f"job {request.name!r} sets {', '.join(wired)} in env_vars, but the manifests wire "
            f"these from the slice layout; remove them from env_vars"
        )
    ep = request.entrypoint
    if ep.callable is None:
        if payload_url is not None:
            raise ValueError(
                f"job {request.name!r} runs the binary {ep.description!r}, but payload_url="
                f"{payload_url!r} was given; payload_url carries a callable, drop it"
            )
        command = [ep.binary, *ep.args]
        payload = None
    else:
        payload = callable_payload(request)
        if payload_url is not None:
            _check_payload_url(payload_url)
            command = ["python", "-m", "tpu.run", payload_url]
            payload = None  # the caller uploads it; it is not part of the manifests
        else:
            if len(payload) > MAX_CONFIGMAP_PAYLOAD:
                raise ValueError(
                    f"job {request.name!r}: the pickled callable is {len(payload)} bytes, more "
                    f"than the {MAX_CONFIGMAP_PAYLOAD} bytes (900 KiB) a ConfigMap can carry; "
                    "upload callable_payload(request) and pass "
                    "payload_url='gs://bucket/path/payload.pkl' (GkeTpuCluster does that with "
                    "payload_dir='gs://bucket/prefix', &payload= in its spec), or pass paths "
                    "instead of data"
                )
            command = ["python", "-m", "tpu.run", f"{PAYLOAD_DIR}/{PAYLOAD_FILE}"]
    _check_no_secret_values(request.name, env_vars, command, payload)

    spec = device.spec
    slices = request.resources.replicas
    labels = {**MANAGED_BY, JOB_LABEL: name}
    pod = _pod_spec(request, image, name, command, env_vars, with_payload=payload is not None)
    manifests: list[dict] = []
    if payload is not None:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _metadata(f"{name}-payload", namespace, labels),
                "immutable": True,
                "binaryData": {PAYLOAD_FILE: base64.b64encode(payload).decode("ascii")},
            }
        )
    if slices > 1:
        manifests.append(_jobset(request, name, namespace, labels, pod))
    elif spec.multi_host:
        manifests.append(_headless_service(name, namespace, labels))
        manifests.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": _metadata(name, namespace, labels),
                "spec": _indexed_job_spec(spec.hosts, name, labels, pod),
            }
        )
    else:
        manifests.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": _metadata(name, namespace, labels),
                "spec": {
                    "completions": 1,
                    "parallelism": 1,
                    "backoffLimit": request.max_retries_failure,
                    # A preempted pod is replaced without spending the failure budget; the
                    # launcher caps preemptions at max_retries_preemption by counting them.
                    "podFailurePolicy": {"rules": [_disruption_rule("Ignore")]},
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                },
            }
        )
    return manifests


def secret_manifest(request: JobRequest, name: str, namespace: str = "default") -> dict | None:
    """The Secret `<name>-env` (stringData) holding the request's secret env vars (names such as
    HF_TOKEN, see fray_dask.secrets), which the pods read through secretKeyRef; None when the
    request has none. The launcher creates it apart from build_manifests' objects."""
    env_vars = dict(request.environment.env_vars) if request.environment else {}
    secrets = {k: v for k, v in env_vars.items() if is_secret(k)}
    if not secrets:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(f"{name}-env", namespace, {**MANAGED_BY, JOB_LABEL: name}),
        "type": "Opaque",
        "stringData": secrets,
    }


def render_yaml(manifests: list[dict]) -> str:
    """The manifests as one YAML stream for `kubectl apply -f -`: documents separated by "---",
    keys in insertion order (apiVersion, kind, metadata, spec first), no YAML anchors even where
    a dict is shared. Same input, same bytes."""
    try:
        import yaml
    except ImportError as e:
        raise ImportError("render_yaml needs PyYAML: pip install pyyaml") from e

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return "---\n".join(yaml.dump(m, Dumper=Dumper, sort_keys=False) for m in manifests)


# -- pieces ---------------------------------------------------------------------------------------


def _metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels)}


def _disruption_rule(action: str) -> dict[str, Any]:
    return {"action": action, "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


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


def _pod_spec(
    request: JobRequest,
    image: str,
    name: str,
    command: list[str],
    env_vars: dict[str, str],
    *,
    with_payload: bool,
) -> dict[str, Any]:
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


def _indexed_job_spec(
    hosts: int, name: str, labels: dict[str, str], pod: dict[str, Any]
) -> dict[str, Any]:
    """One slice as an Indexed Job: pod i is host i (hostname `<job>-<i>`). Any failure fails
    the whole Job at once (backoffLimit 0): a crash with reason BackoffLimitExceeded, a
    preemption with reason PodFailurePolicy, so the gang is restarted as a whole."""
    return {
        "completionMode": "Indexed",
        "completions": hosts,
        "parallelism": hosts,
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [_disruption_rule("FailJob")]},
        "template": {"metadata": {"labels": dict(labels)}, "spec": {**pod, "subdomain": name}},
    }


def _headless_service(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "clusterIP": "None",
            # Hosts must resolve each other while they start, before any is Ready.
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: name},
        },
    }


def _jobset(
    request: JobRequest, name: str, namespace: str, labels: dict[str, str], pod: dict[str, Any]
) -> dict[str, Any]:
    """Several slices: one replicatedJob "slice" of Indexed Jobs. A crash spends maxRestarts; a
    preemption (child Job failed by its podFailurePolicy) restarts without spending it, and the
    launcher caps those restarts at max_retries_preemption."""
    metadata = _metadata(name, namespace, labels)
    # One slice per node pool: two slices never share a pool's TPU hosts.
    metadata["annotations"] = {EXCLUSIVE_TOPOLOGY: "cloud.google.com/gke-nodepool"}
    spec = request.resources.device.spec
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": metadata,
        "spec": {
            "network": {"enableDNSHostnames": True, "subdomain": name},
            "replicatedJobs": [
                {
                    "name": SLICE_JOB,
                    "replicas": request.resources.replicas,
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": _indexed_job_spec(spec.hosts, name, labels, pod),
                    },
                }
            ],
            "failurePolicy": {
                "maxRestarts": request.max_retries_failure,
                "rules": [
                    {
                        "name": "preemption",
                        "action": "RestartJobSetAndIgnoreMaxRestarts",
                        "onJobFailureReasons": ["PodFailurePolicy"],
                    }
                ],
            },
        },
    }


# -- checks ---------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if (
        not isinstance(name, str)
        or len(name) > K8S_NAME_MAX
        or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    ):
        raise ValueError(
            f"Kubernetes name {name!r} must be a DNS-1035 label of at most {K8S_NAME_MAX} "
            "characters (lowercase letters, digits, '-', starting with a letter); "
            "build it with k8s_name(job_id)"
        )


def _check_payload_url(url: str) -> None:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in PAYLOAD_URL_SCHEMES or (not scheme and url.startswith("/")):
        return
    raise ValueError(
        f"payload_url {url!r} is not one the pod can read: use gs://, gcs://, s3://, http(s)://, "
        "file:// or an absolute path (on a volume the image or pod provides)"
    )


def _check_no_secret_values(
    job: str, env_vars: dict[str, str], command: list[str], payload: bytes | None
) -> None:
    """A secret's value may reach the pod only through the Secret, never as manifest text."""
    for value in secret_values(env_vars):
        var = next(k for k, v in env_vars.items() if v == value and is_secret(k))
        if any(value in word for word in command):
            raise ValueError(
                f"job {job!r}: the command contains the value of the secret {var}, which would "
                f"be stored in the manifest; write $({var}) instead (Kubernetes expands it)"
            )
        if payload is not None and value.encode() in payload:
            raise ValueError(
                f"job {job!r}: the pickled callable or its arguments contain the value of the "
                f"secret {var}, which would be stored in a ConfigMap; read os.environ[{var!r}] "
                "inside the function instead"
            )
