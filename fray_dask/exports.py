"""Public names that load on first use (PEP 562): the one way the project's packages (fray_dask,
tpu, zephyr, zephyr.io) keep `import <package>` cheap where a name would load Dask, Kubernetes or
pyarrow. Pure Python.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, where: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for the package `package` (its `__name__`) that import
    `where[name]`, the module defining `name`, on first use and keep the name in the package.

        __getattr__, __dir__ = lazy_names(__name__, {"DaskBackend": "zephyr.backends.dask"})
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        source = where.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(module, name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(getattr(module, "__all__", ())))

    return __getattr__, __dir__
