"""Clusters for fray_dask tests: the embedded Dask cluster shared with zephyr's tests, a
LocalCluster, and private Dask clusters whose worker processes a test may kill."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import pytest

from fray_dask import LocalCluster
from tests.zephyr.probes import start_dask_worker


@pytest.fixture(scope="session")
def fray_dask_cluster(dask_backend):
    """A DaskCluster on the embedded LocalCluster (2 worker processes, CPU=1 each)."""
    from fray_dask import DaskCluster

    cluster = DaskCluster()
    yield cluster
    cluster.close()


@pytest.fixture(params=["local", "dask"])
def cluster(request):
    """Behaviour every cluster must share runs on the subprocess LocalCluster and on Dask."""
    if request.param == "local":
        c = LocalCluster()
        yield c
        c.close()
    else:
        yield request.getfixturevalue("fray_dask_cluster")


class PrivateDask:
    """A scheduler with worker processes we own (no nanny): killing one removes it for good."""

    def __init__(self, allowed_failures: int):
        import dask
        import distributed

        with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
            self.cluster = distributed.LocalCluster(
                n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0"
            )
        self.address = self.cluster.scheduler_address
        self.client = distributed.Client(self.address, set_as_default=False)
        self.workers: dict[str, subprocess.Popen] = {}

    def add_worker(self, resources: str = "CPU=1,MEMORY=2e9") -> str:
        """Starts a worker process advertising `resources`; returns its address."""
        before = set(self.client.scheduler_info(n_workers=-1)["workers"])
        proc = start_dask_worker(self.address, "--resources", resources)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = set(self.client.scheduler_info(n_workers=-1)["workers"]) - before
            if new:
                address = new.pop()
                self.workers[address] = proc
                return address
            time.sleep(0.05)
        proc.kill()
        raise TimeoutError("a dask worker did not join within 30 s")

    def kill_worker(self, address: str) -> None:
        """SIGKILLs the worker process at `address` and waits until the scheduler drops it."""
        self.workers[address].send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while address in self.client.scheduler_info(n_workers=-1)["workers"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the scheduler still lists {address} 30 s after SIGKILL")
            time.sleep(0.05)

    def close(self) -> None:
        for proc in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        self.client.close()
        self.cluster.close()


@pytest.fixture
def private_dask():
    """A fresh scheduler (allowed-failures=0, like the embedded cluster) for destructive tests."""
    dask = PrivateDask(allowed_failures=0)
    yield dask
    dask.close()
