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
from tests.tpu.k8s_standin import KubeStandIn
from tpu.launcher import GkeApiError, GkeTpuCluster
from tpu.manifests import build_manifests, k8s_name, secret_manifest

kubernetes = pytest.importorskip("kubernetes")

NS = "tpu"
IMAGE = "us-docker.pkg.dev/proj/repo/train:1"
SECRET = "hf_sekrit_value_123"


def touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("ran")


def train(steps: int) -> int:
    return steps


def request(tpu: str = "v6e-8", replicas: int = 1, **kwargs) -> JobRequest:
    kwargs.setdefault("entrypoint", Entrypoint.from_binary("python", ["train.py"]))
    return JobRequest(
        "train", resources=ResourceConfig(device=TpuConfig(type=tpu), replicas=replicas), **kwargs
    )


def gke_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fray-gke")]


def client_for(url: str):
    cfg = kubernetes.client.Configuration()
    cfg.host = url
    return kubernetes.client.ApiClient(cfg)


@pytest.fixture
def standin():
    server = KubeStandIn()
    yield server
    server.close()
    leaked = [
        r
        for r in server.requests
        if SECRET in json.dumps(r.body) and not r.path.endswith("secrets")
    ]
    assert not leaked, f"a secret value was sent outside the Secret: {leaked}"


@pytest.fixture
def gke(standin):
    api = client_for(standin.url)
    cluster = GkeTpuCluster(NS, IMAGE, api_client=api, poll_interval=0.1, lost_timeout=1.0)
    yield cluster
    cluster.close()
    api.close()
    wait_for(lambda: not gke_threads(), "the cluster's fray-gke threads to end", 10)


def pods_of(standin: KubeStandIn, job_id: str, count: int, exclude=()) -> list[str]:
    name = k8s_name(job_id)
    return wait_for(
        lambda: len(p := [x for x in standin.pods(name) if x not in exclude]) >= count and p,
        what=f"{count} new pods of {name}",
    )


def finished(gke: GkeTpuCluster, job_id: str):
    return gke.wait(job_id, timeout=10)


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


# -- running ----------------------------------------------------------------------------------


def test_job_succeeds_and_monitor_streams_its_log_in_order(gke, standin):
    job_id = gke.launch(request())
    [pod] = pods_of(standin, job_id, 1)
    standin.run(pod, ("step 1", "step 2"))
    wait_for(lambda: len(gke.logs(job_id)) == 2, what="lines streamed while the pod runs")
    assert gke.poll(job_id).status is JobStatus.RUNNING
    standin.succeed(pod, ("done",))
    lines: list[str] = []
    info = gke.monitor(job_id, on_line=lines.append, timeout=10)
    assert lines == ["[replica-0] step 1", "[replica-0] step 2", "[replica-0] done"]
    assert info.status is JobStatus.SUCCEEDED
    assert info.tasks[0].worker == pod and info.tasks[0].attempts == 1
    assert finished(gke, job_id).status is JobStatus.SUCCEEDED
    with pytest.raises(NotImplementedError, match="write its result to storage"):
        gke.result(job_id)  # a pod's return value never reaches this driver


def test_a_log_stream_cut_mid_way_is_reopened_without_losing_or_repeating_lines(gke, standin):
    job_id = gke.launch(request())
    [pod] = pods_of(standin, job_id, 1)
    standin.run(pod, ("one", "two"))
    wait_for(lambda: len(gke.logs(job_id)) == 2, what="the first lines")
    standin.drop_log_streams()
    standin.log(pod, "three")
    standin.succeed(pod, ("four",))
    assert finished(gke, job_id).status is JobStatus.SUCCEEDED
    assert gke.logs(job_id) == [f"[replica-0] {x}" for x in ("one", "two", "three", "four")]
    assert len(standin.requests_of("GET", f"/pods/{pod}/log")) == 2


