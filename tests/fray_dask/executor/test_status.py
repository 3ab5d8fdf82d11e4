"""Status files and leases on local disk (flock) and gs:// (ifGenerationMatch). gs:// runs against
gcp-storage-emulator behind tests/gcs_preconditions.py: the emulator ignores preconditions, and
the proxy enforces them as GCS documents, so the compare-and-swap is exercised for real."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fray_dask import LocalCluster
from fray_dask.executor import (
    SUCCESS,
    Executor,
    ExecutorStep,
    LeaseLostError,
    read_status,
    this_output_path,
    versioned,
)
from fray_dask.executor.status import LEASE_FILE, StepLease, write_status
from tests import gcs_preconditions
from tests.fray_dask.executor import dag_steps

gcs_cas = gcs_preconditions.gcs_cas


@pytest.fixture(params=["local", "gs"])
def root(tmp_path, request):
    """A folder for step outputs: on local disk, and on gs:// with preconditions enforced."""
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("gcs_cas")
    return f"gs://bucket/{tmp_path.name}"


def test_one_holder_at_a_time_and_a_stale_lease_is_taken_over(root):
    path = f"{root}/step-abc123"
    first, second = StepLease(path, "first", 60), StepLease(path, "second", 60)
    assert first.try_acquire()
    assert first.try_acquire()  # already ours
    assert not second.try_acquire()
    assert second.held_elsewhere().holder == "first"
    first.refresh()
    # From a driver that calls a lease stale after 50 ms, first's lease soon is.
    impatient = StepLease(path, "second", 0.05)
    time.sleep(0.1)
    assert impatient.held_elsewhere() is None
    assert impatient.try_acquire()
    with pytest.raises(LeaseLostError, match="held by second, not by this driver"):
        first.refresh()
    first.release()  # not ours any more: nothing happens
    assert second.current().holder == "second"
    impatient.release()
    assert second.current() is None
    assert StepLease(path, "third", 60).try_acquire()


def test_statuses_are_written_whole_and_read_back(root):
    path = f"{root}/step"
    assert read_status(path) is None
    write_status(path, "RUNNING")
    assert read_status(path) == "RUNNING"
    write_status(path, SUCCESS)
    assert read_status(path) == SUCCESS
    with pytest.raises(ValueError, match="one of"):
        write_status(path, "DONE")


def test_racing_holders_on_gcs_get_one_lease(gcs_cas, tmp_path):
    path = f"gs://bucket/{tmp_path.name}/race"
    barrier = threading.Barrier(8)
    won: list[str] = []

    def contend(i: int) -> None:
        lease = StepLease(path, f"holder-{i}", 60)
        barrier.wait(timeout=30)
        if lease.try_acquire():
            won.append(lease.holder)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1
    assert StepLease(path, "x", 60).current().holder == won[0]


def test_racing_processes_on_local_disk_get_one_lease(tmp_path):
    """Six processes that try to take the same lease at the same moment: one wins."""
    go = tmp_path / "go"
    code = textwrap.dedent(
        f"""
        import os, time
        from fray_dask.executor.status import StepLease
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        print(StepLease({str(tmp_path / "step")!r}, f"p{{os.getpid()}}", 60).try_acquire())
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    time.sleep(0.5)  # all six are polling for the file by now (or soon: they race all the same)
    go.write_text("")
    answers = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(answers) == ["False"] * 5 + ["True"]
    assert os.path.getsize(tmp_path / "step" / LEASE_FILE) > 0


def test_a_dag_runs_with_its_outputs_and_leases_on_gcs(gcs_cas, tmp_path):
    """The whole executor on a gs:// prefix: steps write there, a second run skips them."""
    prefix = f"gs://bucket/{tmp_path.name}/dag"
    config = {"text": versioned("hello"), "out": this_output_path("hello.txt")}
    first = ExecutorStep("write", dag_steps.write_object, config)
    with LocalCluster() as cluster:  # started after gcs_cas: its jobs see the emulator
        outcomes = Executor(prefix, cluster=cluster).run([first])
        assert [o.action for o in outcomes] == ["ran"]
        again = Executor(prefix, cluster=cluster).run([first])
    assert [o.action for o in again] == ["skipped"]
    out = outcomes[0].output_path
    assert gcs_cas.cat(f"{out}/hello.txt") == b"hello"
    assert read_status(out) == SUCCESS
    assert StepLease(out, "anyone", 60).current() is None  # released


def test_a_prefix_without_compare_and_swap_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compare-and-swap.*local paths and gs://"):
        Executor("memory://bucket/out")
