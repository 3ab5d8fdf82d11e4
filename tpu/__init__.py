"""tpu: TPU slice types (the table shared with fray_dask.TpuConfig). The GKE manifests and
launcher come with issue #5.

Imports no Kubernetes client.
"""

from tpu.topology import TPU_TYPES, TpuTopology, all_topologies, check_topology, get_topology

__all__ = ["TPU_TYPES", "TpuTopology", "all_topologies", "check_topology", "get_topology"]
