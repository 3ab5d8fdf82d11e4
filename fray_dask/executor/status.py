"""A step's state in its output folder: `.executor_status` (RUNNING, SUCCESS, FAILED or
DEP_FAILED, written only by the lease's holder) and `.executor_lease` (who runs the step, and
when they last said so).

Taking, refreshing and releasing a lease is a compare-and-swap: on local disk under `flock` on
the lease file (which is emptied, never deleted, so every process locks the same inode); on gs://
by the JSON API's `ifGenerationMatch` precondition. Other filesystems have no compare-and-swap
here and are refused. Imports fsspec (gcsfs through it); no Dask.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import fsspec

from fray_dask.files import atomic_output, is_local

RUNNING = "RUNNING"
SUCCESS = "SUCCESS"
FAILED = "FAILED"
DEP_FAILED = "DEP_FAILED"
STATUSES = (RUNNING, SUCCESS, FAILED, DEP_FAILED)

STATUS_FILE = ".executor_status"
LEASE_FILE = ".executor_lease"
INFO_FILE = ".executor_info"


def new_holder_id() -> str:
    """Who holds a lease: this host and process, and a random part (two executors in one process
    are two holders)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LeaseLostError(RuntimeError):
    """The lease of a step is no longer ours: it went stale and another driver took it over."""


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(path)


def read_text(path: str) -> str | None:
    """The file's text, or None when there is none."""
    fs, fspath = _fs(path)
    try:
        return fs.cat_file(fspath).decode()
    except FileNotFoundError:
        return None


def write_text(path: str, text: str) -> None:
    """Writes `text` whole (readers never see half of it)."""
    fs, fspath = _fs(path)
    if is_local(fs):
        fs.makedirs(os.path.dirname(fspath), exist_ok=True)
    with atomic_output(path) as f:
        f.write(text.encode())


def read_status(output_path: str) -> str | None:
    text = read_text(f"{output_path}/{STATUS_FILE}")
    if text is None or not text.strip():
        return None
    status = text.strip().splitlines()[-1].strip()
    return status if status in STATUSES else None


def write_status(output_path: str, status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"a step status is one of {STATUSES}, got {status!r}")
    write_text(f"{output_path}/{STATUS_FILE}", status + "\n")


@dataclass(frozen=True)
class Lease:
    holder: str
    heartbeat: float  # time.time() of the holder's last refresh

    def age(self) -> float:
        return time.time() - self.heartbeat

    def stale(self, stale_after: float) -> bool:
        return self.age() > stale_after

    def encode(self) -> bytes:
        return json.dumps({"holder": self.holder, "heartbeat": self.heartbeat}).encode()

    @staticmethod
    def decode(data: bytes) -> Lease | None:
        if not data.strip():
            return None  # a released local lease
        try:
            raw = json.loads(data)
            return Lease(str(raw["holder"]), float(raw["heartbeat"]))
        except (ValueError, KeyError, TypeError):
            return Lease("<unreadable lease>", 0.0)  # stale at once: taken over


# A change to a lease: given the current one (or None), the new one, None to release, or
# KEEP to leave it as it is.
KEEP: Any = object()
Change = Callable[[Lease | None], Any]


