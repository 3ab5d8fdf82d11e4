"""`connect()`: the one way into a Dask cluster for zephyr and fray_dask alike, by what the user
wrote (nothing, a Client, an address, a `kube?...` spec), through one cache of clients per process.

Imports distributed. The embedded cluster (fray_dask.embedded) and kube specs (fray_dask.kube,
dask-kubernetes) are loaded only when asked for.
"""

from __future__ import annotations

import os

from distributed import Client

from fray_dask.connection import CONNECT_TIMEOUT, Connection, address_connection, refuse
from fray_dask.specs import SPEC_VARIABLE, parse_spec

__all__ = ["connect", "is_kube_spec"]


def is_kube_spec(address: str) -> bool:
    return address.strip() == "kube" or address.strip().startswith("kube?")


def job_cluster() -> str | None:
    """Inside the process of a fray_dask job launched on a Dask cluster (FRAY_JOB_ID set,
    FRAY_CLUSTER_SPEC `dask?address=...` or `kube?...`): that cluster's address or kube spec, so
    that a pipeline inside a job runs on the job's cluster instead of starting one of its own."""
    if not os.environ.get("FRAY_JOB_ID"):
        return None
    spec = os.environ.get(SPEC_VARIABLE, "").strip()
    if not spec:
        return None
    name, params = parse_spec(spec)
    if name == "dask":
        return params.get("address") or None
    return spec if is_kube_spec(spec) else None


def connect(address: str | Client | None = None, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """A counted connection (call `release()` once when done) for `address`:

    - None: inside a Dask task, that task's own cluster; inside a fray_dask job launched on a
      Dask cluster, that cluster (`job_cluster`); elsewhere the embedded LocalCluster, started on
      first use and shared for the life of the process;
    - a Client: itself (never closed here);
    - `"kube?name=...&workers=N&image=..."`: that Dask cluster on Kubernetes, started or joined
      within the spec's own timeout (fray_dask.kube);
    - `"tcp://host:8786"`: the process's client of that scheduler.

    Raises ClusterUnreachable (a ConnectionError) when a scheduler does not answer within `timeout`
    s, ClusterStartError when a kube cluster does not come up, ValueError for a string that is no
    address, and the error of an open `refusing_clusters` block (`zephyr --dry-run`) for anything
    but a Client.
    """
    if isinstance(address, Client):
        return Connection(address, owns=False).acquire()
    if address is None:
        import distributed

        try:
            distributed.get_worker()
        except ValueError:
            launched_on = job_cluster()
            if launched_on is not None:
                return connect(launched_on, timeout)
            from fray_dask.embedded import embedded

            return embedded()
        return Connection(distributed.get_client(), owns=False).acquire()
    if not isinstance(address, str):
        raise TypeError(
            f"a Dask cluster is named by an address string, a kube?... spec or a Client, got "
            f"{type(address).__name__}"
        )
    if is_kube_spec(address):
        from fray_dask import kube

        return kube.connect(address)
    refuse(f"the Dask cluster {address!r}")
    return address_connection(address.strip(), timeout)
