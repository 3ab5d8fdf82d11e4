"""The embedded Dask cluster: one LocalCluster per process on 127.0.0.1, started on first use and
stopped at exit; zephyr's default backend and fray_dask's default cluster share it.

Imports distributed. The workers advertise the resources fray_dask.resources names.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
from typing import Any

import dask
import distributed
from distributed import Client

from fray_dask.connection import Connection, refuse
from fray_dask.resources import NON_PREEMPTIBLE

__all__ = ["DASHBOARD_PORT", "embedded", "running_embedded", "shutdown_embedded"]

_LOCK = threading.Lock()
_EMBEDDED: Connection | None = None
DASHBOARD_PORT = 8787  # the embedded cluster's dashboard, when that port is free


def _detect_gpus() -> int:
    """GPUs visible to this machine (0 without an NVIDIA driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    with contextlib.suppress(OSError):
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    return 0


@contextlib.contextmanager
def _main_hidden() -> Any:
    """Start worker processes without re-running the driver's `__main__` in each of them.

    multiprocessing's spawn re-imports the main script in every child; a script without an `if
    __name__ == "__main__":` guard (or one read from stdin) would otherwise run again in each
    worker. Workers do not need it: functions from `__main__` travel by value (cloudpickle).
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def embedded() -> Connection:
    """The process-wide embedded LocalCluster, started on first use and stopped at exit.

    One single-threaded worker process per core on 127.0.0.1, memory split evenly, each advertising
    CPU=1, MEMORY=<its memory limit>, GPU=<visible GPUs> and NON_PREEMPTIBLE=1. The returned
    connection is shared for the life of the process (releasing it never closes it). Inside a
    `refusing_clusters` block (`zephyr --dry-run`) it raises that block's error instead.
    """
    global _EMBEDDED
    refuse("the embedded Dask cluster")
    with _LOCK:
        if _EMBEDDED is not None and _EMBEDDED.running:
            return _EMBEDDED.acquire()
        from distributed.system import MEMORY_LIMIT

        n = max(1, os.cpu_count() or 1)
        memory = int(MEMORY_LIMIT // n)
        # distributed warns in four lines when 8787 is taken and picks another port; ask for any
        # free port ourselves instead, and say which one in the dashboard line.
        dashboard_port = DASHBOARD_PORT if _port_free(DASHBOARD_PORT) else 0
        # A task lost with its worker surfaces to the driver at once, which resubmits it up to the
        # backend's max_retries times: one retry budget, counted in one place.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _main_hidden():
            cluster = distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=f"127.0.0.1:{dashboard_port}",
                memory_limit=memory,
                # Local processes are never preempted: fray_dask places non-preemptible jobs and
                # actors (preemptible=False) only on workers that advertise NON_PREEMPTIBLE.
                resources={
                    "CPU": 1,
                    "MEMORY": memory,
                    "GPU": _detect_gpus(),
                    NON_PREEMPTIBLE: 1,
                },
                silence_logs=logging.CRITICAL,  # user errors are reported by the driver
            )
        client = Client(cluster, set_as_default=False)
        _EMBEDDED = Connection(client, cluster)
        _EMBEDDED.shared = True
        if not dashboard_port:
            _EMBEDDED.note = f"port {DASHBOARD_PORT} is in use by another process"
        return _EMBEDDED.acquire()


def running_embedded() -> Connection | None:
    """The embedded cluster's connection if it is running, without starting it or counting a
    user."""
    conn = _EMBEDDED
    return conn if conn is not None and conn.running else None


def shutdown_embedded() -> None:
    """Stop the embedded cluster if one is running (it starts again on next use)."""
    global _EMBEDDED
    with _LOCK:
        conn, _EMBEDDED = _EMBEDDED, None
    if conn is not None:
        conn.close()


atexit.register(shutdown_embedded)