class _LocalLeases:
    """Leases on local disk: read-decide-write under an exclusive flock of the lease file."""

    def __init__(self, path: str):
        self.path = path

    def current(self) -> Lease | None:
        import fcntl

        try:
            with open(self.path, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                return Lease.decode(f.read())
        except FileNotFoundError:
            return None

    def swap(self, change: Change) -> tuple[bool, Lease | None]:
        """Applies `change` atomically; returns (True, the lease now held)."""
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.seek(0)
            current = Lease.decode(f.read())
            new = change(current)
            if new is KEEP:
                return False, current
            f.seek(0)
            f.truncate()
            if new is not None:
                f.write(new.encode())
            f.flush()  # no fsync: after a crash, a lost lease is a free one (its holder is gone)
            return True, new


class _GcsLeases:
    """Leases on gs://: each write and delete carries `ifGenerationMatch` of the generation read,
    so of two drivers that read the same lease only one write lands (412 for the other)."""

    def __init__(self, fs: Any, path: str):
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)

    def _read(self) -> tuple[int, Lease | None]:
        try:
            headers, data = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media")
        except FileNotFoundError:
            return 0, None
        generation = headers.get("x-goog-generation")
        if generation is None:  # a server that does not say: ask the metadata
            meta = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
            generation = meta["generation"]
        return int(generation), Lease.decode(data)

    def current(self) -> Lease | None:
        return self._read()[1]

    def swap(self, change: Change) -> tuple[bool, Lease | None]:
        generation, current = self._read()
        new = change(current)
        if new is KEEP:
            return False, current
        try:
            if new is None:
                if generation:
                    self.fs.call(
                        "DELETE",
                        "b/{}/o/{}",
                        self.bucket,
                        self.key,
                        ifGenerationMatch=str(generation),
                    )
            else:
                self.fs.call(
                    "POST",
                    f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o",
                    uploadType="media",
                    name=self.key,
                    ifGenerationMatch=str(generation),
                    data=new.encode(),
                    headers={"Content-Type": "application/octet-stream"},
                    json_out=True,
                )
        except (FileExistsError, FileNotFoundError):  # 412 (or 404): another driver wrote first
            return False, self.current()
        return True, new


def lease_store(path: str) -> _LocalLeases | _GcsLeases:
    """The compare-and-swap for the lease file at `path`; ValueError for a filesystem without
    one."""
    fs, fspath = _fs(path)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if is_local(fs):
        return _LocalLeases(fspath)
    if protocols & {"gs", "gcs"}:
        return _GcsLeases(fs, fspath)
    raise ValueError(
        f"the executor's leases need a compare-and-swap, which it has for local paths and gs://; "
        f"the prefix {path.rsplit('/', 2)[0]!r} is on {sorted(protocols)}; use a gs:// or local "
        "prefix"
    )


class StepLease:
    """The lease of one step's output folder, from the point of view of `holder`."""

    def __init__(self, output_path: str, holder: str, stale_after: float):
        self.output_path = output_path
        self.holder = holder
        self.stale_after = stale_after
        self.store = lease_store(f"{output_path}/{LEASE_FILE}")
        self.taken_over: Lease | None = None

    def current(self) -> Lease | None:
        return self.store.current()

    def held_elsewhere(self) -> Lease | None:
        """The live lease of another holder, if there is one."""
        lease = self.current()
        if lease is None or lease.holder == self.holder or lease.stale(self.stale_after):
            return None
        return lease

    def try_acquire(self) -> bool:
        """Takes the lease if it is free, stale or already ours; `taken_over` is then the stale
        lease of another holder it replaced (else None)."""
        replaced: list[Lease] = []

        def take(current: Lease | None) -> Any:
            replaced.clear()
            if current is not None and current.holder != self.holder:
                if not current.stale(self.stale_after):
                    return KEEP
                replaced.append(current)
            return Lease(self.holder, time.time())

        done = self.store.swap(take)[0]
        self.taken_over = replaced[0] if done and replaced else None
        return done

    def refresh(self) -> None:
        """Renews the heartbeat; LeaseLostError when another holder has the lease now."""

        def renew(current: Lease | None) -> Any:
            if current is None or current.holder != self.holder:
                return KEEP
            return Lease(self.holder, time.time())

        done, current = self.store.swap(renew)
        if not done:
            who = "nobody" if current is None else current.holder
            raise LeaseLostError(
                f"the lease of {self.output_path} is held by {who}, not by this driver "
                f"({self.holder}): its heartbeat was older than {self.stale_after:g} s and "
                "another driver took the step over"
            )

    def release(self) -> None:
        """Frees the lease if it is ours."""
        self.store.swap(lambda cur: None if cur is not None and cur.holder == self.holder else KEEP)


@contextlib.contextmanager
def held(lease: StepLease) -> Iterator[None]:
    """Releases `lease` when the block ends, however it ends."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            lease.release()
