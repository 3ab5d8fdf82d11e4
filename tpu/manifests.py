"""A TPU JobRequest as Kubernetes manifests (plain dicts): checks the request, picks the command and
payload, and puts the pod (tpu.pod_template) in its workload (tpu.workloads); the Secret; YAML.
Pure functions: no Kubernetes client, no Dask, no I/O; `yaml` is imported only by render_yaml.
"""

from __future__ import annotations

import base64
from typing import Any

from fray_dask.secrets import is_secret, secret_values
from fray_dask.types import JobRequest
from tpu.k8s_names import (
    JOB_LABEL,
    K8S_NAME_MAX,
    MANAGED_BY,
    check_k8s_name,
    k8s_name,
    object_metadata,
)
from tpu.pod_template import MEGASCALE_PORT, PAYLOAD_DIR, PAYLOAD_FILE, WIRED_ENV, pod_spec
from tpu.workloads import workload_manifests

# The names and layout constants come from tpu.k8s_names and tpu.pod_template; they are names of
# this module too, as before the split.
__all__ = [
    "JOB_LABEL",
    "K8S_NAME_MAX",
    "MAX_CONFIGMAP_PAYLOAD",
    "MEGASCALE_PORT",
    "PAYLOAD_DIR",
    "PAYLOAD_FILE",
    "build_manifests",
    "callable_payload",
    "k8s_name",
    "render_yaml",
    "secret_manifest",
]

# A ConfigMap holds at most 1 MiB; keep a margin for metadata.
MAX_CONFIGMAP_PAYLOAD = 900 * 1024
# payload_url forms the bootstrap can read: object stores and HTTP through fsspec, or a path that
# the image or a mounted volume provides (an absolute path or file://).
PAYLOAD_URL_SCHEMES = ("gs", "gcs", "s3", "http", "https", "file")


# -- payloads -------------------------------------------------------------------------------------


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
    check_k8s_name(name)
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

    labels = {**MANAGED_BY, JOB_LABEL: name}
    pod = pod_spec(request, image, name, command, env_vars, with_payload=payload is not None)
    manifests: list[dict] = []
    if payload is not None:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": object_metadata(f"{name}-payload", namespace, labels),
                "immutable": True,
                "binaryData": {PAYLOAD_FILE: base64.b64encode(payload).decode("ascii")},
            }
        )
    return manifests + workload_manifests(request, name, namespace, labels, pod)


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
        "metadata": object_metadata(f"{name}-env", namespace, {**MANAGED_BY, JOB_LABEL: name}),
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


# -- checks ---------------------------------------------------------------------------------------


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
