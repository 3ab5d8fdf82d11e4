"""The workload objects that run a TPU job's pod template: a batch/v1 Job (one single-host slice),
an Indexed Job with its headless Service (one multi-host slice) or a JobSet (several slices).
Pure functions to dicts: no Kubernetes client, no Dask, no I/O.
"""

from __future__ import annotations

from typing import Any

from fray_dask.types import JobRequest
from tpu.k8s_names import JOB_LABEL, SLICE_JOB, object_metadata

__all__ = ["EXCLUSIVE_TOPOLOGY", "workload_manifests"]

EXCLUSIVE_TOPOLOGY = "alpha.jobset.sigs.k8s.io/exclusive-topology"


def workload_manifests(
    request: JobRequest, name: str, namespace: str, labels: dict[str, str], pod: dict[str, Any]
) -> list[dict[str, Any]]:
    """The objects that run `pod` (a pod spec) for the TPU `request`, in creation order: a Job for
    one single-host slice, a headless Service and an Indexed Job for one multi-host slice, a
    JobSet for replicas > 1 slices. All are named `name` and carry `labels`."""
    spec = request.resources.device.spec
    if request.resources.replicas > 1:
        return [_jobset(request, name, namespace, labels, pod)]
    if spec.multi_host:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": object_metadata(name, namespace, labels),
            "spec": _indexed_job_spec(spec.hosts, name, labels, pod),
        }
        return [_headless_service(name, namespace, labels), job]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_metadata(name, namespace, labels),
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
    return [job]


def _disruption_rule(action: str) -> dict[str, Any]:
    return {"action": action, "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


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
        "metadata": object_metadata(name, namespace, labels),
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
    metadata = object_metadata(name, namespace, labels)
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
