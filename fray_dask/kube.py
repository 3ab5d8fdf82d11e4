"""Dask clusters on Kubernetes: starting or joining the cluster of a `kube?...` spec with
dask_kubernetes' KubeCluster (spec and manifest: kube_spec.py). `kubernetes`/`dask_kubernetes` are
imported only inside functions (a missing one names `pip install "zephyr-dask[k8s]"`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any

from fray_dask.connection import ClusterStartError, ClusterUnreachable, Connection, refuse
from fray_dask.kube_spec import (
    DEFAULT_IMAGE,
    FORM,
    INSTALL,
    OPERATOR_INSTALL,
    README,
    SCHEDULER_PORT,
    SCHEME,
    KubeSpec,
    dask_cluster_manifest,
    parse_kube_spec,
    render_yaml,
    worker_resources,
)

__all__ = [
    "DEFAULT_IMAGE",
    "KubeSpec",
    "connect",
    "dask_cluster_manifest",
    "in_cluster_address",
    "parse_kube_spec",
    "render_yaml",
    "start_kube_cluster",
    "worker_resources",
]

logger = logging.getLogger("fray_dask")


# -- starting and connecting --------------------------------------------------------------------


def in_cluster_address(spec: KubeSpec) -> str:
    """The scheduler address the operator gives the cluster's own pods (DASK_SCHEDULER_ADDRESS)."""
    host = f"{spec.name}-scheduler.{spec.namespace}.svc.cluster.local"
    return f"tcp://{host}:{SCHEDULER_PORT}"


def _operator() -> Any:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as e:
        raise ImportError(
            f"a kube?... cluster needs dask-kubernetes and kubernetes ({e}); {INSTALL}"
        ) from None
    return KubeCluster


def _credentials() -> str | None:
    """Where Kubernetes credentials would come from (a kubeconfig, a pod's service account), or
    None when there are none, so that a missing kubeconfig fails at once and plainly."""
    configured = os.environ.get("KUBECONFIG", "")
    paths = [p for p in configured.split(os.pathsep) if p] or [os.path.expanduser("~/.kube/config")]
    for path in paths:
        if os.path.isfile(path):
            return path
    token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(token):
        return "the pod's service account"
    return None


def _kube_cluster_kwargs(spec: KubeSpec, timeout: float) -> dict[str, Any]:
    """What KubeCluster gets: our manifest (not one it generates) and the spec's namespace."""
    return {
        "custom_cluster_spec": dask_cluster_manifest(spec),
        "namespace": spec.namespace,
        # None: delete the DaskCluster on close only if this call created it (dask-kubernetes'
        # documented rule); the config default True would also delete one we merely joined,
        # such as the deploy/k8s/daskcluster.yaml of the same name.
        "shutdown_on_close": None,
        # Each of KubeCluster's own waits (operator, scheduler pod) ends a little before ours.
        "resource_timeout": max(1, int(timeout * 0.9)),
        "quiet": True,
    }


def _explain(spec: KubeSpec, error: BaseException, timeout: float) -> ClusterStartError:
    """A start failure as the rule, the cause and the fix."""
    text = f"{type(error).__name__}: {str(error)[:300]}"
    where = f"DaskCluster {spec.name!r} in namespace {spec.namespace!r}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if "valid credentials" in str(error) or status == 401:
        why = "there are no usable Kubernetes credentials"
        fix = "point KUBECONFIG at a kubeconfig (gcloud container clusters get-credentials ...)"
    elif "Custom Resource Definitions" in str(error) or status == 404:
        why = "the dask-kubernetes operator (its DaskCluster CRD) is not installed"
        fix = f"install it: {OPERATOR_INSTALL} (see {README})"
    elif "Operator running" in str(error):
        why = f"no operator acted on it within timeout={timeout:g} s (the CRD is installed)"
        fix = (
            "check that the operator runs (kubectl -n dask-operator get pods) or install it: "
            f"{OPERATOR_INSTALL}"
        )
    elif status == 403:
        why = "your Kubernetes user may not create DaskClusters there"
        fix = f"ask for rights on daskclusters.kubernetes.dask.org in {spec.namespace!r}"
    elif isinstance(error, TimeoutError):
        why = f"it was not ready within timeout={timeout:g} s"
        fix = (
            f"look at `kubectl -n {spec.namespace} get daskcluster,pods -l "
            f"dask.org/cluster-name={spec.name}` and `kubectl -n {spec.namespace} describe pod "
            "...` (image pull errors, too little CPU/memory on the nodes), check that the operator "
            "runs (kubectl -n dask-operator get pods), or raise timeout="
        )
    else:
        why = "Kubernetes or the operator refused it"
        fix = f"check `kubectl -n {spec.namespace} get daskcluster {spec.name}` and {README}"
    return ClusterStartError(f"cannot start the {where}: {why} ({text}); {fix}")


def _forget_failed(kube_cluster: Any, spec: KubeSpec) -> None:
    """Drop a KubeCluster whose start failed from the set dask-kubernetes closes at exit: it has
    already deleted what it created, and closing it again at exit would wait on an API server
    that may be gone."""
    from distributed.core import Status

    for cluster in list(kube_cluster._instances):
        same = (getattr(cluster, "name", None), cluster.namespace) == (spec.name, spec.namespace)
        if same and getattr(cluster, "status", None) != Status.running:
            kube_cluster._instances.discard(cluster)
            runner = getattr(cluster, "_loop_runner", None)  # its event loop thread
            if runner is not None:
                with contextlib.suppress(Exception):
                    runner.stop()


