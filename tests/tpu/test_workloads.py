"""Tests of tpu/workloads.py through build_manifests: one single-host slice is a Job, one
multi-host slice an Indexed Job with a headless Service, several slices a JobSet, and their
failure policies. Pure: no Dask, no API server.
"""

from __future__ import annotations

import pytest

from tests.tpu.manifest_checks import IMAGE, LABELS, container, env_of, request, workload
from tpu.manifests import build_manifests

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


def test_multislice_of_single_host_slices_is_a_jobset_of_one_pod_jobs():
    manifests = build_manifests(request("v6e-8", 3, name="ms"), IMAGE)
    job_spec = workload(manifests)["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job_spec["completionMode"] == "Indexed"
    assert job_spec["completions"] == job_spec["parallelism"] == 1
    env = env_of(manifests)
    assert "valueFrom" in env["TPU_WORKER_ID"]
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "3"
    assert env["TPU_WORKER_HOSTNAMES"]["value"] == "ms-slice-$(MEGASCALE_SLICE_ID)-0.ms"
