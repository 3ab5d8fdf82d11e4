"""fsspec helpers shared by readers, writers and `Dataset.from_files`: which kind of filesystem a
path is on, and sorted globs that keep the protocol of remote paths."""

from __future__ import annotations

import posixpath

import fsspec

_OBJECT_STORES = {"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl"}


def protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(protocols(fs) & {"file", "local"})


def publishes_on_close(fs: fsspec.AbstractFileSystem) -> bool:
    """Object stores make an object visible only when its upload completes (on close)."""
    return bool(protocols(fs) & _OBJECT_STORES)


def glob_files(pattern: str) -> list[str]:
    """Sorted file paths matching an fsspec glob, with the protocol kept for remote filesystems.

    Hidden files (names starting with '.', such as the temporaries of writes in progress or killed
    mid-way) are left out unless the pattern's last part starts with '.' itself.
    """
    fs, path = fsspec.core.url_to_fs(pattern)
    fs.invalidate_cache()  # object-store listings cached by an earlier run may be stale
    found = fs.glob(path, detail=True)
    hidden_ok = posixpath.basename(path).startswith(".")
    files = [
        p
        for p, info in found.items()
        if info.get("type", "file") != "directory"
        and (hidden_ok or not posixpath.basename(p).startswith("."))
    ]
    if not is_local(fs):
        files = [fs.unstrip_protocol(p) for p in files]
    return sorted(files)