def test_multi_host_pods_map_to_replicas_by_completion_index(gke, standin):
    job_id = gke.launch(request("v5litepod-16"))
    pods = pods_of(standin, job_id, 4)
    for pod in reversed(pods):
        index = standin.get("pods", pod)["metadata"]["annotations"][
            "batch.kubernetes.io/job-completion-index"
        ]
        standin.run(pod, (f"host {index} up",))
        standin.succeed(pod, (f"host {index} done",))
    info = gke.monitor(job_id, on_line=lambda line: None, timeout=10)
    assert info.status is JobStatus.SUCCEEDED
    logs = gke.logs(job_id)
    for i in range(4):
        assert [x for x in logs if x.startswith(f"[replica-{i}]")] == [
            f"[replica-{i}] host {i} up",
            f"[replica-{i}] host {i} done",
        ]
        assert info.tasks[i].worker == pods[i]


def test_preemption_and_crash_are_told_apart_and_kubernetes_replaces_the_pod(gke, standin):
    job_id = gke.launch(request(max_retries_failure=1))
    [first] = pods_of(standin, job_id, 1)
    standin.run(first, ("epoch 1",))
    standin.preempt(first)  # Failed with exit 143, but DisruptionTarget says preempted
    [second] = pods_of(standin, job_id, 1, exclude=[first])
    standin.run(second)
    standin.crash(second, 3, ("Traceback (most recent call last):", "ValueError: boom"))
    [third] = pods_of(standin, job_id, 1, exclude=[first, second])
    standin.run(third)
    wait_for(lambda: gke.poll(job_id).tasks[0].attempts == 3, what="the third pod seen running")
    standin.vanish(third)  # its node is gone: a preemption too
    [fourth] = pods_of(standin, job_id, 1, exclude=[first, second, third])
    standin.run(fourth)
    standin.succeed(fourth, ("ok",))
    info = finished(gke, job_id)
    assert info.status is JobStatus.SUCCEEDED
    task = info.tasks[0]
    assert (task.preemptions, task.failures, task.attempts) == (2, 1, 4)
    assert gke.logs(job_id) == [
        "[replica-0] epoch 1",
        "[replica-0] Traceback (most recent call last):",
        "[replica-0] ValueError: boom",
        "[replica-0] ok",
    ]


def test_a_crash_past_the_failure_budget_fails_the_job_naming_pod_exit_code_and_lines(gke, standin):
    job_id = gke.launch(request())
    [pod] = pods_of(standin, job_id, 1)
    standin.run(pod)
    standin.crash(pod, 3, ("loading", "ValueError: boom"))
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert (info.tasks[0].failures, info.tasks[0].preemptions) == (1, 0)
    assert pod in info.error_message and "exited with code 3" in info.error_message
    assert "ValueError: boom" in info.error_message


def test_preemptions_past_the_budget_delete_the_job(gke, standin):
    job_id = gke.launch(request(max_retries_preemption=1))
    seen: list[str] = []
    for _ in range(2):
        [pod] = pods_of(standin, job_id, 1, exclude=seen)
        seen.append(pod)
        standin.run(pod)
        standin.preempt(pod, reason="TerminationByKubelet")
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert info.tasks[0].preemptions == 2 and info.tasks[0].failures == 0
    assert "max_retries_preemption=1" in info.error_message
    assert "TerminationByKubelet" in info.error_message
    deletes = standin.requests_of("DELETE", f"/jobs/{k8s_name(job_id)}")
    assert deletes and deletes[0].query.get("propagationPolicy") == "Background"


