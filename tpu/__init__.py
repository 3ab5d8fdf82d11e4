"""tpu: TPU slices (the table shared with fray_dask.TpuConfig), their GKE manifests, the GKE
launcher behind the fray_dask Cluster API, and a local emulation of a slice.

Names load on first use (PEP 562): `import tpu` imports neither Kubernetes nor Dask.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "TPU_TYPES": "topology",
    "TpuTopology": "topology",
    "all_topologies": "topology",
    "check_multislice": "topology",
    "check_topology": "topology",
    "get_topology": "topology",
    "build_manifests": "manifests",
    "render_yaml": "manifests",
    "secret_manifest": "manifests",
    "GkeTpuCluster": "launcher",
    "LocalTpuCluster": "local",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tpu' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tpu.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
