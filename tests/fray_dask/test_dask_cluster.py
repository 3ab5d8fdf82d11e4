"""DaskCluster specifics: replicas hold worker resources, impossible requests are refused at
launch, lost workers count as preemptions, jobs reach their own cluster, bad addresses fail fast."""

from __future__ import annotations

import glob
import os
import tempfile
import time

import pytest

from fray_dask import (
    DaskCluster,
    Entrypoint,
    JobRequest,
    JobStatus,
    ResourceConfig,
    current_cluster,
)
from tests.fray_dask import jobs
from tests.fray_dask.test_clusters import request
from tests.processes import pid_alive, wait_for_file
from tests.zephyr.probes import ConcurrencyProbe

pytestmark = pytest.mark.dask


def test_replicas_hold_their_cpus_and_jobs_reach_their_own_cluster(fray_dask_cluster, tmp_path):
    """The embedded cluster has 2 workers with CPU=1: three 1-CPU jobs run at most two at a time,
    and two jobs holding both CPUs can still run tasks of their own (replicas secede from the
    worker's thread pool)."""
    probe = ConcurrencyProbe.create(tmp_path, "cpu")
    held = [
        fray_dask_cluster.launch(request("hold", jobs.hold_probe, probe, 1.0)) for _ in range(3)
    ]
    fray_dask_cluster.wait(held, raise_on_failure=True)
    assert (probe.max, probe.total) == (2, 3)

    both = ConcurrencyProbe.create(tmp_path, "both")
    outs = [str(tmp_path / f"nested-{i}") for i in range(2)]
    nested = [
        fray_dask_cluster.launch(request("nested", jobs.both_then_nested, both, outs[i], i + 3))
        for i in range(2)
    ]
    fray_dask_cluster.wait(nested, raise_on_failure=True, timeout=60)
    assert [wait_for_file(o) for o in outs] == ["9", "16"]
    assert "[replica-0] context DaskContext" in fray_dask_cluster.logs(nested[0])


def test_requests_no_worker_can_hold_are_refused_at_launch(fray_dask_cluster):
    def launch(**resources):
        return fray_dask_cluster.launch(
            JobRequest(
                name="big",
                entrypoint=Entrypoint(callable=jobs.square),
                resources=ResourceConfig(**resources),
            )
        )

    with pytest.raises(
        ValueError,
        match=r"job 'big' cannot be placed: it needs CPU=64.*CPU=1.*"
        r"--resources 'CPU=64,MEMORY=",
    ):
        launch(cpu=64)
    with pytest.raises(ValueError, match=r"needs CPU=1, MEMORY=4TB"):
        launch(ram="4t")
    with pytest.raises(ValueError, match="TPU jobs run on GKE"):
        launch(device=ResourceConfig.with_tpu("v4-8").device)
    with pytest.raises(ValueError, match="GPU=8"):
        launch(device=ResourceConfig.with_gpu("A100", 8).device)
    assert not [j for j in fray_dask_cluster.list_jobs() if j.name == "big"]


def test_non_preemptible_jobs_run_only_on_workers_that_advertise_it(private_dask, tmp_path):
    plain = private_dask.add_worker("CPU=1,MEMORY=2e9")
    with DaskCluster(private_dask.address) as cluster:
        steady = JobRequest(
            name="controller",
            entrypoint=Entrypoint.from_callable(jobs.square, [2]),
            resources=ResourceConfig(preemptible=False),
        )
        with pytest.raises(ValueError, match="NON_PREEMPTIBLE=1"):
            cluster.launch(steady)
        safe = private_dask.add_worker("CPU=1,MEMORY=2e9,NON_PREEMPTIBLE=1")
        infos = cluster.wait([cluster.launch(steady) for _ in range(3)], raise_on_failure=True)
        assert {i.tasks[0].worker for i in infos} == {safe} != {plain}


@pytest.mark.parametrize("allowed_failures", [0, 3])
def test_a_lost_worker_is_a_preemption_and_the_replica_runs_again(allowed_failures, tmp_path):
    """With allowed-failures=0 (the embedded cluster) the scheduler reports KilledWorker; with the
    default 3 it reschedules silently and the second start notice reveals the preemption."""
    from tests.fray_dask.conftest import PrivateDask

    dask = PrivateDask(allowed_failures)
    try:
        dask.add_worker()
        dask.add_worker()
        with DaskCluster(dask.address) as cluster:
            counter = str(tmp_path / "attempts")
            job = cluster.launch(
                request("preempt-me", jobs.sleep_on_first_attempt, counter, str(tmp_path))
            )
            pid = int(wait_for_file(str(tmp_path / "pid-0")))
            dask.kill_worker(cluster.poll(job).tasks[0].worker)
            info = cluster.wait(job, raise_on_failure=True, timeout=60)
            assert (info.tasks[0].preemptions, info.tasks[0].failures) == (1, 0)
            assert "[replica-0] attempt 2 done" in cluster.logs(job)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not pid_alive(pid), "the job's process outlived its worker"
            # It removed its work dir (payload.pkl) before dying: no one else was left to.
            assert not glob.glob(os.path.join(tempfile.gettempdir(), f"fray-{job}-0-*"))
    finally:
        dask.close()


