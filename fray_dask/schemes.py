"""Cluster specs (`FRAY_CLUSTER_SPEC`): what each scheme builds, the cluster a driver launches on
and the job context a job's own process gets.

fray_dask's schemes are `local`, `dask` and `kube`; a package above fray_dask adds its own (tpu adds
`gke` and `tpu-local`) as an entry point in the group `fray_dask.cluster_schemes` naming a
ClusterScheme, so fray_dask never names the packages that build on it. No Dask import here: each
scheme loads what it needs when used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from fray_dask.connection import CONNECT_TIMEOUT
from fray_dask.specs import SPEC_VARIABLE, parse_spec

if TYPE_CHECKING:
    from fray_dask.cluster import Cluster
    from fray_dask.context import JobContext

__all__ = [
    "ENTRY_POINT_GROUP",
    "ClusterScheme",
    "cluster_from_spec",
    "job_context_for_spec",
    "parse_spec",
    "register_scheme",
    "scheme_for",
    "spec_forms",
]

ENTRY_POINT_GROUP = "fray_dask.cluster_schemes"


@dataclass(frozen=True)
class ClusterScheme:
    """One kind of cluster spec: `cluster(params)` builds the cluster a driver launches on from
    the spec's query parameters; `job_context(spec, params)` is the context code inside one of its
    jobs gets from `fray_job_ctx()`. `forms` are the spellings listed when a spec is not
    understood."""

    name: str
    forms: tuple[str, ...]
    cluster: Callable[[dict[str, str]], Cluster]
    job_context: Callable[[str, dict[str, str]], JobContext]


_SCHEMES: dict[str, ClusterScheme] = {}
_LOCK = threading.Lock()
_LOADED = False  # the entry points of other packages have been read


def register_scheme(scheme: ClusterScheme) -> None:
    """Teaches `cluster_from_spec` and `fray_job_ctx` a scheme (a later one of a name wins)."""
    if not isinstance(scheme, ClusterScheme):
        raise TypeError(f"register_scheme needs a ClusterScheme, got {type(scheme).__name__}")
    with _LOCK:
        _SCHEMES[scheme.name] = scheme


def _load_entry_points() -> None:
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        _LOADED = True
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        scheme = entry.load()
        if not isinstance(scheme, ClusterScheme) or scheme.name != entry.name:
            raise TypeError(
                f"entry point {entry.name} = {entry.value} in {ENTRY_POINT_GROUP} must name a "
                f"ClusterScheme called {entry.name!r}, got {scheme!r}"
            )
        with _LOCK:
            _SCHEMES.setdefault(scheme.name, scheme)


def spec_forms() -> list[str]:
    """Every spelling of every known scheme, fray_dask's first."""
    _load_entry_points()
    return [form for scheme in _SCHEMES.values() for form in scheme.forms]


def scheme_for(spec: str) -> tuple[ClusterScheme, dict[str, str]]:
    """The scheme of `spec` and its query parameters; ValueError listing the valid forms for a
    spec no scheme reads."""
    name, params = parse_spec(spec)
    if name not in _SCHEMES:
        _load_entry_points()
    scheme = _SCHEMES.get(name)
    if scheme is None:
        raise ValueError(
            f"unknown cluster spec {spec!r} (from {SPEC_VARIABLE} or the caller); valid forms: "
            f"{', '.join(spec_forms())}"
        )
    return scheme, params


def cluster_from_spec(spec: str) -> Cluster:
    """A new cluster for `spec`; unknown specs raise ValueError listing the valid forms."""
    scheme, params = scheme_for(spec)
    return scheme.cluster(params)


def job_context_for_spec(spec: str) -> JobContext:
    """The job context for code running in a job launched on a `spec` cluster."""
    scheme, params = scheme_for(spec)
    return scheme.job_context(spec, params)


def no_params(scheme: str, params: dict[str, str], allowed: tuple[str, ...]) -> None:
    """Raises ValueError for query parameters `scheme` does not take."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ValueError(
            f"cluster spec {scheme!r} does not take {', '.join(unknown)} (its parameters: {known})"
        )


def process_context(spec: str, params: dict[str, str]) -> JobContext:
    """The context of a job that is a process of its own (a local child, a GKE pod, a local TPU
    host): its tasks and actors run in that process."""
    from fray_dask.context import ThreadContext

    return ThreadContext()


# -- fray_dask's own schemes ------------------------------------------------------------------


def _local_cluster(params: dict[str, str]) -> Cluster:
    from fray_dask.local import LocalCluster

    no_params("local", params, ())
    return LocalCluster()


def _local_context(spec: str, params: dict[str, str]) -> JobContext:
    from fray_dask.context import ThreadContext

    # Another job on it would expect to find this one's named actors: say they are not shared.
    return ThreadContext(names_local_to=spec)


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


def _timeout(params: dict[str, str]) -> float:
    text = params.get("timeout")
    if text is None:
        return CONNECT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(
            f"cluster spec timeout={text!r} is not a number of seconds > 0; write e.g. timeout=30"
        )
    return value


def _dask_cluster(params: dict[str, str]) -> Cluster:
    from fray_dask.dask_cluster import DaskCluster

    no_params("dask", params, ("address", "timeout"))
    return DaskCluster(_address(params), timeout=_timeout(params))


def _dask_context(spec: str, params: dict[str, str]) -> JobContext:
    from fray_dask.dask_context import DaskContext

    return DaskContext(_address(params), _timeout(params))


def _kube_cluster(params: dict[str, str]) -> Cluster:
    """A DaskCluster on the spec's Dask cluster on Kubernetes, whose `spec` is the canonical kube
    spec, so that jobs it launches (on its workers, where DASK_SCHEDULER_ADDRESS names the
    scheduler) reach the same Dask cluster."""
    from fray_dask.dask_cluster import DaskCluster
    from fray_dask.kube_spec import parse_kube_spec

    text = parse_kube_spec(params).text
    cluster = DaskCluster(text)
    cluster.spec = text
    return cluster


def _kube_context(spec: str, params: Any) -> JobContext:
    from fray_dask.dask_context import DaskContext
    from fray_dask.kube_spec import parse_kube_spec

    return DaskContext(parse_kube_spec(params).text)


register_scheme(ClusterScheme("local", ("local",), _local_cluster, _local_context))
register_scheme(
    ClusterScheme("dask", ("dask", "dask?address=tcp://host:8786"), _dask_cluster, _dask_context)
)
register_scheme(
    ClusterScheme(
        "kube", ("kube?name=NAME&workers=N&image=IMAGE&memory=8GB",), _kube_cluster, _kube_context
    )
)
