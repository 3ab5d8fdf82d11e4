"""tpu: TPU slices (the table is fray_dask.topology's, named here too), their GKE manifests, the
GKE launcher behind the fray_dask Cluster API, and a local emulation of a slice.

Names load on first use (PEP 562, as fray_dask.exports does it): `import tpu` imports neither
Kubernetes nor Dask.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

_LAZY = {
    "TPU_TYPES": "fray_dask.topology",
    "TpuTopology": "fray_dask.topology",
    "all_topologies": "fray_dask.topology",
    "check_multislice": "fray_dask.topology",
    "check_topology": "fray_dask.topology",
    "get_topology": "fray_dask.topology",
    "build_manifests": "tpu.manifests",
    "render_yaml": "tpu.manifests",
    "secret_manifest": "tpu.manifests",
    "GkeTpuCluster": "tpu.launcher",
    "LocalTpuCluster": "tpu.local",
}

__all__ = sorted(_LAZY)


# fray_dask.exports.lazy_names, spelled out: a TPU pod runs `python -m tpu.run`, which must load
# nothing beyond the standard library and cloudpickle (not even the fray_dask package).
def __getattr__(name: str) -> Any:
    source = _LAZY.get(name)
    if source is None:
        raise AttributeError(f"module 'tpu' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
