"""Tests of tpu/pod_template.py through build_manifests: the container's resources, security and
working directory, node and pod affinity, and the TPU/MEGASCALE env wiring as the pods Kubernetes
creates resolve it. Pure: no Dask, no API server.
"""

from __future__ import annotations

import dataclasses

import pytest

from fray_dask.types import ResourceConfig, TpuConfig, create_environment
from tests.tpu.manifest_checks import (
    COMPLETION_INDEX,
    IMAGE,
    JOBSET_INDEX,
    container,
    env_of,
    expand_env,
    pod_template,
    request,
    validate_manifest,
    workload,
)
from tpu.manifests import build_manifests, secret_manifest

# -- the container and its placement ---------------------------------------------------------------


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


# -- env wiring ------------------------------------------------------------------------------------


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


def test_multislice_env_resolves_to_each_slices_own_hosts():
    manifests = build_manifests(request("v4-16", 2, name="ms"), IMAGE)
    env = container(manifests)["env"]
    pods = {}
    for j in range(2):
        for i in range(2):
            pods[(j, i)] = expand_env(env, {JOBSET_INDEX: str(j), COMPLETION_INDEX: str(i)})
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


def test_env_vars_become_container_env():
    manifests = build_manifests(request(env={"WANDB_PROJECT": "p", "XLA_FLAGS": "--a=1"}), IMAGE)
    env = env_of(manifests)
    assert env["WANDB_PROJECT"] == {"name": "WANDB_PROJECT", "value": "p"}
    assert env["XLA_FLAGS"] == {"name": "XLA_FLAGS", "value": "--a=1"}
    assert secret_manifest(request(env={"WANDB_PROJECT": "p"}), "train") is None
    assert secret_manifest(request(), "train") is None
