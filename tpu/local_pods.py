"""A TPU JobRequest's pods as this machine runs them: the environment each GKE pod would get
(read from tpu.manifests and resolved as Kubernetes does), its network names pointed at 127.0.0.1.
Pure wiring: starts no process; imports no jax, Kubernetes or Dask.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fray_dask.cluster import replica_count
from fray_dask.types import JobRequest
from tpu.k8s_names import k8s_name
from tpu.manifests import build_manifests, secret_manifest
from tpu.pod_template import PAYLOAD_DIR, PAYLOAD_FILE

__all__ = ["LOCALHOST", "LocalPod", "expand", "local_pods", "resolve_env"]

logger = logging.getLogger("fray_dask")

LOCALHOST = "127.0.0.1"
# Pod annotations Kubernetes sets and the downward API exposes: an Indexed Job's pod index, and a
# JobSet child Job's index among its replicatedJob's replicas. Spelled here, not imported from
# tpu.manifests, so that a typo there shows up as an unknown fieldRef.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOBSET_JOB_INDEX = "jobset.sigs.k8s.io/job-index"
_ANNOTATION_REF = re.compile(r"metadata\.annotations\['([^']+)'\]")
# Where the manifests' callable command points; unused here (the payload travels in-process).
_PAYLOAD_PATH = f"{PAYLOAD_DIR}/{PAYLOAD_FILE}"


# -- Kubernetes' env resolution -------------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """`text` with Kubernetes' `$(VAR)` expansion applied, as the kubelet does for container env
    values, command and args: `$(VAR)` becomes env[VAR] when VAR is defined, else stays literal;
    `$$` is an escaped `$`; any other `$` (and an unclosed `$(`) is kept as is.

    >>> expand("$(A)-$(B)-$$(A)", {"A": "1"})
    '1-$(B)-$(A)'
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] != "$" or i + 1 == n:
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                var = text[i + 2 : close]
                out.append(env[var] if var in env else text[i : close + 1])
                i = close + 1
        else:
            out.append(text[i : i + 2])
            i += 2
    return "".join(out)


