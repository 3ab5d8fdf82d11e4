"""fray_dask: the Fray API on Dask. Jobs (JobRequest -> Cluster.launch -> wait), job contexts
(put/get/run/wait) and named actors, on local processes or a Dask cluster.

Names load on first use (PEP 562): `import fray_dask` is cheap, which matters because every job's
child process starts with `python -m fray_dask.runner`, and it loads no Dask until a Dask cluster
or context is used.
"""

from __future__ import annotations

from fray_dask.exports import lazy_names

_LAZY = {
    "ActorHandle": "fray_dask.actors",
    "ActorLostError": "fray_dask.actors",
    "ActorNameNotSharedWarning": "fray_dask.actors",
    "Cluster": "fray_dask.cluster",
    "ClusterScheme": "fray_dask.schemes",
    "ClusterUnreachable": "fray_dask.connection",
    "CpuConfig": "fray_dask.types",
    "DaskCluster": "fray_dask.dask_cluster",
    "DaskContext": "fray_dask.dask_context",
    "DeviceConfig": "fray_dask.types",
    "Entrypoint": "fray_dask.types",
    "EnvironmentConfig": "fray_dask.types",
    "GpuConfig": "fray_dask.types",
    "IsolatedVirtualEnv": "fray_dask.venv",
    "JobContext": "fray_dask.context",
    "JobFailedError": "fray_dask.types",
    "JobId": "fray_dask.types",
    "JobInfo": "fray_dask.types",
    "JobRequest": "fray_dask.types",
    "JobStatus": "fray_dask.types",
    "LocalCluster": "fray_dask.local",
    "RemoteTraceback": "fray_dask.results",
    "ResourceConfig": "fray_dask.types",
    "SyncContext": "fray_dask.context",
    "TaskInfo": "fray_dask.types",
    "ThreadContext": "fray_dask.context",
    "TpuConfig": "fray_dask.types",
    "backpressure": "fray_dask.backpressure",
    "cluster_from_spec": "fray_dask.current",
    "create_environment": "fray_dask.types",
    "current_cluster": "fray_dask.current",
    "fray_job_ctx": "fray_dask.current",
    "get_default_job_ctx": "fray_dask.current",
    "parse_size": "fray_dask.sizes",
    "register_scheme": "fray_dask.schemes",
    "set_current_cluster": "fray_dask.current",
    "set_job_ctx": "fray_dask.current",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
