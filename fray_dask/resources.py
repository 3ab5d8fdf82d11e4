"""A ResourceConfig as Dask worker resources, and the check that some worker can ever hold them.

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


def dask_resources(resources: ResourceConfig) -> dict[str, float]:
    """What one replica holds on its worker while it runs.

    `NON_PREEMPTIBLE: 0` holds nothing but restricts placement to workers that advertise it.
    """
    out: dict[str, float] = {}
    if resources.cpu:
        out["CPU"] = resources.cpu
    if resources.ram_bytes:
        out["MEMORY"] = resources.ram_bytes
    device = resources.device
    if device.kind == "gpu":
        out["GPU"] = device.count
    elif device.kind == "tpu":
        out["TPU"] = device.spec.chips_per_host
    if not resources.preemptible:
        out[NON_PREEMPTIBLE] = 0
    return out


def _show(name: str, amount: float) -> str:
    if name == NON_PREEMPTIBLE:
        return "a NON_PREEMPTIBLE worker"
    if name == "MEMORY":
        return f"MEMORY={format_size(int(amount))}"
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
    """Raises ValueError if no worker advertises at least `needed` of every resource: the rule,
    what was asked, the most any worker offers and how to fix it."""
    available = workers()
    for info in available:
        offered = info.get("resources") or {}
        if all(name in offered and offered[name] >= amount for name, amount in needed.items()):
            return
    asked = ", ".join(_show(k, v) for k, v in needed.items()) or "nothing"
    if not available:
        raise ValueError(
            f"{what} cannot be placed: the Dask cluster has no workers; start workers with "
            "`dask worker <scheduler> --resources 'CPU=4,MEMORY=16e9'`"
        )
    best = []
    for name in needed:
        amounts = [(w.get("resources") or {}).get(name) for w in available]
        amounts = [a for a in amounts if a is not None]
        best.append(_show(name, max(amounts)) if amounts else f"no {name}")
    if NON_PREEMPTIBLE in needed and not any(
        NON_PREEMPTIBLE in (w.get("resources") or {}) for w in available
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
        fix = (
            "ask for less (ResourceConfig(cpu=..., ram=...), num_cpus=...), or add workers with "
            f"`dask worker <scheduler> --resources '{_advertise(needed)}'`"
        )
    raise ValueError(
        f"{what} cannot be placed: it needs {asked}, but none of the {len(available)} workers "
        f"offers that (the most any worker offers: {', '.join(best)}); {fix}"
    )


def _advertise(needed: dict[str, float]) -> str:
    return ",".join(f"{k}={int(v) if float(v).is_integer() else v}" for k, v in needed.items())
