"""Kubernetes names and labels of a TPU job's objects, shared by the manifests, the launcher, the
API calls and the local emulation. Standard library only: no Kubernetes client, Dask or fray_dask.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

__all__ = [
    "JOB_LABEL",
    "K8S_NAME_MAX",
    "MANAGED_BY",
    "SLICE_JOB",
    "check_k8s_name",
    "k8s_name",
    "object_metadata",
]

# Room for the suffixes Kubernetes and JobSet add: pod hostnames `<name>-slice-<j>-<i>` and the
# label value `batch.kubernetes.io/job-name` must stay within 63 characters.
K8S_NAME_MAX = 40
MANAGED_BY = {"app.kubernetes.io/managed-by": "fray-dask"}
JOB_LABEL = "fray-dask/job"
SLICE_JOB = "slice"  # the JobSet's one replicatedJob

_HEX_SUFFIX = re.compile(r"^(.*)-([0-9a-f]{8})$")


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


def check_k8s_name(name: str) -> None:
    """Raises ValueError unless `name` is a DNS-1035 label of at most K8S_NAME_MAX characters,
    as k8s_name builds them."""
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


def object_metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """An object's `metadata`: its name, namespace and a copy of `labels`."""
    return {"name": name, "namespace": namespace, "labels": dict(labels)}
