"""Backend configuration: `create_backend(kind, **config)`, `flow_backend(**overrides)` and size
parsing.

No Dask import at module level (the Dask backend is imported when asked for).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

from zephyr.backends.base import Backend, BackendConfig

BACKEND_KINDS = {"dask": "dask", "threads": "threads", "threadpool": "threads", "sync": "sync"}
CONFIG_KEYS = ("address", "max_parallelism", "memory", "num_cpus", "num_gpus", "max_retries")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_memory(value: str | int | float | None) -> int | None:
    """Bytes from "8GB", "512MiB", "16g", "2.5G" or a number of bytes; None stays None.

    Decimal units for "GB"/"g" (1e9), binary for "GiB". A bare number below 1 MiB is refused as a
    likely missing unit ("8" -> did you mean "8GB"?).
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit, binary, bare = float(value), "", "", True
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(
                f"invalid memory size {value!r}: use a number with a unit, like 8GB, 512MiB or 16g"
            )
        number, unit, binary, b = float(match[1]), match[2].lower(), match[3], match[4]
        bare = not unit and not binary and not b
    if bare and number < 2**20:
        raise ValueError(
            f"memory size {value!r} has no unit and is under 1 MiB, which is surely not meant; "
            f"write {value}GB or {value}MB"
        )
    size = number * ((1024 if binary else 1000) ** _UNITS[unit])
    return int(size)


def _positive(name: str, value: Any, integer: bool) -> Any:
    if value is None:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < (1 if integer else 0):
        need = "an integer >= 1" if integer else "a number >= 0"
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return value


def make_config(**config: Any) -> BackendConfig:
    """A BackendConfig from user-facing keys (memory as a size string), validated."""
    retries = config.get("max_retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise ValueError(f"max_retries must be an integer >= 0, got {retries!r}")
    return BackendConfig(
        max_parallelism=_positive("max_parallelism", config.get("max_parallelism"), True),
        memory=parse_memory(config.get("memory")),
        num_cpus=_positive("num_cpus", config.get("num_cpus"), False),
        num_gpus=_positive("num_gpus", config.get("num_gpus"), False),
        max_retries=3 if retries is None else retries,
    )


def create_backend(kind: str = "dask", **config: Any) -> Backend:
    """A new backend of `kind` ("dask", "threads"/"threadpool" or "sync").

    Config keys: `address` (Dask only: a scheduler address or Client; None = embedded cluster),
    `max_parallelism`, `memory` ("8GB"), `num_cpus`, `num_gpus`, `max_retries`.

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
        yield backend
    finally:
        _CLI, Backend.dry_run = previous, previous_dry_run
        backend.close()


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