def test_indexed_job_restarts_as_a_gang_after_a_preemption(gke, standin):
    req = request("v5litepod-16", entrypoint=Entrypoint.from_callable(train, [1]))
    job_id = gke.launch(req)
    name = k8s_name(job_id)
    first = pods_of(standin, job_id, 4)
    for pod in first:
        standin.run(pod, ("attempt 1",))
    wait_for(lambda: len(gke.logs(job_id)) == 4, what="every host seen running")
    standin.preempt(first[2])  # the Job fails with reason PodFailurePolicy; its gang goes
    second = pods_of(standin, job_id, 4, exclude=first)
    for pod in second:
        standin.run(pod, ("attempt 2",))
        standin.succeed(pod)
    info = finished(gke, job_id)
    assert info.status is JobStatus.SUCCEEDED
    assert [t.preemptions for t in info.tasks] == [0, 0, 1, 0]
    assert [t.failures for t in info.tasks] == [0] * 4
    assert [t.attempts for t in info.tasks] == [2] * 4
    deletes = standin.requests_of("DELETE", f"/jobs/{name}")
    assert [d.query.get("propagationPolicy") for d in deletes] == ["Foreground"]
    job_posts = standin.requests_of("POST", "/jobs")
    assert len(job_posts) == 2 and job_posts[0].body == job_posts[1].body
    assert len(standin.requests_of("POST", "/services")) == 1  # Service and ConfigMap stay
    for i in range(4):
        assert [x for x in gke.logs(job_id) if x.startswith(f"[replica-{i}]")] == [
            f"[replica-{i}] attempt 1",
            f"[replica-{i}] attempt 2",
        ]


def test_indexed_job_crash_without_failure_budget_fails_the_gang(gke, standin):
    job_id = gke.launch(request("v5litepod-16"))
    pods = pods_of(standin, job_id, 4)
    for pod in pods:
        standin.run(pod)
    standin.crash(pods[1], 2, ("OOM",))
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert [t.status for t in info.tasks] == [JobStatus.STOPPED, JobStatus.FAILED] + [
        JobStatus.STOPPED
    ] * 2
    assert info.tasks[1].failures == 1 and sum(t.preemptions for t in info.tasks) == 0
    assert (
        "exited with code 2" in info.error_message and "BackoffLimitExceeded" in info.error_message
    )
    assert "max_retries_failure=0" in info.error_message


def test_jobset_restarts_are_counted_as_preemptions_and_failures(gke, standin):
    job_id = gke.launch(request("v5litepod-16", 2, max_retries_failure=1))
    name = k8s_name(job_id)
    first = pods_of(standin, job_id, 8)
    for pod in first:
        standin.run(pod)
    wait_for(lambda: all(t.attempts == 1 for t in gke.poll(job_id).tasks))
    slice1_host2 = next(p for p in first if p.startswith(f"{name}-slice-1-2-"))
    assert gke.poll(job_id).tasks[6].worker == slice1_host2  # replica = slice * hosts + host
    standin.preempt(slice1_host2)  # the JobSet restarts; restartsCountTowardsMax stays 0
    second = pods_of(standin, job_id, 8, exclude=first)
    for pod in second:
        standin.run(pod)
    wait_for(lambda: all(t.attempts == 2 for t in gke.poll(job_id).tasks))
    standin.crash(second[0], 1, ("boom",))  # a restart that counts towards maxRestarts
    third = pods_of(standin, job_id, 8, exclude=first + second)
    for pod in third:
        standin.run(pod)
        standin.succeed(pod)
    info = finished(gke, job_id)
    assert info.status is JobStatus.SUCCEEDED
    assert standin.get("jobsets", name)["status"]["restarts"] == 2
    # Which pod failed is not known: the JobSet controller deleted it before the next poll.
    assert sum(t.preemptions for t in info.tasks) == 1
    assert sum(t.failures for t in info.tasks) == 1


def test_jobset_preemptions_past_the_budget_delete_the_jobset(gke, standin):
    job_id = gke.launch(request("v5litepod-16", 2, max_retries_preemption=0))
    pods = pods_of(standin, job_id, 8)
    for pod in pods:
        standin.run(pod)
    standin.preempt(pods[5])
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert "max_retries_preemption=0" in info.error_message
    assert standin.requests_of("DELETE", f"/jobsets/{k8s_name(job_id)}")


def test_jobset_failure_past_max_restarts_fails_the_job(gke, standin):
    job_id = gke.launch(request("v5litepod-16", 2))
    pods = pods_of(standin, job_id, 8)
    for pod in pods:
        standin.run(pod)
    standin.crash(pods[3], 7)
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert info.tasks[3].failures == 1 and "ReachedMaxRestarts" in info.error_message


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
