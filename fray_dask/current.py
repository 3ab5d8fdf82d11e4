"""What code runs against: `current_cluster()`, the cluster jobs launch on (one set with
`set_current_cluster`, else the one named by FRAY_CLUSTER_SPEC, else the embedded Dask cluster),
and `fray_job_ctx()`, the job context of the code running now (one set with `set_job_ctx`, else
the one the current cluster's scheme gives its jobs).

Specs and their schemes: fray_dask.schemes. Clusters and contexts made from a spec are cached per
spec for the life of the process. No Dask import here.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fray_dask.cluster import Cluster
from fray_dask.context import JobContext
from fray_dask.schemes import cluster_from_spec, job_context_for_spec
from fray_dask.specs import SPEC_VARIABLE, parse_spec

__all__ = [
    "DEFAULT_SPEC",
    "SPEC_VARIABLE",
    "cluster_from_spec",
    "current_cluster",
    "current_spec",
    "fray_job_ctx",
    "get_default_job_ctx",
    "parse_spec",
    "set_current_cluster",
    "set_job_ctx",
]

DEFAULT_SPEC = "dask"

_CURRENT: contextvars.ContextVar[Cluster | None] = contextvars.ContextVar(
    "fray_cluster", default=None
)
_JOB_CTX: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "fray_job_ctx", default=None
)
_CLUSTERS: dict[str, Cluster] = {}
_CONTEXTS: dict[str, JobContext] = {}
_LOCK = threading.Lock()


def current_spec() -> str:
    """The spec of the current cluster: the set one's, else FRAY_CLUSTER_SPEC, else "dask"."""
    cluster = _CURRENT.get()
    if cluster is not None:
        return cluster.spec
    return os.environ.get(SPEC_VARIABLE, "").strip() or DEFAULT_SPEC


def _current(var: contextvars.ContextVar, cache: dict, build: Callable[[str], Any]) -> Any:
    """`var`'s value if one is set, else the object `build` made for the current spec (once)."""
    value = var.get()
    if value is not None:
        return value
    spec = current_spec()
    with _LOCK:
        if spec not in cache:
            cache[spec] = build(spec)
        return cache[spec]


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value: Any, kind: type, what: str) -> Iterator[Any]:
    if not isinstance(value, kind):
        raise TypeError(f"{what} needs a {kind.__name__}, got {type(value).__name__}")
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def current_cluster() -> Cluster:
    """The cluster jobs launch on: the one set by `set_current_cluster`, else the one named by
    the FRAY_CLUSTER_SPEC environment variable (inside a job: the cluster that launched it),
    else the embedded Dask cluster. The same object is returned for the same spec."""
    return _current(_CURRENT, _CLUSTERS, cluster_from_spec)


def set_current_cluster(cluster: Cluster) -> contextlib.AbstractContextManager[Cluster]:
    """Within the block (and threads started with its context), `current_cluster()` is
    `cluster`."""
    return _setting(_CURRENT, cluster, Cluster, "set_current_cluster")


def fray_job_ctx() -> JobContext:
    """The context of the current job: one set with `set_job_ctx`, else the one the current
    cluster's scheme gives its jobs (a DaskContext on the same Dask cluster inside a DaskCluster
    job, a ThreadContext in a LocalCluster job or a TPU host), else a DaskContext on the embedded
    cluster."""
    return _current(_JOB_CTX, _CONTEXTS, job_context_for_spec)


get_default_job_ctx = fray_job_ctx


def set_job_ctx(ctx: JobContext) -> contextlib.AbstractContextManager[JobContext]:
    """Within the block, `fray_job_ctx()` returns `ctx`."""
    return _setting(_JOB_CTX, ctx, JobContext, "set_job_ctx")
