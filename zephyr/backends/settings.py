"""A backend's settings as users give them (`memory="8GB"`, `max_parallelism=...`) turned into a
validated BackendConfig. Sizes go through fray_dask.sizes, the project's one size parser.

Pure: no Dask import, and no backend module (every backend imports this).
"""

from __future__ import annotations

from typing import Any

from fray_dask.sizes import parse_size
from zephyr.backends.base import BackendConfig

__all__ = ["CONFIG_KEYS", "make_config", "parse_memory"]

CONFIG_KEYS = (
    "address", "max_parallelism", "memory", "num_cpus", "num_gpus", "max_retries", "scratch"
)  # fmt: skip


def parse_memory(value: str | int | float | None) -> int | None:
    """Bytes in a memory size ("8GB" = 8e9, "16g", "512MiB" = 512 * 2**20, "16Gi", a number of
    bytes), by fray_dask.sizes.parse_size, the rules every size in the project follows; None stays
    None. Raises ValueError naming the value and a fix ("8" -> did you mean '8g'?).
    """
    return None if value is None else parse_size(value, what="memory")


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
        scratch=_folder("scratch", config.get("scratch")),
    )


def _folder(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{name} must be a folder path or URL string (e.g. 'gs://bucket/tmp'), got {value!r}"
        )
    return value.rstrip("/") or "/"
