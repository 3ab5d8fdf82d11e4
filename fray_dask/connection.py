"""A connection to a Dask cluster, shared by every user in the process, and the one error for a
scheduler that cannot be reached.

No distributed import at module level (zephyr's CLI imports `refusing_clusters` without Dask).
A connection is counted: each `connect()` (fray_dask.connect) is one user and
calls `release()` once when done; the last release of a connection this process opened closes it.
Nothing here starts a cluster (fray_dask.embedded and fray_dask.kube do).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "ClusterError",
    "ClusterStartError",
    "ClusterUnreachable",
    "Connection",
    "address_connection",
    "refuse",
    "refusing_clusters",
]

# Seconds to wait for a scheduler address to answer, unless the caller says otherwise.
CONNECT_TIMEOUT = 8.0
_LOCK = threading.Lock()
_BY_ADDRESS: dict[str, Connection] = {}
# While non-empty, starting or joining a cluster raises the last one's error (refusing_clusters).
_REFUSALS: list[Callable[[str], BaseException]] = []


class ClusterError(Exception):
    """A Dask cluster could not be started, joined or reached; the message names the cause and
    the fix."""


class ClusterUnreachable(ClusterError, ConnectionError):
    """The Dask scheduler at an address did not answer in time (or something else answered)."""


class ClusterStartError(ClusterError):
    """A cluster this process was asked to start (a `kube?...` spec) did not come up."""


class Connection:
    """A client of one Dask cluster (and the cluster object, when this process started it).

    `users` counts the callers of `connect()` that have not released it yet; `owns` says whether
    this process opened the client (a Client handed in by the caller is never closed here).
    """

    def __init__(self, client: Client, cluster: Any = None, owns: bool = True):
        self.client = client
        self.cluster = cluster
        self.owns = owns
        self.shared = False  # kept open for the whole process (the embedded cluster)
        self.note = ""  # said with the dashboard link (e.g. why it is not on the usual port)
        self.users = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Connection({self.address!r}, users={self.users})"

    @property
    def address(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.client.scheduler.address
        return None

    @property
    def running(self) -> bool:
        return self.client.status == "running"

    @property
    def dashboard_link(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.client.dashboard_link
        return None

    def workers(self) -> list[dict[str, Any]]:
        """The workers' info dicts now (resources, nthreads, memory_limit), without waiting."""
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except TypeError:  # older distributed
            info = self.client.scheduler_info()
        return list(info.get("workers", {}).values())

    def acquire(self) -> Connection:
        with self._lock:
            self.users += 1
        return self

    def release(self) -> bool:
        """One user is done with the connection; the last user of a connection this process
        opened (other than the embedded cluster's) closes it. Returns whether it closed."""
        with self._lock:
            self.users = max(0, self.users - 1)
            last = self.users == 0
        if last and self.owns and not self.shared:
            self.close()
            return True
        return False

    def close(self, timeout: float = 10) -> None:
        """Closes the client (and the cluster this process started), whoever still uses it: for a
        lost scheduler, and at exit."""
        if not self.owns:
            return
        # A client whose scheduler is gone is reconnecting; closing it cancels that, which
        # distributed logs as an error with a traceback. The caller has said what happened.
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
def refusing_clusters(error: Callable[[str], BaseException]) -> Iterator[None]:
    """While the block runs, asking this process to start or join any Dask cluster (the embedded
    one, an address, a kube spec) raises `error(what)` instead; `zephyr --dry-run` uses it."""
    _REFUSALS.append(error)
    try:
        yield
    finally:
        _REFUSALS.remove(error)


def refuse(what: str) -> None:
    """Raises the error of the innermost `refusing_clusters` block, if one is open."""
    if _REFUSALS:
        raise _REFUSALS[-1](what)


def address_connection(address: str, timeout: float) -> Connection:
    """The process's connection to the scheduler at `address`, opened on first use, counted for
    the caller. A scheduler that does not answer within `timeout` s raises ClusterUnreachable; a
    string that is no address raises ValueError."""
    import distributed

    try:
        distributed.comm.get_address_host_port(address)
    except ValueError as e:  # checked first: a failed Client stalls interpreter exit for 16 s
        raise ValueError(
            f"{address!r} is not a Dask scheduler address ({e}); write tcp://host:8786"
        ) from None
    with _LOCK:
        conn = _BY_ADDRESS.get(address)
        if conn is None or not conn.running:
            try:
                client = distributed.Client(address, timeout=timeout, set_as_default=False)
            except Exception as e:  # refused, timed out, or something else answered the port
                raise ClusterUnreachable(
                    f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                    f"({type(e).__name__}: {str(e)[:200]}); check the address and that `dask "
                    "scheduler` runs there, or run on the embedded local cluster instead (zephyr "
                    "without --cluster, DaskBackend(), DaskCluster(), FRAY_CLUSTER_SPEC=dask)"
                ) from None
            conn = _BY_ADDRESS[address] = Connection(client)
        return conn.acquire()
