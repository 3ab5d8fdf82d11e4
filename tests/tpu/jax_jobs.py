"""Entrypoints that tests/tpu runs as TPU jobs on LocalTpuCluster, and the request builder. Pickled
by value, so a job's child process needs neither `tests` importable nor pytest; jax is imported
inside the functions."""

from __future__ import annotations

import json
import os
import sys
import time

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def tpu_request(name, fn, *args, tpu="v4-16", replicas=1, env_vars=None, **kwargs):
    """A JobRequest running `fn(*args)` on `replicas` slices of `tpu`."""
    from fray_dask import Entrypoint, JobRequest, ResourceConfig, TpuConfig, create_environment

    return JobRequest(
        name=name,
        entrypoint=Entrypoint.from_callable(fn, args),
        resources=ResourceConfig(device=TpuConfig(tpu), replicas=replicas),
        environment=create_environment(env_vars=env_vars) if env_vars else None,
        **kwargs,
    )


def noop() -> None:
    pass


def psum_over_processes(out_dir: str) -> None:
    """Joins the job's JAX distributed system through JAX's own GKE TPU detection, sums
    process_index + 1 over every process with a psum on the global device mesh, and writes what
    it saw to `out_dir/result-<process_index>.json`."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    # "gketpu" reads TPU_WORKER_ID, TPU_WORKER_HOSTNAMES (or TPU_PROCESS_ADDRESSES),
    # MEGASCALE_SLICE_ID/NUM_SLICES/COORDINATOR_ADDRESS and JAX_COORDINATOR_PORT. Off a TPU VM it
    # logs that the environment is "not functional" and proceeds with those variables anyway.
    jax.distributed.initialize(cluster_detection_method="gketpu", initialization_timeout=60)
    mesh = Mesh(np.array(jax.devices()), ("p",))
    mine = np.array([jax.process_index() + 1], dtype=np.int32)
    local = jax.make_array_from_process_local_data(NamedSharding(mesh, P("p")), mine)
    psum = jax.jit(
        jax.shard_map(lambda a: jax.lax.psum(a, "p"), mesh=mesh, in_specs=P("p"), out_specs=P())
    )
    total = int(np.asarray(psum(local).addressable_data(0))[0])
    gathered = multihost_utils.process_allgather(mine).ravel().tolist()
    result = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "psum": total,
        "gathered": gathered,
        "slice": int(os.environ.get("MEGASCALE_SLICE_ID", "0")),
        "worker": int(os.environ["TPU_WORKER_ID"]),
        "replica": int(os.environ["FRAY_REPLICA_ID"]),
    }
    path = os.path.join(out_dir, f"result-{jax.process_index()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
    print(f"psum={total} on process {jax.process_index()}")
    jax.distributed.shutdown()


def fail_worker(worker: int, folder: str, fail_attempts: int) -> None:
    """Counts attempts per replica in `folder`; replica `worker` raises on its first
    `fail_attempts` attempts (once every replica has started the attempt), the others sleep
    through those attempts (to be stopped by the gang) and return on later ones."""
    replica, attempt = _new_attempt(folder)
    if attempt <= fail_attempts:
        _break_if(replica == worker, folder, replica, attempt)
    print(f"replica {replica} done on attempt {attempt}")


def fail_in_turn(folder: str) -> None:
    """On attempt k, replica k-1 raises (once every replica has started the attempt) and the
    others sleep to be stopped by the gang; past the replicas, every replica returns."""
    replica, attempt = _new_attempt(folder)
    if attempt <= int(os.environ["FRAY_REPLICA_COUNT"]):
        _break_if(replica == attempt - 1, folder, replica, attempt)


def _new_attempt(folder: str) -> tuple[int, int]:
    """This replica's id and the number of its attempt, counted in `folder/attempts-<id>`."""
    replica = int(os.environ["FRAY_REPLICA_ID"])
    with open(os.path.join(folder, f"attempts-{replica}"), "a") as f:
        f.write("attempt\n")
    with open(os.path.join(folder, f"attempts-{replica}")) as f:
        return replica, len(f.readlines())


def _break_if(breaks: bool, folder: str, replica: int, attempt: int) -> None:
    """The breaking replica raises once every replica runs this attempt (so each counts it);
    the others sleep until the gang stops them."""
    if breaks:
        _wait_for_attempt(folder, int(os.environ["FRAY_REPLICA_COUNT"]), attempt)
        raise RuntimeError(f"replica {replica} broke on attempt {attempt}")
    time.sleep(300)


def _wait_for_attempt(folder: str, replicas: int, attempt: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for replica in range(replicas):
        path = os.path.join(folder, f"attempts-{replica}")
        while not os.path.exists(path) or len(open(path).readlines()) < attempt:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {replica} did not start attempt {attempt}")
            time.sleep(0.02)


def sleep_with_pid(folder: str, seconds: float) -> None:
    """Writes `pid-<replica>` with its pid, then sleeps."""
    replica = os.environ["FRAY_REPLICA_ID"]
    path = os.path.join(folder, f"pid-{replica}")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
