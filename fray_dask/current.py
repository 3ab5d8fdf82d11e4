"""Which cluster `current_cluster()` returns: one set with `set_current_cluster`, else the one
named by FRAY_CLUSTER_SPEC, else the embedded Dask cluster.

Specs: `local`, `dask` (embedded LocalCluster), `dask?address=tcp://host:8786[&timeout=8]`,
`kube?name=...` (a Dask cluster started on Kubernetes), `gke?namespace=...&image=...` (TPU jobs as
GKE workloads) and `tpu-local` (TPU jobs emulated by local processes). Clusters made from a spec
are cached per spec for the life of the process.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from fray_dask.cluster import Cluster

SPEC_VARIABLE = "FRAY_CLUSTER_SPEC"
DEFAULT_SPEC = "dask"

_CURRENT: contextvars.ContextVar[Cluster | None] = contextvars.ContextVar(
    "fray_cluster", default=None
)
_BY_SPEC: dict[str, Cluster] = {}
_LOCK = threading.Lock()

# Forms accepted, shown when a spec is not understood. Other packages (tpu) add theirs.
SPEC_FORMS = ["local", "dask", "dask?address=tcp://host:8786"]
_FACTORIES: dict[str, Callable[[dict[str, str]], Cluster]] = {}


def register_scheme(scheme: str, factory: Callable[[dict[str, str]], Cluster], form: str) -> None:
    """Teaches cluster_from_spec a new scheme: `factory(query_parameters)` builds the cluster."""
    _FACTORIES[scheme] = factory
    if form not in SPEC_FORMS:
        SPEC_FORMS.append(form)


def _local(params: dict[str, str]) -> Cluster:
    from fray_dask.local import LocalCluster

    _no_params("local", params, ())
    return LocalCluster()


def _dask(params: dict[str, str]) -> Cluster:
    from fray_dask.dask_cluster import CONNECT_TIMEOUT, DaskCluster

    _no_params("dask", params, ("address", "timeout"))
    return DaskCluster(_address(params), timeout=_timeout(params, CONNECT_TIMEOUT))


def _address(params: dict[str, str]) -> str | None:
    """The `address` of a dask spec (None: the embedded cluster); an empty one is an error."""
    if "address" not in params:
        return None
    if not params["address"].strip():
        raise ValueError(
            "cluster spec 'dask?address=' has an empty address; write "
            "dask?address=tcp://host:8786, or just dask for the embedded cluster"
        )
    return params["address"].strip()


def _timeout(params: dict[str, str], default: float) -> float:
    text = params.get("timeout")
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(
            f"cluster spec timeout={text!r} is not a number of seconds > 0; write e.g. timeout=30"
        )
    return value


def _no_params(scheme: str, params: dict[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ValueError(
            f"cluster spec {scheme!r} does not take {', '.join(unknown)} (its parameters: {known})"
        )


register_scheme("local", _local, "local")
register_scheme("dask", _dask, "dask?address=tcp://host:8786")


def _lazy(module: str, function: str) -> Callable[[dict[str, str]], Cluster]:
    """A factory that imports `module` (and its optional dependencies) only when used."""

    def factory(params: dict[str, str]) -> Cluster:
        return getattr(importlib.import_module(module), function)(params)

    return factory


register_scheme(
    "kube",
    _lazy("zephyr.backends.kube", "fray_cluster"),
    "kube?name=NAME&workers=N&image=IMAGE&memory=8GB",
)
register_scheme(
    "gke", _lazy("tpu.launcher", "cluster_from_params"), "gke?namespace=NAMESPACE&image=IMAGE"
)
register_scheme("tpu-local", _lazy("tpu.local", "cluster_from_params"), "tpu-local")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`"dask?address=tcp://h:8786"` -> `("dask", {"address": "tcp://h:8786"})`."""
    parts = urlsplit(spec.strip())
    scheme = parts.path or parts.scheme
    if parts.scheme and parts.netloc:  # "dask://..." is not a form we take
        scheme = spec
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return scheme, params


def cluster_from_spec(spec: str) -> Cluster:
    """A new cluster for `spec`; unknown specs raise ValueError listing the valid forms."""
    scheme, params = parse_spec(spec)
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise ValueError(
            f"unknown cluster spec {spec!r} (from {SPEC_VARIABLE} or the caller); valid forms: "
            f"{', '.join(SPEC_FORMS)}"
        )
    return factory(params)


def current_cluster() -> Cluster:
    """The cluster jobs launch on: the one set by `set_current_cluster`, else the one named by
    the FRAY_CLUSTER_SPEC environment variable (inside a job: the cluster that launched it),
    else the embedded Dask cluster. The same object is returned for the same spec."""
    cluster = _CURRENT.get()
    if cluster is not None:
        return cluster
    spec = os.environ.get(SPEC_VARIABLE, "").strip() or DEFAULT_SPEC
    with _LOCK:
        cluster = _BY_SPEC.get(spec)
        if cluster is None:
            cluster = _BY_SPEC[spec] = cluster_from_spec(spec)
        return cluster


@contextlib.contextmanager
def set_current_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """Within the block (and threads started with its context), `current_cluster()` is
    `cluster`."""
    if not isinstance(cluster, Cluster):
        raise TypeError(f"set_current_cluster needs a Cluster, got {type(cluster).__name__}")
    token = _CURRENT.set(cluster)
    try:
        yield cluster
    finally:
        _CURRENT.reset(token)
