"""Atomic, idempotent output files through fsspec: a reader never sees a partial file at its final
path. zephyr's writers (which add compression) and the RL coordinators' checkpoints write this way.

Local disk and memory:// show a file as soon as it is opened, so bytes go to a hidden sibling
(`.<name>.tmp-<uuid>`) that is renamed into place on success. Object stores (gs://, s3://) publish
an object only when its upload completes on close; a failed write discards the upload. Two attempts
at one output (a retry after a lost worker, a speculative duplicate) each commit a whole file and
the last commit wins, so the path never holds a mix. Temporaries left by a killed attempt are
removed when the output is next committed. Imports fsspec; no Dask.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import fsspec

_OBJECT_STORES = {"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl"}


def protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(protocols(fs) & {"file", "local"})


def publishes_on_close(fs: fsspec.AbstractFileSystem) -> bool:
    """Object stores make an object visible only when its upload completes (on close)."""
    return bool(protocols(fs) & _OBJECT_STORES)


_TMP_MARK = ".tmp-"


def _tmp_name(fspath: str) -> str:
    parent, name = posixpath.split(fspath)
    return posixpath.join(parent, f".{name}{_TMP_MARK}{uuid.uuid4().hex}")


def _remove_stale_temporaries(fs: fsspec.AbstractFileSystem, fspath: str) -> None:
    """Delete temporaries of `fspath` left behind by attempts that were killed mid-write."""
    parent, name = posixpath.split(fspath)
    with contextlib.suppress(OSError):
        for stale in fs.glob(posixpath.join(parent, f".{name}{_TMP_MARK}*")):
            with contextlib.suppress(OSError):
                fs.rm(stale)


def _not_writable(path: str, e: OSError) -> PermissionError:
    where = f" for {e.filename}" if e.filename else ""
    return PermissionError(
        f"cannot write output {path}: permission denied{where}; choose an output location this "
        "process may write to, or fix the folder's permissions"
    )


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """A binary stream that becomes `path` (any fsspec URL) only if the block exits without an
    exception; on failure nothing is left at `path` or beside it."""
    fs, fspath = fsspec.core.url_to_fs(path)
    if publishes_on_close(fs):
        with _object_store_output(fs, fspath, path) as raw:
            yield raw
        return
    with temporary_beside(path) as tmp:
        try:
            raw = fs.open(tmp, "wb")
        except PermissionError as e:
            raise _not_writable(path, e) from e
        with raw:
            yield raw
        commit(tmp, path)


@contextlib.contextmanager
def temporary_beside(path: str) -> Iterator[str]:
    """A hidden temporary path in `path`'s folder (local disk or memory://), for bytes that
    `commit` will move to `path`; removed on exit if it still exists (not committed)."""
    fs, fspath = fsspec.core.url_to_fs(path)
    parent = posixpath.dirname(fspath.rstrip("/"))
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
    except PermissionError as e:
        raise _not_writable(path, e) from e
    tmp = _tmp_name(fspath)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            if fs.exists(tmp):
                fs.rm(tmp)


def commit(tmp: str, path: str) -> None:
    """Move the complete temporary `tmp` (from `temporary_beside`) to `path` in one step, then
    remove temporaries of `path` left by killed attempts."""
    fs, fspath = fsspec.core.url_to_fs(path)
    try:
        if is_local(fs):
            os.replace(tmp, fspath)  # atomic on POSIX, replacing an older copy
        else:
            fs.mv(tmp, fspath)
    except FileNotFoundError:
        # Our temporary vanished: a concurrent attempt at the same output committed and cleaned
        # up. Its file is complete; ours would have been identical.
        if not fs.exists(fspath):
            raise
    _remove_stale_temporaries(fs, fspath)


@contextlib.contextmanager
def _object_store_output(
    fs: fsspec.AbstractFileSystem, fspath: str, path: str
) -> Iterator[BinaryIO]:
    try:
        raw = fs.open(fspath, "wb")
    except PermissionError as e:
        raise _not_writable(path, e) from e
    try:
        yield raw
    except BaseException:
        discard = getattr(raw, "discard", None)
        if discard is not None:
            discard()  # abandons a multi-part/resumable upload already started
            # fsspec's buffered files upload a small file in one request on close, which discard
            # does not prevent (gcsfs: a later close or __del__ published the buffer); a file
            # marked closed uploads nothing.
            raw.closed = True
        else:
            raw.close()
            with contextlib.suppress(FileNotFoundError):
                fs.rm(fspath)
        raise
    raw.close()


def existing_outputs(paths: Iterable[str]) -> set[str]:
    """The subset of `paths` that exist as files, with one listing per folder (not one request per
    path, which matters on object stores with thousands of shards)."""
    paths = list(paths)
    if not paths:
        return set()
    by_parent: dict[str, list[str]] = {}
    for p in paths:
        by_parent.setdefault(posixpath.dirname(str(p).rstrip("/")), []).append(str(p))
    found: set[str] = set()
    for group in by_parent.values():
        fs, parent = fsspec.core.url_to_fs(posixpath.dirname(group[0]) or ".")
        fs.invalidate_cache(parent)  # a listing cached earlier in this process may be stale
        try:
            listed = {fs._strip_protocol(p).rstrip("/") for p in fs.ls(parent, detail=False)}
        except FileNotFoundError:
            continue
        found.update(p for p in group if fs._strip_protocol(p).rstrip("/") in listed)
    return found


def output_exists(path: str) -> bool:
    """Whether a committed output is at `path` (temporaries never count)."""
    fs, fspath = fsspec.core.url_to_fs(path)
    fs.invalidate_cache(fspath)  # ask the store, not a listing cached earlier in this process
    return bool(fs.isfile(fspath))
