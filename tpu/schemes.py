"""The cluster specs tpu adds to fray_dask (`FRAY_CLUSTER_SPEC=gke?...`, `tpu-local`), found by
fray_dask through the `fray_dask.cluster_schemes` entry points in pyproject.toml.

Light: the launcher (Kubernetes) and the local emulation load only when a spec is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fray_dask.schemes import ClusterScheme, process_context

if TYPE_CHECKING:
    from fray_dask.cluster import Cluster

__all__ = ["GKE", "TPU_LOCAL"]


def _gke(params: dict[str, str]) -> Cluster:
    from tpu.launcher import cluster_from_params

    return cluster_from_params(params)


def _tpu_local(params: dict[str, str]) -> Cluster:
    from tpu.local import cluster_from_params

    return cluster_from_params(params)


# A job's code runs in its pod (gke) or host process (tpu-local): its tasks run there too.
GKE = ClusterScheme("gke", ("gke?namespace=NAMESPACE&image=IMAGE",), _gke, process_context)
TPU_LOCAL = ClusterScheme("tpu-local", ("tpu-local",), _tpu_local, process_context)
