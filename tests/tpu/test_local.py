"""tpu.local: a TPU job as slices x hosts local processes wired like its GKE pods.

Real processes (the env wiring alone is tested in test_local_pods.py). The headline test runs
JAX's distributed runtime on CPU across 2 slices x 2 hosts: no TPU and no Kubernetes here, so
127.0.0.1 stands in for the pods' DNS names and JAX's CPU backend (gloo collectives) for the TPU
interconnect.
"""

from __future__ import annotations

import json

import pytest

from fray_dask import (
    Entrypoint,
    JobRequest,
    JobStatus,
    ResourceConfig,
    TpuConfig,
    cluster_from_spec,
)
from tests.fray_dask import jobs
from tests.processes import pid_alive, wait_for
from tests.tpu import jax_jobs
from tests.tpu.jax_jobs import noop, tpu_request
from tpu.local import LocalTpuCluster


@pytest.fixture
def tpu_cluster():
    cluster = LocalTpuCluster()
    yield cluster
    cluster.close()


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
    with pytest.raises(RuntimeError, match="replica 1 broke on attempt 1") as failure:
        tpu_cluster.result(job)
    assert any("replica 1" in note for note in failure.value.__notes__)


def test_result_is_each_hosts_return_value_in_replica_order(tpu_cluster):
    job = tpu_cluster.launch(tpu_request("values", jobs.replica_identity, "tpu", replicas=2))
    values = tpu_cluster.result(job, timeout=60)
    assert [(v["replica"], v["tpu_worker"]) for v in values] == [
        ("0", "0"),
        ("1", "1"),
        ("2", "0"),
        ("3", "1"),
    ]


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


def test_the_failure_budget_is_the_gangs_not_each_replicas(tpu_cluster, tmp_path):
    """Replica 0 fails the first attempt, replica 1 the second: with max_retries_failure=1 the
    job has spent its one restart, as a JobSet's maxRestarts counts, and fails."""
    job = tpu_cluster.launch(
        tpu_request("turns", jax_jobs.fail_in_turn, str(tmp_path), max_retries_failure=1)
    )
    info = tpu_cluster.wait(job, timeout=60)
    assert info.status is JobStatus.FAILED
    assert [t.failures for t in info.tasks] == [1, 1]
    assert [t.attempts for t in info.tasks] == [2, 2]
    assert info.error_message.startswith("replica 1: RuntimeError: replica 1 broke on attempt 2")


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