def resolve_env(
    entries: list[dict[str, Any]],
    annotations: Mapping[str, str],
    secrets: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """A container's `env` list as the process sees it, resolved in order like the kubelet does.

    `value` is expanded against the entries above it; `valueFrom.fieldRef` reads
    `metadata.annotations['...']` from `annotations` (the pod's); `valueFrom.secretKeyRef` reads
    `secrets[secret name][key]` (an `optional` ref to a missing key leaves the variable unset).
    Anything else, an annotation this pod does not carry or a missing secret raises ValueError:
    on Kubernetes the pod would get an empty value or fail to start.
    """
    env: dict[str, str] = {}
    for entry in entries:
        name = entry["name"]
        source = entry.get("valueFrom")
        if source is None:
            env[name] = expand(str(entry.get("value", "")), env)
            continue
        value = _value_from(name, source, annotations, secrets)
        if value is not None:
            env[name] = value
    return env


def _value_from(
    name: str,
    source: dict[str, Any],
    annotations: Mapping[str, str],
    secrets: Mapping[str, Mapping[str, str]],
) -> str | None:
    if "fieldRef" in source:
        path = source["fieldRef"].get("fieldPath", "")
        match = _ANNOTATION_REF.fullmatch(path)
        if match is None:
            raise ValueError(
                f"env {name} reads fieldRef {path!r}, which tpu-local does not emulate (it knows "
                f"metadata.annotations['{COMPLETION_INDEX}'] and ['{JOBSET_JOB_INDEX}']); wire "
                "the variable from those or as a literal value"
            )
        if match.group(1) not in annotations:
            raise ValueError(
                f"env {name} reads the annotation {match.group(1)!r}, which this pod does not "
                f"carry (it has: {', '.join(sorted(annotations)) or 'none'}); on Kubernetes the "
                "variable would be empty. Use an Indexed Job or JobSet, or a literal value"
            )
        return annotations[match.group(1)]
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        secret, key = ref.get("name"), ref.get("key")
        if secret in secrets and key in secrets[secret]:
            return secrets[secret][key]
        if ref.get("optional"):
            return None
        raise ValueError(
            f"env {name} reads key {key!r} of the Secret {secret!r}, which the job does not "
            f"create (Secrets: {', '.join(sorted(secrets)) or 'none'}); on Kubernetes the pod "
            "would fail with CreateContainerConfigError; refer to secret_manifest()'s Secret"
        )
    kinds = ", ".join(sorted(source))
    raise ValueError(
        f"env {name} uses valueFrom {kinds}, which tpu-local does not emulate (it knows fieldRef "
        "and secretKeyRef); use a literal value"
    )


# -- the pods of a job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalPod:
    """One pod of a TPU job as a local process: slice `slice_index`, host `host` (its replica
    index is slice_index * hosts + host), the resolved `env` with network names localised, and the
    container `command` with `$(VAR)` expanded."""

    slice_index: int
    host: int
    env: dict[str, str]
    command: tuple[str, ...]


@dataclass(frozen=True)
class _Workload:
    """What the kubelet would see of a job's pods: the container, their annotations, DNS names."""

    kind: str
    slices: int
    hosts: int
    container: dict[str, Any]
    dns: dict[str, tuple[int, int]]  # resolvable pod name -> (slice, host)

    def annotations(self, slice_index: int, host: int) -> dict[str, str]:
        if self.kind == "JobSet":
            return {COMPLETION_INDEX: str(host), JOBSET_JOB_INDEX: str(slice_index)}
        if self.kind == "IndexedJob":
            return {COMPLETION_INDEX: str(host)}
        return {}


def _workload(manifests: list[dict]) -> _Workload:
    """The pod layout Kubernetes (and the JobSet controller) would create from `manifests`."""
    kinds = [m for m in manifests if m.get("kind") in ("Job", "JobSet")]
    if len(kinds) != 1:
        found = [m.get("kind") for m in manifests]
        raise ValueError(f"expected one Job or JobSet among the manifests, got kinds {found}")
    workload = kinds[0]
    name, namespace = workload["metadata"]["name"], workload["metadata"].get("namespace", "default")
    services = {m["metadata"]["name"] for m in manifests if m.get("kind") == "Service"}
    if workload["kind"] == "JobSet":
        replicated = workload["spec"]["replicatedJobs"]
        if len(replicated) != 1:
            raise ValueError(
                f"JobSet {name!r} has {len(replicated)} replicatedJobs; tpu-local runs one"
            )
        job_spec, slices = replicated[0]["template"]["spec"], int(replicated[0].get("replicas", 1))
        network = workload["spec"].get("network", {})
        subdomain = network.get("subdomain") or name
        # JobSet names child Job j of replicatedJob r `<jobset>-<r>-<j>`; with DNS hostnames on,
        # its pod i is `<job>-<i>.<subdomain>` through the headless Service JobSet creates.
        job_names = [f"{name}-{replicated[0]['name']}-{j}" for j in range(slices)]
        resolvable = network.get("enableDNSHostnames", False)
        kind = "JobSet"
    else:
        job_spec, slices, job_names = workload["spec"], 1, [name]
        subdomain = job_spec["template"]["spec"].get("subdomain")
        resolvable = subdomain is not None and subdomain in services
        kind = "IndexedJob" if job_spec.get("completionMode") == "Indexed" else "Job"
    hosts = int(job_spec.get("completions", 1))
    pod = job_spec["template"]["spec"]
    containers = pod["containers"]
    container = next((c for c in containers if c.get("name") == "main"), containers[0])
    dns: dict[str, tuple[int, int]] = {}
    if resolvable and kind != "Job":
        for j, job in enumerate(job_names):
            for i in range(hosts):
                base = f"{job}-{i}.{subdomain}"
                for suffix in (
                    "",
                    f".{namespace}",
                    f".{namespace}.svc",
                    f".{namespace}.svc.cluster.local",
                ):
                    dns[base + suffix] = (j, i)
    return _Workload(kind, slices, hosts, container, dns)


class _Ports:
    """Distinct free TCP ports on 127.0.0.1, one per key; each socket stays bound until close()
    so that no two keys get the same port."""

    def __init__(self) -> None:
        self._by_key: dict[object, int] = {}
        self._sockets: list[socket.socket] = []

    def __getitem__(self, key: object) -> int:
        if key not in self._by_key:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            self._sockets.append(s)
            self._by_key[key] = s.getsockname()[1]
        return self._by_key[key]

    def close(self) -> None:
        for s in self._sockets:
            s.close()


def require_tpu(request: JobRequest) -> None:
    device = request.resources.device
    if device.kind != "tpu":
        raise ValueError(
            f"LocalTpuCluster (FRAY_CLUSTER_SPEC=tpu-local) runs TPU jobs only, and job "
            f"{request.name!r} asks for device {device!r}; run it with FRAY_CLUSTER_SPEC=local "
            "or dask"
        )


def local_pods(request: JobRequest, name: str | None = None) -> list[LocalPod]:
    """The pods GKE would run for a TPU `request`, as local processes, in replica order
    (slice-major). Each pod's env is `build_manifests(request, image="local")`'s container env
    resolved for that pod (see resolve_env; secrets from `secret_manifest`), then localised:

    - TPU_WORKER_HOSTNAMES: each name must be the DNS name of host i of the pod's slice (or
      "localhost" for a one-pod slice); it becomes 127.0.0.1, so the count is kept;
    - TPU_PROCESS_ADDRESSES (if set): `127.0.0.1:<port>`, a distinct free port per host;
    - MEGASCALE_COORDINATOR_ADDRESS: its host must be slice 0 host 0 (where JAX starts its
      coordinator); becomes `127.0.0.1:<free port>`, MEGASCALE_PORT the same port mapping;
    - JAX_COORDINATOR_PORT: one free port for the whole job; JAX_PLATFORMS=cpu unless env_vars
      set it.

    Fresh ports on every call. ValueError for a non-TPU request or wiring that could not work.
    """
    require_tpu(request)
    name = k8s_name(request.name) if name is None else name
    payload_url = _PAYLOAD_PATH if request.entrypoint.callable is not None else None
    manifests = build_manifests(request, image="local", name=name, payload_url=payload_url)
    workload = _workload(manifests)
    expected = replica_count(request)
    if workload.slices * workload.hosts != expected:
        raise ValueError(
            f"the manifests of job {request.name!r} run {workload.slices} x {workload.hosts} pods "
            f"but the request needs {expected} (replicas x hosts); the manifests are wrong"
        )
    secret = secret_manifest(request, name)
    secrets = {} if secret is None else {secret["metadata"]["name"]: secret["stringData"]}
    ports = _Ports()
    try:
        pods = []
        for slice_index in range(workload.slices):
            for host in range(workload.hosts):
                env = resolve_env(
                    list(workload.container.get("env", [])),
                    workload.annotations(slice_index, host),
                    secrets,
                )
                env = _localise(env, workload, slice_index, host, ports)
                words = [
                    *workload.container.get("command", []),
                    *workload.container.get("args", []),
                ]
                command = tuple(expand(str(word), env) for word in words)
                pods.append(LocalPod(slice_index, host, env, command))
    finally:
        ports.close()
    return pods


def _localise(
    env: dict[str, str], workload: _Workload, slice_index: int, host: int, ports: _Ports
) -> dict[str, str]:
    env = dict(env)

    def pod_of(hostname: str, var: str) -> tuple[int, int]:
        if hostname in ("localhost", LOCALHOST) and workload.hosts == 1:
            return slice_index, host  # a one-pod slice names itself
        if hostname not in workload.dns:
            short = [n for n in workload.dns if n.count(".") == 1][: workload.hosts]
            known = ", ".join(short) or "none (no DNS names)"
            raise ValueError(
                f"{var} of slice {slice_index} host {host} names {hostname!r}, which is no pod of "
                f"this {workload.kind}; its pods resolve as e.g. {known}"
            )
        return workload.dns[hostname]

    def check_list(var: str, value: str) -> list[str]:
        entries = value.split(",")
        for i, entry in enumerate(entries):
            hostname = entry.rsplit(":", 1)[0] if var == "TPU_PROCESS_ADDRESSES" else entry
            found = pod_of(hostname, var)
            if found != (slice_index, i):
                raise ValueError(
                    f"{var} of slice {slice_index} host {host} lists {hostname!r} (slice "
                    f"{found[0]} host {found[1]}) at position {i}; entry i must be host i of the "
                    "pod's own slice (the TPU runtime finds itself at position TPU_WORKER_ID, "
                    "JAX its coordinator at position 0)"
                )
        return entries

    if "TPU_WORKER_HOSTNAMES" in env:
        count = len(check_list("TPU_WORKER_HOSTNAMES", env["TPU_WORKER_HOSTNAMES"]))
        env["TPU_WORKER_HOSTNAMES"] = ",".join([LOCALHOST] * count)
    if "TPU_PROCESS_ADDRESSES" in env:
        count = len(check_list("TPU_PROCESS_ADDRESSES", env["TPU_PROCESS_ADDRESSES"]))
        env["TPU_PROCESS_ADDRESSES"] = ",".join(
            f"{LOCALHOST}:{ports['process', slice_index, i]}" for i in range(count)
        )
    if "MEGASCALE_COORDINATOR_ADDRESS" in env:
        hostname, _, port = env["MEGASCALE_COORDINATOR_ADDRESS"].rpartition(":")
        if not hostname:
            hostname, port = port, ""
        if pod_of(hostname, "MEGASCALE_COORDINATOR_ADDRESS") != (0, 0):
            raise ValueError(
                f"MEGASCALE_COORDINATOR_ADDRESS {env['MEGASCALE_COORDINATOR_ADDRESS']!r} is not "
                "slice 0 host 0, where JAX starts its coordinator (process 0); point it there"
            )
        address = LOCALHOST if not port else f"{LOCALHOST}:{ports['megascale', port]}"
        env["MEGASCALE_COORDINATOR_ADDRESS"] = address
    if "MEGASCALE_PORT" in env:
        env["MEGASCALE_PORT"] = str(ports["megascale", env["MEGASCALE_PORT"]])
    env["JAX_COORDINATOR_PORT"] = str(ports["jax"])
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env
