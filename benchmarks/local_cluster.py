"""Shared by the benchmark scripts: a DaskBackend on the embedded cluster, or on a LocalCluster of
N single-threaded worker processes advertising the embedded cluster's resources (--workers N)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any


def start_backend(workers: int | None) -> tuple[Any, int, Callable[[], None]]:
    """(DaskBackend, worker count, close). `workers=None` is the embedded cluster (one worker per
    core); N starts `distributed.LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`
    on 127.0.0.1 whose workers advertise CPU=1, MEMORY=<memory / N>, GPU=0, NON_PREEMPTIBLE=1,
    and the backend runs through `DaskBackend(client)`."""
    from zephyr import DaskBackend

    if workers is None:
        from fray_dask.embedded import shutdown_embedded

        backend = DaskBackend()
        return backend, len(backend.client.nthreads()), shutdown_embedded

    import dask
    import distributed
    from distributed.system import MEMORY_LIMIT

    if workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {workers}")
    memory = int(MEMORY_LIMIT // workers)
    # As the embedded cluster: a task lost with its worker is resubmitted by zephyr's driver.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            memory_limit=memory,
            resources={"CPU": 1, "MEMORY": memory, "GPU": 0, "NON_PREEMPTIBLE": 1},
            silence_logs=logging.CRITICAL,
        )
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(workers, timeout=120)

    def close() -> None:
        client.close()
        cluster.close()

    return DaskBackend(client), workers, close


def default_workers() -> int:
    """What the embedded cluster starts: one worker per core."""
    return max(1, os.cpu_count() or 1)
