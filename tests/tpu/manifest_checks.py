"""What the TPU manifest tests share: a request builder, accessors into the built objects, the
kubelet's env expansion, and validation against the official Kubernetes schemas (offline, through
kubernetes-validate; a JobSet by its v1alpha2 field list). Not a test module: no Dask, no cluster.
"""

from __future__ import annotations

import re

import kubernetes_validate

from fray_dask.types import Entrypoint, JobRequest, ResourceConfig, TpuConfig, create_environment

# The Kubernetes version whose strict schemas (unknown fields rejected) every object must pass.
K8S_VERSION = "1.31.0"
IMAGE = "us-docker.pkg.dev/proj/repo/train:1"
LABELS = {"app.kubernetes.io/managed-by": "fray-dask"}
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOBSET_INDEX = "metadata.annotations['jobset.sigs.k8s.io/job-index']"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# -- requests and accessors ------------------------------------------------------------------------


def request(
    tpu_type: str = "v6e-8",
    replicas: int = 1,
    *,
    name: str = "train",
    entrypoint: Entrypoint | None = None,
    env: dict[str, str] | None = None,
    **kwargs,
) -> JobRequest:
    resources = kwargs.pop("resources", None) or ResourceConfig(
        device=TpuConfig(type=tpu_type), replicas=replicas
    )
    return JobRequest(
        name=name,
        entrypoint=entrypoint or Entrypoint.from_binary("python", ["train.py", "--steps", "10"]),
        resources=resources,
        environment=create_environment(env_vars=env) if env is not None else None,
        **kwargs,
    )


def workload(manifests: list[dict]) -> dict:
    assert manifests[-1]["kind"] in ("Job", "JobSet")
    return manifests[-1]


def pod_template(manifests: list[dict]) -> dict:
    w = workload(manifests)
    if w["kind"] == "JobSet":
        return w["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    return w["spec"]["template"]


def container(manifests: list[dict]) -> dict:
    (c,) = pod_template(manifests)["spec"]["containers"]
    return c


def env_of(manifests: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(manifests)["env"]}


# -- validation ------------------------------------------------------------------------------------

# The jobset.x-k8s.io/v1alpha2 fields a JobSet may carry, level by level, written out from the
# JobSet API reference: no JobSet schema is available offline (kubernetes-validate ships only
# core kinds), so the wrapper is checked against this list and the Job template inside it is
# validated as a batch/v1 Job by the official schema.
JOBSET_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "metadata": {"name", "namespace", "labels", "annotations"},
    "spec": {
        "replicatedJobs",
        "network",
        "successPolicy",
        "failurePolicy",
        "startupPolicy",
        "suspend",
        "coordinator",
        "managedBy",
        "ttlSecondsAfterFinished",
    },
    "spec.network": {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"},
    "spec.replicatedJobs[]": {"name", "template", "replicas", "dependsOn"},
    "spec.replicatedJobs[].template": {"metadata", "spec"},
    "spec.failurePolicy": {"maxRestarts", "restartStrategy", "rules"},
    "spec.failurePolicy.rules[]": {"name", "action", "onJobFailureReasons", "targetReplicatedJobs"},
}

JOBSET_RULE_ACTIONS = {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"}

JOB_FAILURE_REASONS = {"PodFailurePolicy", "BackoffLimitExceeded", "MaxFailedIndexesExceeded"}


class JobSetInvalid(ValueError):
    pass


def _check_keys(obj: dict, path: str) -> None:
    if not isinstance(obj, dict):
        raise JobSetInvalid(f"{path or '<root>'} must be an object, got {obj!r}")
    unknown = set(obj) - JOBSET_FIELDS[path]
    if unknown:
        raise JobSetInvalid(f"unknown JobSet field(s) {sorted(unknown)} at {path or '<root>'}")


def validate_jobset(obj: dict) -> None:
    """Checks a JobSet field by field against the v1alpha2 names above, then validates each
    replicatedJob's template as a batch/v1 Job with the official schema."""
    _check_keys(obj, "")
    if (obj["apiVersion"], obj["kind"]) != ("jobset.x-k8s.io/v1alpha2", "JobSet"):
        raise JobSetInvalid(f"not a v1alpha2 JobSet: {obj['apiVersion']} {obj['kind']}")
    _check_keys(obj["metadata"], "metadata")
    spec = obj["spec"]
    _check_keys(spec, "spec")
    _check_keys(spec.get("network", {}), "spec.network")
    for rjob in spec["replicatedJobs"]:
        _check_keys(rjob, "spec.replicatedJobs[]")
        _check_keys(rjob["template"], "spec.replicatedJobs[].template")
        if not (isinstance(rjob["replicas"], int) and rjob["replicas"] >= 1):
            raise JobSetInvalid(f"replicas must be an int >= 1, got {rjob['replicas']!r}")
        if not DNS_LABEL.match(rjob["name"]):
            raise JobSetInvalid(f"replicatedJob name {rjob['name']!r} is not a DNS label")
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{obj['metadata']['name']}-{rjob['name']}-0"},
            **rjob["template"],
        }
        job["metadata"] = {**job["metadata"], **rjob["template"].get("metadata", {})}
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    policy = spec.get("failurePolicy", {})
    _check_keys(policy, "spec.failurePolicy")
    if not (isinstance(policy.get("maxRestarts", 0), int) and policy.get("maxRestarts", 0) >= 0):
        raise JobSetInvalid(f"maxRestarts must be an int >= 0, got {policy['maxRestarts']!r}")
    for rule in policy.get("rules", []):
        _check_keys(rule, "spec.failurePolicy.rules[]")
        if rule["action"] not in JOBSET_RULE_ACTIONS:
            raise JobSetInvalid(f"unknown failure rule action {rule['action']!r}")
        if not set(rule.get("onJobFailureReasons", [])) <= JOB_FAILURE_REASONS:
            raise JobSetInvalid(f"unknown job failure reasons in {rule!r}")


def validate_manifest(obj: dict) -> None:
    """Raises when `obj` is not a valid object: core kinds by the strict official schema of
    K8S_VERSION, a JobSet by validate_jobset; names must be DNS labels."""
    name = obj["metadata"]["name"]
    assert DNS_LABEL.match(name) and len(name) <= 63, name
    if obj["kind"] == "JobSet":
        validate_jobset(obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# -- the kubelet's env expansion -------------------------------------------------------------------


def expand_env(env: list[dict], fields: dict[str, str]) -> dict[str, str]:
    """Resolves a container env list as the kubelet does: fieldRefs from `fields`, `$(VAR)` from
    entries above. A stand-in for a real pod: no API server runs here."""
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m[1], m[0]), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            out[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out
