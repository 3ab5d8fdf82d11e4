"""tpu.local: a TPU job as slices x hosts local processes wired like its GKE pods.

The env-wiring tests resolve build_manifests' pod env for each pod without starting anything. The
cluster tests run real processes; the headline one runs JAX's distributed runtime on CPU across
2 slices x 2 hosts: no TPU and no Kubernetes here, so 127.0.0.1 stands in for the pods' DNS names
and JAX's CPU backend (gloo collectives) for the TPU interconnect.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from fray_dask import (
    Entrypoint,
    JobRequest,
    JobStatus,
    ResourceConfig,
    TpuConfig,
    cluster_from_spec,
    create_environment,
)
from tests.tpu import jax_jobs
from tpu.local import LOCALHOST, LocalTpuCluster, expand, local_pods, resolve_env


def tpu_request(name, fn, *args, tpu="v4-16", replicas=1, env_vars=None, **kwargs) -> JobRequest:
    return JobRequest(
        name=name,
        entrypoint=Entrypoint.from_callable(fn, args),
        resources=ResourceConfig(device=TpuConfig(tpu), replicas=replicas),
        environment=create_environment(env_vars=env_vars) if env_vars else None,
        **kwargs,
    )


def noop() -> None:
    pass


@pytest.fixture
def tpu_cluster():
    cluster = LocalTpuCluster()
    yield cluster
    cluster.close()


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split()[2] != "Z"


# -- the headline: JAX reads our wiring -----------------------------------------------------------


def test_jax_psum_across_two_slices_of_two_hosts(tpu_cluster, tmp_path):
    """Four processes (v4-16: 2 hosts per slice, 2 slices) join one JAX distributed system using
    only the variables the JobSet manifest sets, and a psum over the global mesh sees all four.

    The entrypoint calls `jax.distributed.initialize(cluster_detection_method="gketpu")`: JAX's
    own GKE TPU detection, reading TPU_WORKER_ID, TPU_WORKER_HOSTNAMES, MEGASCALE_SLICE_ID,
    MEGASCALE_NUM_SLICES, MEGASCALE_COORDINATOR_ADDRESS and JAX_COORDINATOR_PORT. A plain
    `initialize()` cannot pick it on this machine: auto-detection first checks for TPU hardware
    (`running_in_cloud_tpu_vm`), which a CPU host lacks; naming the method skips that check.
    """
    pytest.importorskip("jax")
    job = tpu_cluster.launch(
        tpu_request("psum", jax_jobs.psum_over_processes, str(tmp_path), replicas=2)
    )
    info = tpu_cluster.wait(job, timeout=90)
    logs = "\n".join(tpu_cluster.logs(job))
    assert info.status is JobStatus.SUCCEEDED, logs
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(4)]
    for index, result in enumerate(results):
        assert result["process_index"] == index
        assert result["process_count"] == 4
        assert result["device_count"] == 4
        assert result["psum"] == 10  # 1 + 2 + 3 + 4
        assert result["gathered"] == [1, 2, 3, 4]
        # JAX's process index is slice * hosts + host, our replica index too.
        assert index == result["slice"] * 2 + result["worker"] == result["replica"]
    assert {(r["slice"], r["worker"]) for r in results} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for index in range(4):
        assert f"[replica-{index}] psum=10 on process {index}" in logs


# -- env wiring (no processes) --------------------------------------------------------------------


def test_single_host_pod_env():
    (pod,) = local_pods(tpu_request("one", noop, tpu="v6e-8"), name="one")
    assert (pod.slice_index, pod.host) == (0, 0)
    assert pod.env["TPU_WORKER_ID"] == "0"
    assert pod.env["TPU_WORKER_HOSTNAMES"] == LOCALHOST
    assert pod.env["FRAY_JOB_NAME"] == "one"
    assert pod.env["JAX_PLATFORMS"] == "cpu"
    assert int(pod.env["JAX_COORDINATOR_PORT"]) > 0
    assert not [k for k in pod.env if k.startswith("MEGASCALE_")]


def test_multi_host_pods_get_their_worker_ids_and_one_coordinator_port():
    pods = local_pods(tpu_request("multi", noop, tpu="v5litepod-16"), name="multi")
    assert [(p.slice_index, p.host) for p in pods] == [(0, h) for h in range(4)]
    assert [p.env["TPU_WORKER_ID"] for p in pods] == ["0", "1", "2", "3"]
    for pod in pods:
        assert pod.env["TPU_WORKER_HOSTNAMES"] == ",".join([LOCALHOST] * 4)
        assert "MEGASCALE_SLICE_ID" not in pod.env
    assert len({p.env["JAX_COORDINATOR_PORT"] for p in pods}) == 1


def test_jobset_pods_get_slice_ids_and_a_megascale_coordinator():
    pods = local_pods(tpu_request("ms", noop, tpu="v4-16", replicas=3), name="ms")
    layout = [(p.slice_index, p.host) for p in pods]
    assert layout == [(s, h) for s in range(3) for h in range(2)]
    for pod in pods:
        assert pod.env["MEGASCALE_SLICE_ID"] == str(pod.slice_index)
        assert pod.env["TPU_WORKER_ID"] == str(pod.host)
        assert pod.env["MEGASCALE_NUM_SLICES"] == "3"
        assert pod.env["TPU_WORKER_HOSTNAMES"] == f"{LOCALHOST},{LOCALHOST}"
    coordinator = {p.env["MEGASCALE_COORDINATOR_ADDRESS"] for p in pods}
    megascale_port = {p.env["MEGASCALE_PORT"] for p in pods}
    jax_port = {p.env["JAX_COORDINATOR_PORT"] for p in pods}
    assert len(coordinator) == len(megascale_port) == len(jax_port) == 1
    # The manifests give the coordinator MEGASCALE_PORT; the local ports keep that relation.
    assert coordinator == {f"{LOCALHOST}:{megascale_port.pop()}"}
    assert coordinator != {f"{LOCALHOST}:{jax_port.pop()}"}


def test_secrets_and_user_env_vars_reach_the_pods():
    env = {"HF_TOKEN": "hf_abcdef123", "DATA_PATH": "gs://bucket/data", "JAX_PLATFORMS": "tpu"}
    pods = local_pods(tpu_request("sec", noop, env_vars=env), name="sec")
    for pod in pods:
        assert pod.env["HF_TOKEN"] == "hf_abcdef123"  # from the Secret, through secretKeyRef
        assert pod.env["DATA_PATH"] == "gs://bucket/data"
        assert pod.env["JAX_PLATFORMS"] == "tpu"  # the request's own choice wins


def test_process_addresses_get_a_distinct_port_per_host():
    addresses = ",".join(f"pa-{i}.pa:8471" for i in range(4))
    request = tpu_request(
        "pa", noop, tpu="v5litepod-16", env_vars={"TPU_PROCESS_ADDRESSES": addresses}
    )
    pods = local_pods(request, name="pa")
    values = {p.env["TPU_PROCESS_ADDRESSES"] for p in pods}
    assert len(values) == 1  # every host of the slice sees the same list
    entries = values.pop().split(",")
    assert [e.split(":")[0] for e in entries] == [LOCALHOST] * 4
    ports = {int(e.split(":")[1]) for e in entries}
    assert len(ports) == 4 and int(pods[0].env["JAX_COORDINATOR_PORT"]) not in ports


def test_hostnames_that_name_no_pod_or_the_wrong_host_are_refused():
    wrong_order = ",".join(f"wo-{i}.wo:8471" for i in (1, 0, 2, 3))
    request = tpu_request(
        "wo", noop, tpu="v5litepod-16", env_vars={"TPU_PROCESS_ADDRESSES": wrong_order}
    )
    with pytest.raises(ValueError, match="position 0; entry i must be host i"):
        local_pods(request, name="wo")
    request = tpu_request("un", noop, tpu="v5litepod-16", env_vars={"TPU_PROCESS_ADDRESSES": "x:1"})
    with pytest.raises(ValueError, match="names 'x', which is no pod of this IndexedJob"):
        local_pods(request, name="un")


def test_binary_commands_are_expanded_with_the_pod_env():
    request = JobRequest(
        name="bin",
        entrypoint=Entrypoint(binary="echo", args=["w$(TPU_WORKER_ID)", "$$(TPU_WORKER_ID)"]),
        resources=ResourceConfig(device=TpuConfig("v4-16")),
    )
    assert [p.command for p in local_pods(request, name="bin")] == [
        ("echo", "w0", "$(TPU_WORKER_ID)"),
        ("echo", "w1", "$(TPU_WORKER_ID)"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(A)", "x1y1"),
        ("$(B)", "$(B)"),  # unknown: stays literal
        ("$$(A)", "$(A)"),  # escaped
        ("$$", "$"),
        ("$x", "$x"),
        ("a$", "a$"),
        ("$(A", "$(A"),  # unclosed
        ("$(A)$$$(A)", "1$1"),
        ("", ""),
    ],
)
def test_expand_follows_kubernetes_rules(text, expected):
    assert expand(text, {"A": "1"}) == expected


def test_resolve_env_expands_only_earlier_entries():
    entries = [
        {"name": "A", "value": "a-$(B)"},
        {"name": "IDX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['k']"}}},
        {"name": "B", "value": "b-$(IDX)-$(A)"},
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "S"}}},
        {"name": "C", "value": "$(S)"},
        {"name": "O", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "O", "optional": True}}},
    ]
    env = resolve_env(entries, {"k": "7"}, {"sec": {"S": "s3cret"}})
    assert env == {"A": "a-$(B)", "IDX": "7", "B": "b-7-a-$(B)", "S": "s3cret", "C": "s3cret"}


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"fieldRef": {"fieldPath": "status.podIP"}}, "fieldRef 'status.podIP'"),
        ({"fieldRef": {"fieldPath": "metadata.annotations['other']"}}, "annotation 'other'"),
        ({"secretKeyRef": {"name": "nope", "key": "K"}}, "Secret 'nope'"),
        ({"configMapKeyRef": {"name": "cm", "key": "K"}}, "valueFrom configMapKeyRef"),
    ],
)
def test_resolve_env_refuses_what_it_cannot_emulate(source, match):
    with pytest.raises(ValueError, match=match):
        resolve_env([{"name": "X", "valueFrom": source}], {"k": "0"}, {})


# -- the cluster ----------------------------------------------------------------------------------


def test_a_failing_process_stops_the_gang_and_fails_the_job(tpu_cluster, tmp_path):
    job = tpu_cluster.launch(
        tpu_request("gang", jax_jobs.fail_worker, 1, str(tmp_path), 1, replicas=2)
    )
    info = tpu_cluster.wait(job, timeout=60)
    assert info.status is JobStatus.FAILED
    assert info.error_message == "replica 1: RuntimeError: replica 1 broke on attempt 1"
    assert [t.status for t in info.tasks] == [
        JobStatus.STOPPED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
        JobStatus.STOPPED,
    ]
    assert [t.attempts for t in info.tasks] == [1, 1, 1, 1]
    assert "[replica-1] fray: replica 1 failed; stopping" in "\n".join(tpu_cluster.logs(job))


def test_the_gang_restarts_within_max_retries_failure(tpu_cluster, tmp_path):
    job = tpu_cluster.launch(
        tpu_request("retry", jax_jobs.fail_worker, 0, str(tmp_path), 1, max_retries_failure=1)
    )
    info = tpu_cluster.wait(job, timeout=60)
    assert info.status is JobStatus.SUCCEEDED, tpu_cluster.logs(job)
    assert [t.attempts for t in info.tasks] == [2, 2]
    assert [t.failures for t in info.tasks] == [1, 0]
    for replica in range(2):
        assert (tmp_path / f"attempts-{replica}").read_text().count("attempt") == 2


def test_a_binary_runs_with_its_command_expanded(tpu_cluster):
    code = (
        "import os; print('worker', os.environ['TPU_WORKER_ID'], 'slice', '$(MEGASCALE_SLICE_ID)')"
    )
    request = JobRequest(
        name="bin",
        entrypoint=Entrypoint(binary="python", args=["-c", code]),
        resources=ResourceConfig(device=TpuConfig("v4-16"), replicas=2),
    )
    job = tpu_cluster.launch(request)
    info = tpu_cluster.wait(job, timeout=60)
    assert info.status is JobStatus.SUCCEEDED, tpu_cluster.logs(job)
    assert sorted(tpu_cluster.logs(job)) == [
        f"[replica-{s * 2 + h}] worker {h} slice {s}" for s in range(2) for h in range(2)
    ]


def test_terminate_stops_every_process(tpu_cluster, tmp_path):
    job = tpu_cluster.launch(
        tpu_request("term", jax_jobs.sleep_with_pid, str(tmp_path), 300, replicas=2)
    )
    paths = [tmp_path / f"pid-{i}" for i in range(4)]
    wait_for(lambda: all(p.exists() for p in paths), "four processes starting")
    pids = [int(p.read_text()) for p in paths]
    tpu_cluster.terminate(job)
    info = tpu_cluster.wait(job, timeout=30)
    assert info.status is JobStatus.STOPPED
    assert all(t.status is JobStatus.STOPPED for t in info.tasks)
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), "the processes exiting")


def test_non_tpu_requests_are_refused(tpu_cluster):
    request = JobRequest(name="cpu", entrypoint=Entrypoint.from_callable(noop))
    with pytest.raises(ValueError, match="runs TPU jobs only.*FRAY_CLUSTER_SPEC=local or dask"):
        tpu_cluster.launch(request)
    assert tpu_cluster.list_jobs() == []


def test_cluster_spec():
    cluster = cluster_from_spec("tpu-local")
    try:
        assert isinstance(cluster, LocalTpuCluster) and cluster.spec == "tpu-local"
    finally:
        cluster.close()
    with pytest.raises(ValueError, match="'tpu-local' does not take x"):
        cluster_from_spec("tpu-local?x=1")


def test_module_imports_without_jax_kubernetes_or_dask():
    from tests.imports import heavy_modules_loaded

    heavy = ("jax", "kubernetes", "dask", "distributed")
    assert heavy_modules_loaded("import tpu.local", heavy) == []
