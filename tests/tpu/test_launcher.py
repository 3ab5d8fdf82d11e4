"""tpu.launcher.GkeTpuCluster against tests/tpu/k8s_standin.py, a stand-in for a real Kubernetes
API server (which cannot run on our machines): an in-process HTTP server with the few endpoints
the launcher calls and a minimal Job/JobSet controller. The launcher uses the real `kubernetes`
client; the tests drive the pods (run, succeed, crash, preempt) and read the recorded requests.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from fray_dask.current import cluster_from_spec
from fray_dask.types import (
    CpuConfig,
    Entrypoint,
    EnvironmentConfig,
    JobRequest,
    JobStatus,
    ResourceConfig,
    TpuConfig,
)
from tests.processes import wait_for
from tests.tpu.gke_helpers import (
    IMAGE,
    NS,
    SECRET,
    client_for,
    finished,
    pods_of,
    request,
    touch,
    train,
)
from tpu.launcher import GkeApiError, GkeTpuCluster
from tpu.manifests import build_manifests, k8s_name, secret_manifest

kubernetes = pytest.importorskip("kubernetes")

# -- launching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tpu", "replicas", "workload"),
    [("v6e-8", 1, "/jobs"), ("v5litepod-16", 1, "/jobs"), ("v5litepod-16", 2, "/jobsets")],
)
def test_launch_creates_the_secret_then_exactly_the_built_manifests(
    gke, standin, tpu, replicas, workload
):
    env = EnvironmentConfig(env_vars={"HF_TOKEN": SECRET, "MODE": "fast"}, docker_image="img:2")
    req = request(tpu, replicas, entrypoint=Entrypoint.from_callable(train, [3]), environment=env)
    job_id = gke.launch(req)
    name = k8s_name(job_id)
    expected = [secret_manifest(req, name, NS)] + build_manifests(
        req, "img:2", namespace=NS, name=name
    )
    posts = standin.requests_of("POST")
    assert [r.body for r in posts] == expected
    assert [p.path.rsplit("/", 1)[1] for p in posts] == [m["kind"].lower() + "s" for m in expected]
    group = "jobset.x-k8s.io/v1alpha2" if replicas > 1 else "batch/v1"
    assert posts[-1].path == f"/apis/{group}/namespaces/{NS}{workload}"
    assert gke.poll(job_id).status is JobStatus.PENDING
    assert len(gke.poll(job_id).tasks) == replicas * TpuConfig(type=tpu).vm_count()


def _not_tpu() -> JobRequest:
    return JobRequest("cpu", Entrypoint.from_binary("true"), ResourceConfig(device=CpuConfig()))


def _unpicklable() -> JobRequest:
    return request(entrypoint=Entrypoint.from_callable(train, [threading.Lock()]))


def _pip_packages() -> JobRequest:
    return request(environment=EnvironmentConfig(pip_packages=["tabulate"]))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: request("v9-8"), "v9-8"),
        (_not_tpu, "need a TPU"),
        (_unpicklable, "be pickled"),
        (_pip_packages, r"cannot get pip_packages=\['tabulate'\] installed.*into the image"),
    ],
    ids=["unknown-type", "not-tpu", "unpicklable", "pip-packages"],
)
def test_bad_input_raises_before_any_request(gke, standin, make, match):
    before = len(standin.requests)
    with pytest.raises(ValueError, match=match):
        gke.launch(make())
    assert len(standin.requests) == before


def test_missing_image_raises_before_any_request(standin):
    api = client_for(standin.url)
    with GkeTpuCluster(NS, api_client=api, poll_interval=0.1) as cluster:
        before = len(standin.requests)
        with pytest.raises(ValueError, match=r"pass image= or EnvironmentConfig\(docker_image"):
            cluster.launch(request())
        assert len(standin.requests) == before
    api.close()


# -- stopping and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("replicas", "workload"), [(1, "jobs"), (2, "jobsets")])
def test_terminate_deletes_the_workload_service_configmap_and_secret(
    gke, standin, replicas, workload
):
    env = EnvironmentConfig(env_vars={"WANDB_API_KEY": SECRET})
    req = request(
        "v5litepod-16", replicas, entrypoint=Entrypoint.from_callable(train, [1]), environment=env
    )
    job_id = gke.launch(req)
    name = k8s_name(job_id)
    for pod in pods_of(standin, job_id, 4 * replicas):
        standin.run(pod)
    wait_for(lambda: gke.poll(job_id).status is JobStatus.RUNNING)
    gke.terminate(job_id)
    assert gke.poll(job_id).status is JobStatus.STOPPED
    deleted = {"/".join(r.path.split("/")[-2:]): r.query for r in standin.requests_of("DELETE")}
    assert deleted[f"{workload}/{name}"].get("propagationPolicy") == "Background"
    assert {f"configmaps/{name}-payload", f"secrets/{name}-env"} <= set(deleted)
    assert (f"services/{name}" in deleted) == (replicas == 1)
    assert standin.pods(name) == [] and standin.get(workload, name) is None


def test_api_403_during_creation_rolls_back_and_names_the_fix(gke, standin):
    env = EnvironmentConfig(env_vars={"HF_TOKEN": SECRET})
    req = request("v5litepod-16", entrypoint=Entrypoint.from_callable(train, [1]), environment=env)
    standin.fail_next("POST", "/jobs", 403)
    with pytest.raises(GkeApiError, match=r"creating Job tpu/train-\w+ failed: HTTP 403") as e:
        gke.launch(req)
    assert "deploy/k8s/rbac.yaml in that namespace (sed 's/namespace: default/namespace: tpu/'" in (
        str(e.value)
    )
    assert SECRET not in str(e.value)
    deleted = sorted(r.path.split("/")[-2] for r in standin.requests_of("DELETE"))
    assert deleted == ["configmaps", "secrets", "services"]
    assert standin.objects == {} and gke.list_jobs() == []


def test_without_the_kubernetes_client_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'pip install "zephyr-dask\[k8s\]"'):
        GkeTpuCluster(NS, IMAGE)


def test_unreachable_api_server_raises_naming_the_host_and_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = client_for(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}.*kubeconfig context"):
        GkeTpuCluster(NS, IMAGE, api_client=api)
    api.close()


def test_api_server_lost_for_the_timeout_fails_unfinished_jobs(gke, standin):
    job_id = gke.launch(request())
    [pod] = pods_of(standin, job_id, 1)
    standin.run(pod, ("working",))
    wait_for(lambda: gke.logs(job_id))
    standin.close()
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert "lost contact with the Kubernetes API server" in info.error_message


# -- payloads -------------------------------------------------------------------------------


def test_with_a_payload_dir_the_callable_is_uploaded_and_runs_from_there(standin, tmp_path):
    """The pods would run `python -m tpu.run <url>`; here that command runs in a real process on
    the uploaded file (file:// stands in for gs://, both through fsspec)."""
    api = client_for(standin.url)
    out = tmp_path / "ran"
    with GkeTpuCluster(NS, IMAGE, api_client=api, payload_dir=f"file://{tmp_path}/payloads/") as c:
        job_id = c.launch(request(entrypoint=Entrypoint.from_callable(touch, [str(out)])))
        posted = [r.body for r in standin.requests_of("POST")]
    api.close()
    url = f"file://{tmp_path}/payloads/{k8s_name(job_id)}.pkl"
    assert [m["kind"] for m in posted] == ["Job"]  # no ConfigMap
    command = posted[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["python", "-m", "tpu.run", url]
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "ran"


def test_a_callable_too_big_for_a_configmap_asks_for_a_payload_dir(gke, standin):
    big = Entrypoint.from_callable(train, [b"x" * (1 << 20)])
    before = len(standin.requests)
    with pytest.raises(ValueError, match=r"a ConfigMap can carry; .*payload_dir="):
        gke.launch(request(entrypoint=big))
    assert len(standin.requests) == before


# -- FRAY_CLUSTER_SPEC ------------------------------------------------------------------------


def test_gke_spec_builds_a_cluster_from_the_kubeconfig(standin, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": standin.url}}],
                "users": [{"name": "me", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me"}}],
                "current-context": "standin",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cluster = cluster_from_spec("gke?namespace=ns&image=img")
    try:
        assert isinstance(cluster, GkeTpuCluster)
        assert (cluster.namespace, cluster.image, cluster.spec) == (
            "ns",
            "img",
            "gke?namespace=ns&image=img",
        )
        assert cluster.host == standin.url and cluster.payload_dir is None
    finally:
        cluster.close()
    cluster = cluster_from_spec("gke?namespace=ns&image=img&payload=gs://b/p/")
    try:
        assert cluster.payload_dir == "gs://b/p"
        assert cluster.spec == "gke?namespace=ns&image=img&payload=gs%3A%2F%2Fb%2Fp"
    finally:
        cluster.close()
    with pytest.raises(ValueError, match=r"does not take bogus .*namespace, image, context"):
        cluster_from_spec("gke?bogus=1")
