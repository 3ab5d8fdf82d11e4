"""Atomic, idempotent output files for zephyr's writers: fray_dask.files's atomic output (a reader
never sees a partial file at its final path; a retry never leaves a mix), plus compression by the
path's extension.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import BinaryIO

from fray_dask import files
from fray_dask.files import commit, existing_outputs, output_exists, temporary_beside
from zephyr.io.compression import compressing

__all__ = ["atomic_output", "commit", "existing_outputs", "output_exists", "temporary_beside"]


@contextlib.contextmanager
def atomic_output(path: str, compress: bool = True) -> Iterator[BinaryIO]:
    """A binary stream that becomes `path` only if the block exits without an exception.

    With `compress`, the bytes are compressed as the extension says (.gz, .zst, .xz, .bz2). On
    failure nothing is left at `path` or beside it.
    """
    with files.atomic_output(path) as raw:
        if not compress:
            yield raw
            return
        with compressing(raw, path) as f:
            yield f
