"""A 2-slice TPU job (v4-16: 2 hosts per slice, so 4 processes) that joins one JAX distributed
system and sums a value over every process.

    python examples/tpu_psum.py                          # 4 local processes on the CPU (tpu-local)
    FRAY_CLUSTER_SPEC="gke?namespace=tpu&image=IMAGE" python examples/tpu_psum.py   # on GKE

Needs jax (`pip install -e ".[tpu]"`); the GKE run also needs `.[k8s]` and an image holding this
project and jax.
"""

from __future__ import annotations

import os

from fray_dask import Entrypoint, JobRequest, ResourceConfig, current_cluster


def psum_job() -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    # "gketpu" is JAX's own GKE TPU detection: it reads TPU_WORKER_ID, TPU_WORKER_HOSTNAMES and
    # MEGASCALE_*, which the manifests (and tpu-local) set. On a TPU VM plain initialize() finds
    # it by itself; on a CPU machine JAX must be told, as it looks for TPU hardware first.
    jax.distributed.initialize(cluster_detection_method="gketpu", initialization_timeout=120)
    mesh = Mesh(np.array(jax.devices()), ("p",))
    mine = np.array([jax.process_index() + 1], dtype=np.int32)
    local = jax.make_array_from_process_local_data(NamedSharding(mesh, P("p")), mine)
    add_up = jax.jit(
        jax.shard_map(lambda a: jax.lax.psum(a, "p"), mesh=mesh, in_specs=P("p"), out_specs=P())
    )
    total = int(np.asarray(add_up(local).addressable_data(0))[0])
    print(
        f"process {jax.process_index()} of {jax.process_count()} "
        f"(slice {os.environ.get('MEGASCALE_SLICE_ID', '0')}, "
        f"host {os.environ['TPU_WORKER_ID']}): psum = {total}"
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("FRAY_CLUSTER_SPEC", "tpu-local")
    cluster = current_cluster()
    job = cluster.launch(
        JobRequest(
            name="tpu-psum",
            entrypoint=Entrypoint.from_callable(psum_job),
            resources=ResourceConfig.with_tpu("v4-16", slice_count=2),
        )
    )
    cluster.monitor(job)  # "[replica-N] process N of 4 (slice S, host H): psum = 10"
    info = cluster.wait(job, raise_on_failure=True, timeout=600)
    print(f"{info.name}: {info.status}")
