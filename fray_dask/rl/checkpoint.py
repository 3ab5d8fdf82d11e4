"""Weights as files: each publication an Arrow IPC stream `step-<step>.weights` in an fsspec folder
(local or gs://), committed whole, the oldest removed beyond a count. For rollouts that start later
or cannot reach the trainer.

Imports pyarrow and fsspec; no Dask.
"""

from __future__ import annotations

import re

import fsspec
import numpy as np
import pyarrow as pa

from fray_dask.files import atomic_output, is_local
from fray_dask.rl.layout import Flattened, Layout, assemble

_NAME = re.compile(r"step-(\d{12})\.weights$")


def path_of(folder: str, step: int) -> str:
    return f"{folder.rstrip('/')}/step-{step:012d}.weights"


def write(folder: str, weights: Flattened, keep: int) -> str:
    """Writes `weights` under `folder` and returns its path once it is whole (through
    fray_dask.files.atomic_output: readers never see part of it), then removes all but the `keep`
    newest weights files there."""
    final = path_of(folder, weights.layout.step)
    with atomic_output(final) as f:
        with pa.ipc.new_stream(pa.PythonFile(f, mode="w"), weights.layout.schema()) as writer:
            for batch in weights.batches():
                writer.write_batch(batch)
    fs, root = fsspec.core.url_to_fs(folder)
    _prune(fs, root, keep)
    return final


def _prune(fs: fsspec.AbstractFileSystem, root: str, keep: int) -> None:
    steps = sorted(
        (int(m.group(1)), path)
        for path in fs.ls(root, detail=False)
        if (m := _NAME.search(path)) is not None
    )
    for _, path in steps[: max(len(steps) - keep, 0)]:
        try:
            fs.rm(path)
        except FileNotFoundError:  # another process pruned it first
            pass


def read(path: str) -> tuple[Layout, list[np.ndarray]]:
    """The layout and leaves stored at `path` (a local file is memory-mapped, its leaves viewed
    without a copy); raises ValueError if the file is cut short or is not a weights file,
    FileNotFoundError if it is gone."""
    fs, local_path = fsspec.core.url_to_fs(path)
    if is_local(fs):
        return _read(path, pa.memory_map(local_path))
    with fs.open(local_path, "rb") as f:
        return _read(path, pa.PythonFile(f, mode="r"))


def _read(path: str, source: pa.NativeFile) -> tuple[Layout, list[np.ndarray]]:
    try:
        reader = pa.ipc.open_stream(source)
        layout = Layout.from_schema(reader.schema)
        # Batches of a mapped file are views of the page cache, and those read from an object
        # store are buffers of their own: views of either stay valid, so no copy here.
        return layout, assemble(layout, reader, copy=False)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"the weights file {path} is damaged: {e}") from e