def _start_with_deadline(spec: KubeSpec, timeout: float) -> Any:
    """KubeCluster(...) in a thread joined with a deadline (its own waits are not all bounded);
    a cluster that comes up after we gave up is closed by that thread."""
    kube_cluster = _operator()
    import dask.config

    box: dict[str, Any] = {}
    gave_up = threading.Event()

    def start() -> None:
        try:
            with dask.config.set({"kubernetes.shutdown-on-close": None}):
                cluster = kube_cluster(**_kube_cluster_kwargs(spec, timeout))
        except BaseException as e:  # handed to the caller
            box["error"] = e
            _forget_failed(kube_cluster, spec)
            return
        box["cluster"] = cluster
        if gave_up.is_set():
            with contextlib.suppress(Exception):
                cluster.close(timeout=30)

    thread = threading.Thread(target=start, name="fray-kube-start", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        gave_up.set()
        raise _explain(spec, TimeoutError(f"no cluster after {timeout:g} s"), timeout)
    if "error" in box:
        raise _explain(spec, box["error"], timeout) from box["error"]
    return box["cluster"]


def _warn_if_joined(spec: KubeSpec, cluster: Any) -> None:
    if cluster.shutdown_on_close:
        return
    logger.warning(
        "joined the existing DaskCluster %r in %r (workers=%s, image=%s) instead of creating one "
        "from %s; delete it (kubectl -n %s delete daskcluster %s) to start one from the spec",
        spec.name, spec.namespace, getattr(cluster, "n_workers", "?"),
        getattr(cluster, "image", "?"), spec.text, spec.namespace, spec.name,
    )  # fmt: skip


def start_kube_cluster(spec: KubeSpec, timeout: float | None = None) -> Connection:
    """Start `spec`'s DaskCluster with dask-kubernetes' KubeCluster (or join an existing one of
    that name) and connect a Client, within `timeout` s (default `spec.timeout`); blocks.

    The Connection owns the client and the KubeCluster: closing it deletes the DaskCluster if this
    call created it. Raises ImportError without dask-kubernetes, and ClusterStartError naming the
    cause and the fix for missing credentials, a missing operator, refusal or timeout.
    """
    from distributed import Client

    timeout = spec.timeout if timeout is None else timeout
    _operator()  # the ImportError first
    if _credentials() is None:
        configured = os.environ.get("KUBECONFIG")
        where = f"KUBECONFIG={configured!r} does not exist" if configured else "no ~/.kube/config"
        raise ClusterStartError(
            f"cannot start the DaskCluster {spec.name!r}: no Kubernetes credentials ({where}, and "
            "this is not a pod with a service account); run `gcloud container clusters "
            "get-credentials CLUSTER` (or your provider's equivalent) or set KUBECONFIG, and "
            f"install the operator once: {OPERATOR_INSTALL} (see {README})"
        )
    if spec.image.startswith("ghcr.io/dask/dask:"):
        logger.warning(
            "kube spec image %s is the stock Dask image, without zephyr-dask: zephyr and fray "
            "tasks cannot run there; build an image with zephyr-dask installed (see %s)",
            spec.image,
            README,
        )
    deadline = time.monotonic() + timeout
    cluster = _start_with_deadline(spec, timeout)
    _warn_if_joined(spec, cluster)
    try:
        remaining = max(1.0, deadline - time.monotonic())
        client = Client(cluster, timeout=remaining, set_as_default=False)
        try:
            client.wait_for_workers(1, timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            client.close()
            raise
    except Exception as e:
        with contextlib.suppress(Exception):
            cluster.close(timeout=30)
        if isinstance(e, TimeoutError | OSError):
            e = TimeoutError(f"no scheduler connection or worker in time ({e})")
        raise _explain(spec, e, timeout) from e
    return Connection(client, cluster)


_LOCK = threading.Lock()
_BY_SPEC: dict[str, Connection] = {}


def connect(spec: str | KubeSpec) -> Connection:
    """The shared Connection for a kube spec (one per canonical spec per process): inside a pod of
    that cluster (the operator's DASK_SCHEDULER_ADDRESS names it, as in a fray job running on one
    of its workers) a client of its scheduler, else `start_kube_cluster(spec)`. Blocks up to the
    spec's timeout; bad specs raise ValueError before any Kubernetes call."""
    if isinstance(spec, str):
        spec = parse_kube_spec(spec)
    key = spec.text
    refuse(f"the Dask cluster {key!r}")
    with _LOCK:
        conn = _BY_SPEC.get(key)
        if conn is not None and conn.running:
            return conn.acquire()
        address = in_cluster_address(spec)
        if os.environ.get("DASK_SCHEDULER_ADDRESS") == address:
            from distributed import Client

            try:
                client = Client(address, timeout=spec.timeout, set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise ClusterUnreachable(
                    f"cannot reach this pod's Dask scheduler {address} within {spec.timeout:g} s "
                    f"({type(e).__name__}: {e}); check `kubectl -n {spec.namespace} get pods -l "
                    f"dask.org/cluster-name={spec.name}`"
                ) from None
            conn = Connection(client)
        else:
            conn = start_kube_cluster(spec)
            # Registered after dask-kubernetes' own exit hook, so it runs first: the client
            # leaves before the cluster it created is deleted.
            atexit.register(conn.close)
        _BY_SPEC[key] = conn
        return conn.acquire()


def main(argv: list[str] | None = None) -> int:
    """`python -m fray_dask.kube --render [SPEC]`: print the DaskCluster YAML of SPEC
    (default: `kube`, every default)."""
    import argparse

    parser = argparse.ArgumentParser("python -m fray_dask.kube", description=main.__doc__)
    parser.add_argument("--render", action="store_true", help="print the DaskCluster manifest")
    parser.add_argument("spec", nargs="?", default=SCHEME, help=FORM)
    args = parser.parse_args(argv)
    if not args.render:
        parser.error("nothing to do; pass --render")
    try:
        spec = parse_kube_spec(args.spec)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write(render_yaml(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
