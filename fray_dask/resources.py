"""A ResourceConfig as Dask worker resources, and the one check (for fray jobs and actors and
zephyr's tasks alike) that some worker can ever hold a request.

Imports no Dask. Workers advertise `CPU`, `MEMORY` (bytes), `GPU`, `TPU` (chips) and, when they
cannot be preempted, `NON_PREEMPTIBLE`; a task asking for a resource no worker advertises would
wait in Dask's `no-worker` state forever, so launches are checked first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fray_dask.sizes import format_size
from fray_dask.types import JobRequest, ResourceConfig

NON_PREEMPTIBLE = "NON_PREEMPTIBLE"


def resource_request(
    cpu: float | None = None,
    memory: int | None = None,
    gpus: float | None = None,
    tpu_chips: int | None = None,
    non_preemptible: bool = False,
) -> dict[str, float]:
    """The Dask resources a task holds on its worker while it runs, for those amounts given (a
    zephyr task's `num_cpus`/`memory`/`num_gpus`, a fray replica's ResourceConfig): the names
    the workers advertise. `NON_PREEMPTIBLE: 0` holds nothing but restricts placement to workers
    that advertise it."""
    wanted = {"CPU": cpu, "MEMORY": memory, "GPU": gpus, "TPU": tpu_chips}
    out: dict[str, float] = {name: amount for name, amount in wanted.items() if amount}
    if non_preemptible:
        out[NON_PREEMPTIBLE] = 0
    return out


def dask_resources(resources: ResourceConfig) -> dict[str, float]:
    """What one replica of a job holds on its worker while it runs."""
    device = resources.device
    return resource_request(
        cpu=resources.cpu,
        memory=resources.ram_bytes,
        gpus=device.count if device.kind == "gpu" else None,
        tpu_chips=device.spec.chips_per_host if device.kind == "tpu" else None,
        non_preemptible=not resources.preemptible,
    )


def _show(name: str, amount: float) -> str:
    if name == NON_PREEMPTIBLE:
        return "a NON_PREEMPTIBLE worker"
    if name == "MEMORY":
        return f"MEMORY={format_size(amount)}"
    return f"{name}={amount:g}"


def check_satisfiable(
    request: JobRequest,
    needed: dict[str, float],
    workers: Callable[[], list[dict[str, Any]]],
) -> None:
    """Raises ValueError if no worker could ever run a replica of `request`."""
    what = f"job {request.name!r}"
    check_placeable(what, needed, workers, tpu=request.resources.device.kind == "tpu")


def check_placeable(
    what: str,
    needed: dict[str, float],
    workers: Callable[[], list[dict[str, Any]]],
    *,
    tpu: bool = False,
) -> None:
    """Raises ValueError (the message of `unplaceable`) if no worker offers at least `needed` of
    every resource; `workers` is called once for the workers' info dicts."""
    problem = unplaceable(what, needed, workers(), tpu=tpu)
    if problem:
        raise ValueError(problem)


def unplaceable(
    what: str,
    needed: dict[str, float],
    workers: list[dict[str, Any]],
    *,
    fix: str | None = None,
    tpu: bool = False,
) -> str | None:
    """Why no worker can ever run `what`, which holds `needed` resources while it runs, or None
    if some worker advertises at least that much of each. `workers` are info dicts as
    `Client.scheduler_info()["workers"]` gives them.

    The one check zephyr's tasks and fray_dask's jobs and actors go through. The message says the
    rule, what was asked, the most any worker offers, then how to ask for less (`fix`, in the
    caller's words) or which workers to add; for a missing NON_PREEMPTIBLE or TPU worker, that.
    """
    for info in workers:
        offered = info.get("resources") or {}
        if all(name in offered and offered[name] >= amount for name, amount in needed.items()):
            return None
    asked = ", ".join(_show(k, v) for k, v in needed.items()) or "nothing"
    if not workers:
        return (
            f"{what} cannot be placed: the Dask cluster has no workers; start workers with "
            "`dask worker <scheduler> --resources 'CPU=4,MEMORY=16e9'`"
        )
    best = []
    for name in needed:
        amounts = [(w.get("resources") or {}).get(name) for w in workers]
        amounts = [a for a in amounts if a is not None]
        best.append(_show(name, max(amounts)) if amounts else f"no {name}")
    if NON_PREEMPTIBLE in needed and not any(
        NON_PREEMPTIBLE in (w.get("resources") or {}) for w in workers
    ):
        fix = (
            f"start a worker with `--resources '{NON_PREEMPTIBLE}=1'` on a machine that is not "
            "preempted, or pass preemptible=True"
        )
    elif tpu:
        fix = (
            "TPU jobs run on GKE (FRAY_CLUSTER_SPEC=gke?...) or on workers started with "
            "`--resources 'TPU=<chips per host>'`"
        )
    else:
        less = fix or "ask for less (ResourceConfig(cpu=..., ram=...), num_cpus=...)"
        fix = (
            f"{less}, or add workers with `dask worker <scheduler> --resources "
            f"'{_advertise(needed)}'`"
        )
    return (
        f"{what} cannot be placed: it needs {asked}, but none of the {len(workers)} Dask workers "
        f"offers that (the most any worker offers: {', '.join(best)}); {fix}"
    )


def _advertise(needed: dict[str, float]) -> str:
    return ",".join(f"{k}={int(v) if float(v).is_integer() else v}" for k, v in needed.items())
