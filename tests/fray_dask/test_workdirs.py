"""Replica work directories (`<tmp>/fray-<job>-<replica>-pid<owner>-*`) are removed however the
replica ends: killed, with its driver killed, or (both dead at once) by the next cluster start,
which leaves those of live processes alone. Real drivers and replicas as subprocesses."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fray_dask import Entrypoint, JobFailedError, JobRequest, LocalCluster
from tests.fray_dask import jobs
from tests.processes import pid_alive, wait_for, wait_for_file

ROOT = str(Path(__file__).resolve().parents[2])

DRIVER = """
import os, time
from fray_dask import Entrypoint, JobRequest, LocalCluster
from tests.fray_dask import jobs
cluster = LocalCluster()
entrypoint = Entrypoint.from_callable(jobs.sleep_with_pid, [{folder!r}, 300])
job = cluster.launch(JobRequest(name="orphan", entrypoint=entrypoint))
with open(os.path.join({folder!r}, "job.tmp"), "w") as f:
    f.write(job)
os.replace(os.path.join({folder!r}, "job.tmp"), os.path.join({folder!r}, "job"))
time.sleep(300)
"""


def workdirs(job: str) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"fray-{job}-0-*"))


def start_driver(folder: Path) -> tuple[subprocess.Popen, str, int, str]:
    """A driver process running one sleeping job: (driver, job id, replica pid, work dir)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(folder=str(folder))], env=env)
    job = wait_for_file(str(folder / "job"))
    replica = int(wait_for_file(str(folder / "pid-0")))
    [workdir] = workdirs(job)
    assert f"-pid{driver.pid}-" in workdir  # the directory names its owner
    assert os.path.exists(os.path.join(workdir, "payload.pkl"))
    return driver, job, replica, workdir


@pytest.mark.dask
def test_a_replica_killed_with_sigkill_fails_and_leaves_no_work_dir(cluster, tmp_path):
    job = cluster.launch(
        JobRequest(
            name="killed",
            entrypoint=Entrypoint.from_callable(jobs.sleep_with_pid, [str(tmp_path), 300]),
        )
    )
    replica = int(wait_for_file(str(tmp_path / "pid-0")))
    [workdir] = workdirs(job)
    os.kill(replica, signal.SIGKILL)
    with pytest.raises(JobFailedError, match="killed by SIGKILL"):
        cluster.result(job, timeout=60)
    assert not os.path.exists(workdir)


def test_a_driver_killed_mid_job_leaves_no_work_dir(tmp_path):
    """The replica's runner sees its lifeline close, removes its work directory, then dies."""
    driver, _, replica, workdir = start_driver(tmp_path)
    driver.kill()
    driver.wait(timeout=10)
    wait_for(lambda: not os.path.exists(workdir), f"{workdir} to be removed", 10)
    wait_for(lambda: not pid_alive(replica), "the orphaned replica to die", 10)


def test_a_cluster_start_sweeps_work_dirs_of_dead_drivers_only(tmp_path):
    """Driver and replica killed at once (nobody left to clean up): the next LocalCluster removes
    their directory, and keeps one whose owner still runs."""
    driver, _, replica, stale = start_driver(tmp_path)
    driver.send_signal(signal.SIGSTOP)  # it can no longer react to its replica's end
    os.kill(replica, signal.SIGKILL)
    driver.kill()
    driver.wait(timeout=10)
    assert os.path.exists(stale)
    owner = subprocess.Popen(["sleep", "60"])
    live = tempfile.mkdtemp(prefix=f"fray-other-0-pid{owner.pid}-")
    try:
        LocalCluster().close()
        assert not os.path.exists(stale)
        assert os.path.exists(live)
    finally:
        owner.kill()
        owner.wait(timeout=10)
        shutil.rmtree(live, ignore_errors=True)
