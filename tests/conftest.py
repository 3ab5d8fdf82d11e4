"""Shared fixtures: one embedded LocalCluster per test session, backends to parametrise over, and a
check that no thread pool started by a test outlives it."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from zephyr import SyncBackend, ThreadBackend


@pytest.fixture(scope="session")
def dask_backend():
    """A DaskBackend on the embedded LocalCluster (2 single-threaded worker processes here)."""
    from fray_dask.embedded import shutdown_embedded
    from zephyr.backends.dask import DaskBackend

    logging.getLogger("distributed").setLevel(logging.WARNING)
    backend = DaskBackend()
    assert backend.client.status == "running"  # start the cluster now, not inside the first test
    yield backend
    shutdown_embedded()


@pytest.fixture(params=["sync", "threads", "dask"])
def backend(request):
    """End-to-end behaviours run on the reference runner, threads and Dask, expecting the same."""
    if request.param == "sync":
        yield SyncBackend()
    elif request.param == "threads":
        b = ThreadBackend(max_parallelism=2)
        yield b
        b.close()
    else:
        yield request.getfixturevalue("dask_backend")


def _open_clients() -> set[int]:
    import sys

    if "distributed" not in sys.modules:
        return set()
    from distributed.client import _global_clients

    from fray_dask.embedded import running_embedded

    # The embedded cluster's client lives for the whole process by design.
    embedded = running_embedded()
    shared = embedded.client if embedded is not None else None
    return {
        id(c) for c in list(_global_clients.values()) if c.status == "running" and c is not shared
    }


# Threads our packages start: zephyr's pools, LocalCluster supervisors, ThreadContext pools.
_OWN_THREADS = ("zephyr", "fray-local", "fray-task", "fray-actor", "fray-gke", "fray-executor")


@pytest.fixture(autouse=True)
def no_leaked_threads_or_clients():
    """A test must close the thread pools and Dask clients it starts (shared fixtures excepted)."""
    before = {t.ident for t in threading.enumerate()}
    clients_before = _open_clients()
    yield
    leaked_clients = _open_clients() - clients_before
    assert not leaked_clients, f"{len(leaked_clients)} Dask client(s) left open by the test"
    deadline = time.monotonic() + 5
    while True:
        leaked = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.name.startswith(_OWN_THREADS) and t.is_alive()
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running by the test: {leaked}"
