"""Tests of tpu/manifests.py: the Job / Indexed Job / JobSet shapes, env wiring, secrets, errors,
YAML rendering, and validation of every object against the official Kubernetes schemas.

Pure: no Dask, no API server (kubernetes-validate's offline JSON schemas stand in for it).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import threading

import cloudpickle
import kubernetes_validate
import pytest
import yaml

from fray_dask.types import (
    CpuConfig,
    Entrypoint,
    GpuConfig,
    JobRequest,
    ResourceConfig,
    TpuConfig,
    create_environment,
)
from tests.imports import heavy_modules_loaded
from tpu.manifests import (
    K8S_NAME_MAX,
    MAX_CONFIGMAP_PAYLOAD,
    build_manifests,
    callable_payload,
    k8s_name,
    render_yaml,
    secret_manifest,
)

# The Kubernetes version whose strict schemas (unknown fields rejected) every object must pass.
K8S_VERSION = "1.31.0"
IMAGE = "us-docker.pkg.dev/proj/repo/train:1"
LABELS = {"app.kubernetes.io/managed-by": "fray-dask"}
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOBSET_INDEX = "metadata.annotations['jobset.sigs.k8s.io/job-index']"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def train(steps: int, out: str = "") -> int:
    return steps


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


# -- validation helpers ----------------------------------------------------------------------------

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


# -- import boundary -------------------------------------------------------------------------------


def test_importing_tpu_manifests_does_not_import_dask_or_kubernetes():
    code = (
        "import tpu.manifests\n"
        "from fray_dask.types import Entrypoint, JobRequest, ResourceConfig, TpuConfig\n"
        "r = JobRequest(name='t', entrypoint=Entrypoint.from_binary('true'),\n"
        "               resources=ResourceConfig(device=TpuConfig(type='v4-16'), replicas=2))\n"
        "tpu.manifests.render_yaml(tpu.manifests.build_manifests(r, 'img'))\n"
    )
    heavy = heavy_modules_loaded(code, ("dask", "distributed", "kubernetes"))
    assert heavy == [], f"heavy modules imported: {heavy}"


# -- single-host slice: a plain Job ----------------------------------------------------------------


@pytest.mark.parametrize(
    "tpu_type, accelerator", [("v6e-8", "tpu-v6e-slice"), ("v5litepod-8", "tpu-v5-lite-podslice")]
)
def test_single_host_slice_is_one_job(tpu_type, accelerator):
    req = request(tpu_type, max_retries_failure=3)
    manifests = build_manifests(req, IMAGE, namespace="ml")
    assert [m["kind"] for m in manifests] == ["Job"]
    (job,) = manifests
    assert job["apiVersion"] == "batch/v1"
    assert job["metadata"] == {
        "name": "train",
        "namespace": "ml",
        "labels": {**LABELS, "fray-dask/job": "train"},
    }
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 3)
    assert "completionMode" not in spec
    assert spec["podFailurePolicy"] == {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            }
        ]
    }
    pod = spec["template"]
    assert pod["metadata"]["labels"] == job["metadata"]["labels"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": accelerator,
        "cloud.google.com/gke-tpu-topology": "2x4",
    }
    assert pod["spec"]["tolerations"] == [
        {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "subdomain" not in pod["spec"]
    c = container(manifests)
    assert (c["name"], c["image"]) == ("main", IMAGE)
    assert c["resources"]["limits"] == {"google.com/tpu": "8"}
    assert c["resources"]["requests"]["google.com/tpu"] == "8"
    env = env_of(manifests)
    assert env["TPU_WORKER_ID"] == {"name": "TPU_WORKER_ID", "value": "0"}
    assert env["TPU_WORKER_HOSTNAMES"]["value"] == "localhost"
    assert "MEGASCALE_NUM_SLICES" not in env


def test_binary_entrypoint_is_the_container_command():
    manifests = build_manifests(request(), IMAGE)
    assert container(manifests)["command"] == ["python", "train.py", "--steps", "10"]
    ep = Entrypoint(binary="bash -c 'echo hi'")
    assert container(build_manifests(request(entrypoint=ep), IMAGE))["command"] == [
        "bash",
        "-c",
        "echo hi",
    ]


def test_resources_request_cpu_and_memory_from_the_resource_config():
    res = ResourceConfig(cpu=0.5, ram="16g", device=TpuConfig(type="v6e-8"))
    c = container(build_manifests(request(resources=res), IMAGE))
    assert c["resources"]["requests"] == {
        "google.com/tpu": "8",
        "cpu": "500m",
        "memory": str(16 * 10**9),
    }
    res = ResourceConfig(cpu=0, ram="8Gi", device=TpuConfig(type="v6e-8"))
    c = container(build_manifests(request(resources=res), IMAGE))
    assert c["resources"]["requests"] == {"google.com/tpu": "8", "memory": str(8 * 2**30)}
    res = ResourceConfig(cpu=24, device=TpuConfig(type="v6e-8"))
    assert (
        container(build_manifests(request(resources=res), IMAGE))["resources"]["requests"]["cpu"]
        == "24"
    )


def test_preemptible_false_and_regions_become_node_affinity():
    assert "affinity" not in pod_template(build_manifests(request(), IMAGE))["spec"]
    res = ResourceConfig(device=TpuConfig(type="v6e-8"), preemptible=False, regions=["us-east5"])
    affinity = pod_template(build_manifests(request(resources=res), IMAGE))["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {"key": "cloud.google.com/gke-spot", "operator": "DoesNotExist"},
                    {"key": "cloud.google.com/gke-preemptible", "operator": "DoesNotExist"},
                    {
                        "key": "topology.kubernetes.io/region",
                        "operator": "In",
                        "values": ["us-east5"],
                    },
                ]
            }
        ]
    }
    for m in build_manifests(request(resources=res), IMAGE):
        validate_manifest(m)


def test_pods_run_as_non_root_without_privilege_escalation():
    for req in (request("v6e-8"), request("v5litepod-16"), request("v4-16", 2)):
        sc = container(build_manifests(req, IMAGE))["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == 1000
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in sc


# -- multi-host slice: Indexed Job + headless Service ----------------------------------------------


def test_multi_host_slice_is_an_indexed_job_with_a_headless_service():
    req = request("v5litepod-16", name="big", max_retries_failure=5)
    manifests = build_manifests(req, IMAGE)
    assert [m["kind"] for m in manifests] == ["Service", "Job"]
    service, job = manifests
    assert service["metadata"]["name"] == job["metadata"]["name"] == "big"
    assert service["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {"fray-dask/job": "big"},
    }
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    # one pod failing fails the gang at once; the launcher restarts it within the budgets
    assert spec["backoffLimit"] == 0
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    pod = spec["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    # the Service selects exactly this job's pods
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert container(manifests)["resources"]["limits"] == {"google.com/tpu": "4"}
    assert pod["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4"
    # every host of the slice lands in one node pool (one multi-host node pool is one slice)
    assert pod["spec"]["affinity"]["podAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {"matchLabels": {"fray-dask/job": "big"}},
                "topologyKey": "cloud.google.com/gke-nodepool",
            }
        ]
    }


def test_single_host_and_jobset_pods_need_no_pod_affinity():
    for req in (request("v6e-8"), request("v4-16", replicas=2)):
        pod = build_manifests(req, IMAGE)[-1]["spec"]
        if "replicatedJobs" in pod:
            pod = pod["replicatedJobs"][0]["template"]["spec"]
        assert "podAffinity" not in pod["template"]["spec"].get("affinity", {})


def test_workspace_is_the_containers_working_directory():
    req = dataclasses.replace(request("v6e-8"), environment=create_environment(workspace="/app"))
    assert container(build_manifests(req, IMAGE))["workingDir"] == "/app"
    assert "workingDir" not in container(build_manifests(request("v6e-8"), IMAGE))


def test_multi_host_worker_id_and_hostnames_match_the_pods_kubernetes_creates():
    manifests = build_manifests(request("v5litepod-16", name="big"), IMAGE)
    env = env_of(manifests)
    assert env["TPU_WORKER_ID"] == {
        "name": "TPU_WORKER_ID",
        "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}},
    }
    # An Indexed Job's pod i gets hostname `<job>-<i>`, resolvable as `<hostname>.<subdomain>`
    # through the headless Service named like the subdomain.
    job = workload(manifests)
    subdomain = job["spec"]["template"]["spec"]["subdomain"]
    pods = [f"{job['metadata']['name']}-{i}.{subdomain}" for i in range(4)]
    assert env["TPU_WORKER_HOSTNAMES"]["value"].split(",") == pods
    assert pods == ["big-0.big", "big-1.big", "big-2.big", "big-3.big"]


# -- several slices: JobSet ------------------------------------------------------------------------


def test_multislice_is_a_jobset():
    req = request("v4-16", 2, name="ms", max_retries_failure=2)
    manifests = build_manifests(req, IMAGE, namespace="ml")
    assert [m["kind"] for m in manifests] == ["JobSet"]  # the JobSet makes its own Service
    (js,) = manifests
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert js["metadata"]["annotations"] == {
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
    }
    assert js["metadata"]["labels"] == {**LABELS, "fray-dask/job": "ms"}
    assert js["spec"]["network"] == {"enableDNSHostnames": True, "subdomain": "ms"}
    (rjob,) = js["spec"]["replicatedJobs"]
    assert (rjob["name"], rjob["replicas"]) == ("slice", 2)
    job_spec = rjob["template"]["spec"]
    assert job_spec["completionMode"] == "Indexed"
    assert job_spec["completions"] == job_spec["parallelism"] == 2  # v4-16: 2 hosts
    assert job_spec["backoffLimit"] == 0
    assert job_spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert job_spec["template"]["metadata"]["labels"]["fray-dask/job"] == "ms"
    assert js["spec"]["failurePolicy"] == {
        "maxRestarts": 2,
        "rules": [
            {
                "name": "preemption",
                "action": "RestartJobSetAndIgnoreMaxRestarts",
                "onJobFailureReasons": ["PodFailurePolicy"],
            }
        ],
    }
    assert container(manifests)["resources"]["limits"] == {"google.com/tpu": "4"}


def test_multislice_megascale_wiring():
    manifests = build_manifests(request("v4-16", 2, name="ms"), IMAGE)
    env = env_of(manifests)
    assert env["TPU_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == COMPLETION_INDEX
    assert env["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == JOBSET_INDEX
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2"
    assert env["MEGASCALE_PORT"]["value"] == "8080"
    # host 0 of slice 0: JobSet names child Jobs `<jobset>-<replicatedJob>-<j>`, pods `<job>-<i>`
    assert env["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == "ms-slice-0-0.ms:8080"
    assert env["TPU_WORKER_HOSTNAMES"]["value"] == (
        "ms-slice-$(MEGASCALE_SLICE_ID)-0.ms,ms-slice-$(MEGASCALE_SLICE_ID)-1.ms"
    )
    names = [e["name"] for e in container(manifests)["env"]]
    # Kubernetes expands $(VAR) only from entries defined earlier in the list
    assert names.index("MEGASCALE_SLICE_ID") < names.index("TPU_WORKER_HOSTNAMES")


def _expand(env: list[dict], fields: dict[str, str]) -> dict[str, str]:
    """Resolves a container env list as the kubelet does: fieldRefs from `fields`, `$(VAR)` from
    entries above. A stand-in for a real pod: no API server runs here."""
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m[1], m[0]), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            out[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def test_multislice_env_resolves_to_each_slices_own_hosts():
    manifests = build_manifests(request("v4-16", 2, name="ms"), IMAGE)
    env = container(manifests)["env"]
    pods = {}
    for j in range(2):
        for i in range(2):
            pods[(j, i)] = _expand(env, {JOBSET_INDEX: str(j), COMPLETION_INDEX: str(i)})
    assert pods[(1, 1)]["TPU_WORKER_HOSTNAMES"] == "ms-slice-1-0.ms,ms-slice-1-1.ms"
    assert pods[(0, 1)]["TPU_WORKER_HOSTNAMES"] == "ms-slice-0-0.ms,ms-slice-0-1.ms"
    coordinator = {p["MEGASCALE_COORDINATOR_ADDRESS"] for p in pods.values()}
    assert coordinator == {pods[(0, 0)]["TPU_WORKER_HOSTNAMES"].split(",")[0] + ":8080"}
    assert {(p["MEGASCALE_SLICE_ID"], p["TPU_WORKER_ID"]) for p in pods.values()} == {
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    }


def test_multislice_of_single_host_slices_is_a_jobset_of_one_pod_jobs():
    manifests = build_manifests(request("v6e-8", 3, name="ms"), IMAGE)
    job_spec = workload(manifests)["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job_spec["completionMode"] == "Indexed"
    assert job_spec["completions"] == job_spec["parallelism"] == 1
    env = env_of(manifests)
    assert "valueFrom" in env["TPU_WORKER_ID"]
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "3"
    assert env["TPU_WORKER_HOSTNAMES"]["value"] == "ms-slice-$(MEGASCALE_SLICE_ID)-0.ms"


@pytest.mark.parametrize(
    "tpu_type, replicas, names",
    [
        ("v6e-8", 1, ["FRAY_JOB_NAME", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"]),
        ("v5litepod-16", 1, ["FRAY_JOB_NAME", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"]),
        (
            "v4-16",
            2,
            [
                "FRAY_JOB_NAME",
                "TPU_WORKER_ID",
                "MEGASCALE_SLICE_ID",
                "MEGASCALE_NUM_SLICES",
                "MEGASCALE_PORT",
                "MEGASCALE_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES",
            ],
        ),
    ],
)
def test_env_order_is_the_wiring_then_the_users_vars(tpu_type, replicas, names):
    req = request(tpu_type, replicas, env={"B_VAR": "2", "A_VAR": "1", "HF_TOKEN": "hf_x1234"})
    manifests = build_manifests(req, IMAGE, name="given-name")
    assert [e["name"] for e in container(manifests)["env"]] == [
        *names,
        "B_VAR",
        "A_VAR",
        "HF_TOKEN",
    ]
    assert container(manifests)["env"][0] == {"name": "FRAY_JOB_NAME", "value": "given-name"}


# -- callables -------------------------------------------------------------------------------------


def test_callable_goes_into_a_configmap_mounted_for_tpu_run():
    ep = Entrypoint.from_callable(train, [10], {"out": "gs://b/o"})
    req = request("v5litepod-16", name="cb", entrypoint=ep)
    manifests = build_manifests(req, IMAGE)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Service", "Job"]
    cm = manifests[0]
    assert cm["metadata"]["name"] == "cb-payload"
    assert cm["metadata"]["labels"] == {**LABELS, "fray-dask/job": "cb"}
    blob = base64.b64decode(cm["binaryData"]["payload.pkl"])
    assert blob == callable_payload(req)
    fn, args, kwargs = cloudpickle.loads(blob)
    assert fn(*args, **kwargs) == 10 and kwargs == {"out": "gs://b/o"}
    c = container(manifests)
    assert c["command"] == ["python", "-m", "tpu.run", "/var/run/fray/payload.pkl"]
    assert c["volumeMounts"] == [
        {"name": "payload", "mountPath": "/var/run/fray", "readOnly": True}
    ]
    assert pod_template(manifests)["spec"]["volumes"] == [
        {"name": "payload", "configMap": {"name": "cb-payload"}}
    ]


def test_callable_with_payload_url_has_no_configmap():
    ep = Entrypoint.from_callable(train, [10])
    url = "gs://bucket/jobs/cb-1a2b3c4d/payload.pkl"
    manifests = build_manifests(request(entrypoint=ep), IMAGE, payload_url=url)
    assert [m["kind"] for m in manifests] == ["Job"]
    c = container(manifests)
    assert c["command"] == ["python", "-m", "tpu.run", url]
    assert "volumeMounts" not in c
    assert "volumes" not in pod_template(manifests)["spec"]


@pytest.mark.parametrize(
    "url",
    [
        "gs://b/p.pkl",
        "s3://b/p.pkl",
        "https://h/p.pkl",
        "http://h/p",
        "file:///mnt/p.pkl",
        "/mnt/p",
    ],
)
def test_payload_url_forms_the_bootstrap_can_read(url):
    ep = Entrypoint.from_callable(train, [1])
    assert (
        container(build_manifests(request(entrypoint=ep), IMAGE, payload_url=url))["command"][-1]
        == url
    )


@pytest.mark.parametrize("url", ["payload.pkl", "ftp://h/p.pkl", "memory://p", ""])
def test_payload_url_other_forms_are_refused(url):
    ep = Entrypoint.from_callable(train, [1])
    with pytest.raises(ValueError, match=r"payload_url .* is not one the pod can read: use gs://"):
        build_manifests(request(entrypoint=ep), IMAGE, payload_url=url)


def test_payload_url_with_a_binary_entrypoint_is_refused():
    with pytest.raises(ValueError, match=r"runs the binary .*payload_url carries a callable"):
        build_manifests(request(), IMAGE, payload_url="gs://b/p.pkl")


def test_unpicklable_callable_names_the_job_and_the_cause():
    lock = threading.Lock()
    ep = Entrypoint.from_callable(lambda: lock.acquire())
    req = request(name="locked", entrypoint=ep)
    with pytest.raises(ValueError, match=r"job 'locked': .*cannot be pickled \(TypeError: .*lock"):
        build_manifests(req, IMAGE)
    with pytest.raises(ValueError, match=r"job 'locked'.*open locks, sockets and clients inside"):
        callable_payload(req)


def test_callable_payload_of_a_binary_is_an_error():
    with pytest.raises(ValueError, match=r"runs the binary 'python train.py --steps 10'"):
        callable_payload(request())


def test_payload_too_big_for_a_configmap_suggests_payload_url():
    ep = Entrypoint.from_callable(train, [b"x" * (MAX_CONFIGMAP_PAYLOAD + 1)])
    req = request(name="big", entrypoint=ep)
    with pytest.raises(ValueError, match=r"job 'big': .* bytes, more than .*payload_url='gs://"):
        build_manifests(req, IMAGE)
    # the same callable fits through object storage
    assert len(build_manifests(req, IMAGE, payload_url="gs://b/p.pkl")) == 1


# -- env vars and secrets --------------------------------------------------------------------------

SECRET = "hf_verysecretvalue123"


def test_env_vars_become_container_env():
    manifests = build_manifests(request(env={"WANDB_PROJECT": "p", "XLA_FLAGS": "--a=1"}), IMAGE)
    env = env_of(manifests)
    assert env["WANDB_PROJECT"] == {"name": "WANDB_PROJECT", "value": "p"}
    assert env["XLA_FLAGS"] == {"name": "XLA_FLAGS", "value": "--a=1"}
    assert secret_manifest(request(env={"WANDB_PROJECT": "p"}), "train") is None
    assert secret_manifest(request(), "train") is None


@pytest.mark.parametrize("shape", [("v6e-8", 1), ("v5litepod-16", 1), ("v4-16", 2)])
def test_secret_env_is_only_a_secret_reference(shape):
    req = request(*shape, name="sec", env={"HF_TOKEN": SECRET, "PLAIN": "visible"})
    manifests = build_manifests(req, IMAGE)
    env = env_of(manifests)
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "HF_TOKEN"}},
    }
    text = render_yaml(manifests)
    assert SECRET not in text and SECRET not in repr(manifests)
    assert "visible" in text
    secret = secret_manifest(req, "sec", namespace="ml")
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "sec-env",
            "namespace": "ml",
            "labels": {**LABELS, "fray-dask/job": "sec"},
        },
        "type": "Opaque",
        "stringData": {"HF_TOKEN": SECRET},
    }
    validate_manifest(secret)


def test_a_secret_value_written_into_the_command_is_refused():
    ep = Entrypoint.from_binary("curl", ["-H", f"Authorization: Bearer {SECRET}", "https://hf.co"])
    with pytest.raises(
        ValueError, match=r"command contains the value of the secret HF_TOKEN.*\$\("
    ):
        build_manifests(request(entrypoint=ep, env={"HF_TOKEN": SECRET}), IMAGE)
    # the Kubernetes way: $(HF_TOKEN) is expanded in the pod from the secret-backed env var
    ep = Entrypoint.from_binary("curl", ["-H", "Authorization: Bearer $(HF_TOKEN)"])
    text = render_yaml(build_manifests(request(entrypoint=ep, env={"HF_TOKEN": SECRET}), IMAGE))
    assert SECRET not in text


def test_a_secret_value_pickled_into_the_configmap_is_refused():
    ep = Entrypoint.from_callable(train, [1], {"out": SECRET})
    req = request(entrypoint=ep, env={"HF_TOKEN": SECRET})
    with pytest.raises(ValueError, match=r"contain the value of the secret HF_TOKEN.*os.environ"):
        build_manifests(req, IMAGE)


def test_env_vars_may_not_override_the_wiring():
    with pytest.raises(ValueError, match=r"sets TPU_WORKER_ID in env_vars.*remove them"):
        build_manifests(request(env={"TPU_WORKER_ID": "3"}), IMAGE)


# -- bad requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [CpuConfig(), GpuConfig("A100", 2)])
def test_non_tpu_request_is_refused(device):
    req = request(resources=ResourceConfig(device=device))
    with pytest.raises(ValueError, match=r"job 'train' asks for device .* need a TPU; use"):
        build_manifests(req, IMAGE)


@pytest.mark.parametrize("image", ["", "  ", None])
def test_missing_image_is_refused(image):
    with pytest.raises(ValueError, match=r"no container image .*pass image= or EnvironmentConfig"):
        build_manifests(request(), image)  # type: ignore[arg-type]


def test_without_an_image_argument_the_environments_docker_image_is_used():
    env = create_environment(docker_image="registry/train:2")
    req = dataclasses.replace(request(), environment=env)
    assert container(build_manifests(req, None))["image"] == "registry/train:2"  # type: ignore[arg-type]
    assert container(build_manifests(req, "registry/other:1"))["image"] == "registry/other:1"


def test_bad_name_argument_is_refused():
    with pytest.raises(ValueError, match=r"'Bad_Name' must be a DNS-1035 label .*k8s_name"):
        build_manifests(request(), IMAGE, name="Bad_Name")


def test_unknown_tpu_type_is_refused_when_building_the_request():
    with pytest.raises(ValueError, match=r"unknown TPU type 'v9-8'; valid types: v4-8"):
        request("v9-8")


def test_mismatched_topology_is_refused_when_building_the_request():
    with pytest.raises(ValueError, match=r"'v4-16' has topology '2x2x2', not '4x4'"):
        request(resources=ResourceConfig(device=TpuConfig(type="v4-16", topology="4x4")))


@pytest.mark.parametrize("tpu_type", ["v4-8", "v5litepod-4"])
def test_multislice_of_a_small_single_host_type_is_refused(tpu_type):
    with pytest.raises(ValueError, match=rf"'{tpu_type}' .* cannot run multi-slice"):
        request(tpu_type, 2)


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id, expected",
    [
        ("train", "train"),
        ("Train-Model-1a2b3c4d", "train-model-1a2b3c4d"),
        ("my.job_v2-1a2b3c4d", "my-job-v2-1a2b3c4d"),
        ("a__b..c--d", "a-b-c-d"),
        ("-edge-", "edge"),
        ("7b-finetune-1a2b3c4d", "job-7b-finetune-1a2b3c4d"),
        ("x" * 60 + "-1a2b3c4d", "x" * 31 + "-1a2b3c4d"),
        ("a" * 30 + "." * 5 + "b" * 30 + "-deadbeef", "a" * 30 + "-deadbeef"),
    ],
)
def test_k8s_name(job_id, expected):
    assert k8s_name(job_id) == expected


@pytest.mark.parametrize(
    "job_id",
    ["A" * 63, "Long.Name_" * 6 + "-0123abcd", "9" * 50, "ümlaut-job", "a-" * 30 + "b"],
)
def test_k8s_name_is_a_short_dns_label(job_id):
    name = k8s_name(job_id)
    assert len(name) <= K8S_NAME_MAX
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_long_names_without_suffix_stay_distinct():
    a, b = k8s_name("p" * 50 + "a"), k8s_name("p" * 50 + "b")
    assert a != b and len(a) == len(b) == K8S_NAME_MAX


def test_k8s_name_of_nothing_usable_is_an_error():
    with pytest.raises(ValueError, match=r"no letters or digits"):
        k8s_name("._-")


def test_name_defaults_to_k8s_name_of_the_request_name():
    manifests = build_manifests(request(name="My_Train.v2"), IMAGE)
    assert workload(manifests)["metadata"]["name"] == "my-train-v2"
    manifests = build_manifests(request(name="My_Train.v2"), IMAGE, name="my-train-v2-0a1b2c3d")
    assert workload(manifests)["metadata"]["name"] == "my-train-v2-0a1b2c3d"


def test_longest_names_fit_every_derived_name():
    """Pod hostnames `<name>-slice-<j>-<i>` and Job names are DNS labels (<= 63)."""
    name = k8s_name("n" * 80 + "-0123abcd")
    req = request("v5litepod-256", 4)  # 64 hosts per slice
    (js,) = build_manifests(req, IMAGE, name=name)
    hosts = _expand(container([js])["env"], {JOBSET_INDEX: "3", COMPLETION_INDEX: "63"})
    for host in hosts["TPU_WORKER_HOSTNAMES"].split(","):
        hostname = host.split(".")[0]
        assert len(hostname) <= 63 and DNS_LABEL.match(hostname)


# -- YAML ------------------------------------------------------------------------------------------


def test_render_yaml_is_stable_and_keeps_insertion_order():
    ep = Entrypoint.from_callable(train, [3])
    req = request("v5litepod-16", entrypoint=ep, env={"HF_TOKEN": SECRET, "Z": "1", "A": "2"})
    first = render_yaml(build_manifests(req, IMAGE))
    assert render_yaml(build_manifests(req, IMAGE)) == first
    docs = first.split("---\n")
    assert len(docs) == 3
    for doc in docs:
        assert re.match(r"apiVersion: .*\nkind: .*\nmetadata:\n", doc), doc[:80]
    keys = [line.split(":")[0] for line in docs[2].splitlines() if not line.startswith(" ")]
    assert keys == ["apiVersion", "kind", "metadata", "spec"]
    assert docs[2].index("completionMode") < docs[2].index("template")
    assert list(yaml.safe_load_all(first)) == build_manifests(req, IMAGE)
    assert "&id" not in first and "*id" not in first


def test_render_yaml_writes_shared_dicts_out_in_full():
    labels = {"a": "b"}
    text = render_yaml([{"kind": "X", "metadata": {"labels": labels}, "spec": {"labels": labels}}])
    assert text == "kind: X\nmetadata:\n  labels:\n    a: b\nspec:\n  labels:\n    a: b\n"


# -- schema validation -----------------------------------------------------------------------------

SHAPES = [("v6e-8", 1), ("v5litepod-8", 1), ("v5litepod-16", 1), ("v4-16", 2), ("v6e-8", 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["binary", "callable", "payload_url"])
def test_every_manifest_passes_the_kubernetes_schemas(shape, kind):
    env = {"HF_TOKEN": SECRET, "PLAIN": "1"}
    if kind == "binary":
        req = request(*shape, env=env)
        manifests = build_manifests(req, IMAGE, namespace="ml")
    else:
        req = request(*shape, env=env, entrypoint=Entrypoint.from_callable(train, [1]))
        url = "gs://b/p.pkl" if kind == "payload_url" else None
        manifests = build_manifests(req, IMAGE, namespace="ml", payload_url=url)
    for m in manifests:
        validate_manifest(m)
    validate_manifest(secret_manifest(req, "train", "ml"))


def _job_manifests() -> list[dict]:
    return build_manifests(request("v5litepod-16"), IMAGE)


def test_validation_rejects_a_misspelt_pod_field():
    job = _job_manifests()[-1]
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicyy"):
        validate_manifest(job)


def test_validation_rejects_a_wrong_type_in_a_service():
    service = _job_manifests()[0]
    service["spec"]["publishNotReadyAddresses"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(service)


def test_validation_rejects_a_misspelt_jobset_field_and_a_bad_job_template():
    (js,) = build_manifests(request("v4-16", 2), IMAGE)
    validate_manifest(js)
    js["spec"]["replicatedJob"] = js["spec"].pop("replicatedJobs")
    with pytest.raises(JobSetInvalid, match=r"unknown JobSet field\(s\) \['replicatedJob'\]"):
        validate_manifest(js)
    (js,) = build_manifests(request("v4-16", 2), IMAGE)
    js["spec"]["failurePolicy"]["rules"][0]["action"] = "RestartJobSetIgnoringMaxRestarts"
    with pytest.raises(JobSetInvalid, match="unknown failure rule action"):
        validate_manifest(js)
    (js,) = build_manifests(request("v4-16", 2), IMAGE)
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["completionsMode"] = "Indexed"
    with pytest.raises(kubernetes_validate.ValidationError, match="completionsMode"):
        validate_manifest(js)
