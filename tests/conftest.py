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
    from zephyr.backends.connection import shutdown_embedded
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


@pytest.fixture(autouse=True)
def no_leaked_zephyr_threads():
    """A test must close the thread pools it starts (ThreadBackend.close / context manager)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("zephyr") and t.is_alive()
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running by the test: {leaked}"