def test_preemptions_beyond_the_budget_fail_the_job(private_dask, tmp_path):
    private_dask.add_worker()
    private_dask.add_worker()
    with DaskCluster(private_dask.address) as cluster:
        job = cluster.launch(
            request(
                "fragile",
                jobs.sleep_on_first_attempt,
                str(tmp_path / "attempts"),
                str(tmp_path),
                max_retries_preemption=0,
            )
        )
        wait_for_file(str(tmp_path / "pid-0"))
        private_dask.kill_worker(cluster.poll(job).tasks[0].worker)
        info = cluster.wait(job, timeout=60)
        assert info.status is JobStatus.FAILED
        assert "max_retries_preemption=0" in info.error_message


def test_an_unreachable_scheduler_fails_within_ten_seconds(monkeypatch):
    monkeypatch.setenv("FRAY_CLUSTER_SPEC", "dask?address=tcp://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(
        ConnectionError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"
    ):
        current_cluster()
    assert time.monotonic() - started < 12  # the deadline the error promises, with slack


def test_jobs_see_the_cluster_that_launched_them(fray_dask_cluster):
    job = fray_dask_cluster.launch(request("where", jobs.report_current_cluster))
    fray_dask_cluster.wait(job, raise_on_failure=True)
    logs = fray_dask_cluster.logs(job)
    assert f"[replica-0] cluster DaskCluster {fray_dask_cluster.spec}" in logs
    assert "[replica-0] context DaskContext" in logs


def test_a_cluster_given_an_address_owns_and_closes_its_client(fray_dask_cluster):
    cluster = DaskCluster(fray_dask_cluster.address)
    assert cluster.client is not fray_dask_cluster.client
    job = cluster.launch(request("own", jobs.square, 4))
    assert cluster.wait(job).status is JobStatus.SUCCEEDED
    cluster.close()
    assert cluster.client.status == "closed"
    assert os.environ.get("FRAY_CLUSTER_SPEC") is None


def test_replicas_go_to_free_workers_and_queued_ones_block_nothing(fray_dask_cluster, tmp_path):
    """Dask alone would place a second job on a worker whose CPU a seceded first job holds (its
    placement ignores resources in use), where it would wait, and block resource-restricted work
    queued behind it. Replicas wait in the driver instead, and go where the resources are free."""
    from fray_dask import DaskContext

    folders = [tmp_path / f"job-{i}" for i in range(3)]
    for folder in folders:
        folder.mkdir()
    running = []
    for folder in folders[:2]:
        running.append(
            fray_dask_cluster.launch(request("sleep", jobs.sleep_with_pid, str(folder), 300))
        )
        wait_for_file(str(folder / "pid-0"))  # each one starts: the second found the free worker
    workers = {fray_dask_cluster.poll(j).tasks[0].worker for j in running}
    assert len(workers) == 2
    queued = fray_dask_cluster.launch(request("queued", jobs.sleep_with_pid, str(folders[2]), 300))
    time.sleep(0.5)
    assert fray_dask_cluster.poll(queued).status is JobStatus.PENDING
    ctx = DaskContext()
    actor = ctx.create_actor(jobs.Counter, preemptible=False, num_cpus=0)  # not stuck behind it
    assert ctx.get(actor.incr.remote(), timeout=30) == 1
    fray_dask_cluster.terminate(running[0])
    wait_for_file(str(folders[2] / "pid-0"))  # the queued job starts once a CPU is free
    for job in (running[1], queued):
        fray_dask_cluster.terminate(job)
    infos = fray_dask_cluster.wait([*running, queued], timeout=20)
    assert {i.status for i in infos} == {JobStatus.STOPPED}


def test_losing_the_scheduler_fails_running_jobs_instead_of_hanging(tmp_path):
    """A scheduler process that dies: waiters get a failed JobInfo naming the scheduler after
    the cluster's timeout, not an endless wait."""
    import socket
    import subprocess
    import sys

    from tests.zephyr.probes import start_dask_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        cluster = DaskCluster(address, timeout=20)
        worker = start_dask_worker(address, "--resources", "CPU=1,MEMORY=2e9")
        job = cluster.launch(request("orphan", jobs.sleep_with_pid, str(tmp_path), 300))
        wait_for_file(str(tmp_path / "pid-0"))
        cluster.timeout = 2  # how long the scheduler may be out of reach before jobs fail
        scheduler.kill()
        info = cluster.wait(job, timeout=60)
        assert info.status is JobStatus.FAILED
        assert f"lost contact with the Dask scheduler at {address}" in info.error_message
        with pytest.raises(ConnectionError, match=f"the Dask scheduler at {address} is out of"):
            cluster.launch(request("too-late", jobs.square, 2))
        cluster.close()
    finally:
        scheduler.kill()
        if worker is not None:
            worker.kill()
            worker.wait(timeout=10)
        scheduler.wait(timeout=10)
