"""What the Dask backend checks before and while it runs a plan: which resources its tasks can ask
for, whether workers exist (and on which machines), and why tasks wait. Functions of the
workers' info dicts and the scheduler's view (zephyr.backends.dask_tasks.cluster_view); no Dask
import, tested without Dask.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from fray_dask.resources import resource_request, unplaceable
from zephyr.errors import ZephyrError

logger = logging.getLogger("zephyr")

# Who asks, and how a zephyr user asks for less, in the one "cannot be placed" message.
TASKS = "each task of the pipeline"
ASK_LESS = "lower --memory/--num-cpus/--num-gpus (memory=, num_cpus=, num_gpus= of the backend)"


def requested_resources(memory: int | None, num_cpus: float | None, num_gpus: float | None) -> dict:
    """The Dask resources every task of a backend asks for (only those that were set), named as
    fray_dask names a job's."""
    return resource_request(cpu=num_cpus, memory=memory, gpus=num_gpus)


def task_resources(wanted: dict, workers: list[dict], warned: set[str]) -> dict | None:
    """The resources to annotate tasks with: `wanted` without those no worker advertises (said
    once per backend, in `warned`), after checking that some worker can ever run such a task
    (ZephyrError naming the request, the largest offer and the fix otherwise)."""
    if not wanted:
        return None
    advertised = set().union(*(w.get("resources", {}) for w in workers))
    missing = sorted(set(wanted) - advertised)
    if missing:
        key = ",".join(missing)
        if key not in warned:
            warned.add(key)
            logger.warning(
                "no Dask worker advertises the resource(s) %s; running without those "
                'restrictions (start workers with --resources "CPU=..,MEMORY=.." to enforce them)',
                key,
            )
        wanted = {k: v for k, v in wanted.items() if k not in missing}
        if not wanted:
            return None
    problem = unplaceable(TASKS, wanted, workers, fix=ASK_LESS)
    if problem:
        raise ZephyrError(problem)
    return wanted


def wait_for_workers(
    workers: Callable[[], list[dict]], address: str, timeout: float, rule: str = ""
) -> list[dict]:
    """`workers()` once it lists a worker, polled for up to `timeout` s; then a ZephyrError that
    names the cluster's `address` and `rule`, the setting behind the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = workers()
        if found:
            return found
        if time.monotonic() > deadline:
            waited = f" after {timeout:g} s" if timeout else ""
            rule = f" ({rule})" if rule else ""
            raise ZephyrError(
                f"the Dask cluster at {address} has no workers{waited}{rule}; start workers "
                f"(dask worker {address}) or use the embedded cluster"
            )
        time.sleep(0.1)


def stall_reason(
    view: dict[str, Any],
    resources: dict | None,
    workers: Callable[[], list[dict]],
    address: str,
) -> str | None:
    """Why the tasks in `view` (cluster_view: worker count, task states) cannot run now, or None
    if nothing stops them: no workers at all, or none that satisfies their restrictions."""
    if view["workers"] == 0:
        return (
            f"the Dask scheduler at {address} has 0 workers; start workers (dask worker "
            "<scheduler address>) or check why they died (out of memory, preempted, killed)"
        )
    if "no-worker" in view["states"]:
        return unplaceable(TASKS, resources or {}, workers(), fix=ASK_LESS) or (
            "tasks wait in state no-worker: no connected worker satisfies their restrictions; "
            "start workers that offer them"
        )
    return None


def local_addresses() -> set[str]:
    """The host names and IP addresses of this machine."""
    hosts = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
    with contextlib.suppress(OSError):
        hosts.add(socket.gethostbyname(socket.gethostname()))
    for addresses in psutil.net_if_addrs().values():
        hosts.update(a.address.split("%")[0] for a in addresses)
    return hosts


def remote_workers(workers: list[dict]) -> list[str]:
    """The hosts of `workers` (their info dicts) that are not this machine."""
    here = local_addresses()
    return sorted({w["host"] for w in workers if w.get("host") and w["host"] not in here})
