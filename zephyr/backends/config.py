"""Making backends: `create_backend(kind, **config)`, `flow_backend(**overrides)` and the `zephyr`
command's `cli_context`. The one module that knows every backend kind; no backend imports it.

No Dask import at module level (the Dask backend is imported when asked for).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from fray_dask.connection import refusing_clusters
from zephyr.backends.base import Backend
from zephyr.backends.settings import CONFIG_KEYS, make_config, parse_memory
from zephyr.errors import ZephyrError

__all__ = [
    "BACKEND_KINDS",
    "CONFIG_KEYS",
    "cli_context",
    "create_backend",
    "flow_backend",
    "parse_memory",
]

BACKEND_KINDS = {"dask": "dask", "threads": "threads", "threadpool": "threads", "sync": "sync"}


def create_backend(kind: str = "dask", **config: Any) -> Backend:
    """A new backend of `kind` ("dask", "threads"/"threadpool" or "sync").

    Config keys: `address` (Dask only: a scheduler address or Client; None = embedded cluster),
    `max_parallelism`, `memory` ("8GB"), `num_cpus`, `num_gpus`, `max_retries`, `scratch` (where
    shuffles write their runs: a folder or fsspec URL).

    >>> create_backend("sync", max_parallelism=4)
    SyncBackend(max_parallelism=4)
    """
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"unknown backend config key(s) {unknown}; valid keys: {list(CONFIG_KEYS)}"
        )
    resolved = BACKEND_KINDS.get(str(kind).lower())
    if resolved is None:
        raise ValueError(
            f"unknown backend {kind!r}; valid backends: {', '.join(sorted(BACKEND_KINDS))}"
        )
    address = config.pop("address", None)
    cfg = make_config(**config)
    if resolved == "dask":
        from zephyr.backends.dask import DaskBackend

        return DaskBackend(address, cfg)
    if address is not None:
        raise ValueError(f"address={address!r} only applies to the dask backend, not {kind!r}")
    if resolved == "threads":
        from zephyr.backends.threads import ThreadBackend

        return ThreadBackend(cfg)
    from zephyr.backends.sync import SyncBackend

    return SyncBackend(cfg)


# -- flow_backend: the backend configured by the `zephyr` CLI, or the embedded default
_CLI: dict[str, Any] | None = None
_DEFAULT: Backend | None = None
_LOCK = threading.Lock()


@contextlib.contextmanager
def cli_context(kind: str, dry_run: bool = False, **config: Any) -> Iterator[Backend]:
    """Make `flow_backend()` return a backend built from these settings (what the `zephyr` CLI
    does).

    With `dry_run`, every backend's `execute` (this one, those derived with
    `flow_backend(**overrides)` and any the script builds itself) prints the plan and yields
    nothing while the context is open; no cluster is started for it, as a DaskBackend connects only
    when a plan runs.
    """
    global _CLI
    backend = create_backend(kind, **config)
    previous, previous_dry_run = _CLI, Backend.dry_run
    _CLI = {"kind": kind, "config": config, "backend": backend}
    Backend.dry_run = previous_dry_run or dry_run
    try:
        with refusing_clusters(_dry_run_refusal) if dry_run else contextlib.nullcontext():
            yield backend
    finally:
        _CLI, Backend.dry_run = previous, previous_dry_run
        backend.close()


def _dry_run_refusal(what: str) -> ZephyrError:
    """The error for code outside a pipeline that asks for a cluster during `zephyr --dry-run`."""
    return ZephyrError(
        f"zephyr --dry-run starts no cluster, but the script asked for {what} outside a "
        "pipeline (DaskBackend.client or .dashboard_link, or a fray_dask job or actor); run "
        "without --dry-run, or skip that code when flow_backend().dry_run is True"
    )


def flow_backend(**overrides: Any) -> Backend:
    """The backend configured on the `zephyr` command line; overrides replace single settings.

    Inside `zephyr --backend=dask --max-parallelism=50 --memory=2GB script.py`, `flow_backend()` is
    that backend (the same object on every call) and `flow_backend(max_parallelism=16)` is a new
    backend on the same cluster with 16 as its limit and 2GB inherited. Outside the CLI it is the
    embedded default: a DaskBackend on a local cluster started on first use.
    """
    global _DEFAULT
    unknown = sorted(set(overrides) - set(CONFIG_KEYS) - {"backend"})
    if unknown:
        raise ValueError(f"unknown flow_backend override(s) {unknown}; valid: {list(CONFIG_KEYS)}")
    cli = _CLI
    if cli is not None:
        if not overrides:
            return cli["backend"]
        kind = overrides.pop("backend", cli["kind"])
        return create_backend(kind, **{**cli["config"], **overrides})
    if not overrides:
        with _LOCK:
            if _DEFAULT is None:
                _DEFAULT = create_backend("dask")
            return _DEFAULT
    kind = overrides.pop("backend", "dask")
    return create_backend(kind, **overrides)
