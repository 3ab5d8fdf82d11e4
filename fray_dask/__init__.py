"""fray_dask: the Fray API on Dask. Jobs (JobRequest -> Cluster.launch -> wait), job contexts
(put/get/run/wait) and named actors, on local processes or a Dask cluster.

Names load on first use (PEP 562): `import fray_dask` is cheap, which matters because every job's
child process starts with `python -m fray_dask.runner`, and it loads no Dask until a Dask cluster
or context is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ActorHandle": "actors",
    "ActorLostError": "actors",
    "ActorNameNotSharedWarning": "actors",
    "Cluster": "cluster",
    "CpuConfig": "types",
    "DaskCluster": "dask_cluster",
    "DaskContext": "dask_context",
    "DeviceConfig": "types",
    "Entrypoint": "types",
    "EnvironmentConfig": "types",
    "GpuConfig": "types",
    "IsolatedVirtualEnv": "venv",
    "JobContext": "context",
    "JobFailedError": "types",
    "JobId": "types",
    "JobInfo": "types",
    "JobRequest": "types",
    "JobStatus": "types",
    "LocalCluster": "local",
    "RemoteTraceback": "results",
    "ResourceConfig": "types",
    "SyncContext": "context",
    "TaskInfo": "types",
    "ThreadContext": "context",
    "TpuConfig": "types",
    "backpressure": "backpressure",
    "cluster_from_spec": "current",
    "create_environment": "types",
    "current_cluster": "current",
    "fray_job_ctx": "current",
    "get_default_job_ctx": "current",
    "parse_size": "sizes",
    "set_current_cluster": "current",
    "set_job_ctx": "current",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fray_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fray_dask.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
