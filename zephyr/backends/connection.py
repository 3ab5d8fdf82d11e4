"""Connections to Dask clusters: the embedded LocalCluster (one per process) or a scheduler address.

Imports distributed. Every wait here has a deadline: an unreachable scheduler raises ZephyrError
naming the address within `timeout` seconds. A connection logs its dashboard link once, as it opens.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import dask
import distributed
from distributed import Client

from zephyr.backends import dask_page
from zephyr.errors import ZephyrError

logger = logging.getLogger("zephyr")

_LOCK = threading.Lock()
_EMBEDDED: Connection | None = None
_BY_ADDRESS: dict[str, Connection] = {}
DASHBOARD_PORT = 8787  # the embedded cluster's dashboard, when that port is free
PAGE_TIMEOUT = 10.0  # seconds to set up the dashboard's Zephyr page on the scheduler


def _detect_gpus() -> int:
    """GPUs visible to this machine (0 without an NVIDIA driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    with contextlib.suppress(OSError):
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    return 0


class Connection:
    """A client (and the cluster we started, if any)."""

    def __init__(self, client: Client, cluster: Any, owns: bool):
        self.client = client
        self.cluster = cluster
        self.owns = owns
        self.note = ""  # said with the dashboard link (e.g. why it is not on the usual port)
        self._announced = False
        self.page_link: str | None = None  # the dashboard's Zephyr page, once announced

    @property
    def dashboard_link(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.client.dashboard_link
        return None

    def announce(self) -> None:
        """Log the dashboard URL once per connection, with the Zephyr page (set up here) that
        shows every stage's progress."""
        if self._announced:
            return
        self._announced = True
        link = self.dashboard_link
        self.page_link = self._install_page(link)
        page = f"stage progress: {self.page_link}; " if self.page_link else ""
        note = f"; {self.note}" if self.note else ""
        logger.info(
            "Dask dashboard: %s (%sscheduler %s%s)", link, page, self.client.scheduler.address, note
        )

    def _install_page(self, link: str | None) -> str | None:
        """Serve the Zephyr page from the scheduler; its URL, or None where it cannot be."""
        if link is None:
            return None
        client = self.client
        try:
            served = client.sync(
                client._run_on_scheduler, dask_page.install, callback_timeout=PAGE_TIMEOUT
            )
        except Exception as e:  # a scheduler that cannot import zephyr, or a slow one
            logger.info(
                "the dashboard has no Zephyr stage page: the scheduler could not set it up "
                "(%s: %s); install zephyr-dask beside the scheduler to get it",
                type(e).__name__,
                e,
            )
            return None
        if not served:
            return None
        base = link[: -len("/status")] if link.endswith("/status") else link.rstrip("/")
        return f"{base}/{dask_page.PATH}"

    def workers(self, timeout: float = 10.0, rule: str = "") -> list[dict]:
        """The workers' info dicts; waits up to `timeout` seconds for the first worker (the error
        then names `rule`, the setting behind the timeout, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self.client.scheduler_info(n_workers=-1)
            except TypeError:  # older distributed
                info = self.client.scheduler_info()
            workers = list(info.get("workers", {}).values())
            if workers:
                return workers
            if time.monotonic() > deadline:
                waited = f" after {timeout:g} s" if timeout else ""
                rule = f" ({rule})" if rule else ""
                address = self.client.scheduler.address
                raise ZephyrError(
                    f"the Dask cluster at {address} has no workers{waited}{rule}; start workers "
                    f"(dask worker {address}) or use the embedded cluster"
                )
            time.sleep(0.1)

    def close(self, timeout: float = 10) -> None:
        # A client whose scheduler is gone is reconnecting; closing it cancels that, which
        # distributed logs as an error with a traceback. The driver has said what happened.
        client_log = logging.getLogger("distributed.client")
        level = client_log.level
        if self.client.status != "running":
            client_log.setLevel(logging.CRITICAL)
        try:
            with contextlib.suppress(Exception):
                self.client.close(timeout=timeout)
        finally:
            client_log.setLevel(level)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=timeout)


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


def _refuse_in_dry_run(what: str) -> None:
    """`zephyr --dry-run` starts and joins no cluster: code outside a pipeline that asks for one
    (a backend's `client`, a fray job on the embedded cluster) fails, naming the rule and the
    fix."""
    from zephyr.backends.base import Backend

    if Backend.dry_run:
        raise ZephyrError(
            f"zephyr --dry-run starts no cluster, but the script asked for {what} outside a "
            "pipeline (DaskBackend.client or .dashboard_link, or a fray_dask job or actor); run "
            "without --dry-run, or skip that code when flow_backend().dry_run is True"
        )


def embedded() -> Connection:
    """The process-wide embedded LocalCluster, started on first use and stopped at exit.

    One single-threaded worker process per core on 127.0.0.1, memory split evenly, each advertising
    CPU=1, MEMORY=<its memory limit>, GPU=<visible GPUs> and NON_PREEMPTIBLE=1. Refused
    (ZephyrError) during `zephyr --dry-run`.
    """
    global _EMBEDDED
    _refuse_in_dry_run("the embedded Dask cluster")
    with _LOCK:
        if _EMBEDDED is not None and _EMBEDDED.client.status == "running":
            return _EMBEDDED
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
                    "NON_PREEMPTIBLE": 1,
                },
                silence_logs=logging.CRITICAL,  # user errors are reported by the driver
            )
        client = Client(cluster, set_as_default=False)
        _EMBEDDED = Connection(client, cluster, owns=True)
        if not dashboard_port:
            _EMBEDDED.note = f"port {DASHBOARD_PORT} is in use by another process"
        return _EMBEDDED


def shutdown_embedded() -> None:
    """Stop the embedded cluster if one is running (it starts again on next use)."""
    global _EMBEDDED
    with _LOCK:
        conn, _EMBEDDED = _EMBEDDED, None
    if conn is not None:
        conn.close()


atexit.register(shutdown_embedded)


def connect(address: str | Client | None, timeout: float) -> Connection:
    """A connection for `address`: None -> embedded cluster, a Client -> itself, a
    `kube?name=...` spec -> a Dask cluster on Kubernetes (zephyr.backends.kube: started or joined,
    within the spec's own timeout), another string -> a shared client per address. Raises
    ZephyrError if the scheduler cannot be reached within `timeout` s, or during `zephyr --dry-run`
    for anything but a Client given."""
    if address is None:
        return embedded()
    if isinstance(address, Client):
        return Connection(address, None, owns=False)
    _refuse_in_dry_run(f"the Dask cluster {address!r}")
    if address.strip().startswith("kube?") or address.strip() == "kube":
        from zephyr.backends import kube

        return kube.connect(address)
    with _LOCK:
        conn = _BY_ADDRESS.get(address)
        if conn is not None and conn.client.status == "running":
            return conn
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ZephyrError(
                f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                f"({type(e).__name__}: {e}); check the address and that the scheduler is running, "
                "or omit --cluster to run on an embedded local cluster"
            ) from None
        conn = _BY_ADDRESS[address] = Connection(client, None, owns=True)
        return conn
