"""Cross-process test helpers: a concurrency counter shared by worker processes through a file, and
real `dask worker` processes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ConcurrencyProbe:
    """Counts how many holders are inside `hold()` at once, across processes, and the maximum seen.

    Picklable (just a path), so user functions shipped to Dask workers can carry it.
    """

    path: str

    @classmethod
    def create(cls, folder: os.PathLike, name: str) -> ConcurrencyProbe:
        path = os.path.join(os.fspath(folder), f"{name}.probe")
        with open(path, "w") as f:
            json.dump({"now": 0, "max": 0, "total": 0}, f)
        return cls(path)

    def _update(self, delta: int) -> None:
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            state = json.load(f)
            state["now"] += delta
            state["max"] = max(state["max"], state["now"])
            if delta > 0:
                state["total"] += 1
            f.seek(0)
            f.truncate()
            json.dump(state, f)

    @contextlib.contextmanager
    def hold(self, seconds: float = 0.0) -> Iterator[None]:
        self._update(+1)
        try:
            time.sleep(seconds)
            yield
        finally:
            self._update(-1)

    def enter(self) -> None:
        self._update(+1)

    def exit(self) -> None:
        self._update(-1)

    def read(self) -> dict:
        with open(self.path) as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            return json.load(f)

    @property
    def max(self) -> int:
        return self.read()["max"]

    @property
    def total(self) -> int:
        return self.read()["total"]


def start_dask_worker(address: str, *extra: str, log: str | None = None) -> subprocess.Popen:
    """A real `dask worker` process with one thread and no nanny (killing it removes the worker
    for good); its log goes to the file `log` if given."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                *extra,
            ],  # fmt: skip
            stdout=out,
            stderr=out,
        )
    finally:
        if log:
            out.close()


def start_dask_scheduler() -> tuple[subprocess.Popen, str]:
    """A real `dask scheduler` process on a free loopback port, and its address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"tcp://127.0.0.1:{port}"


def wait_until_idle(backend, timeout: float = 30) -> None:
    """Dask cannot interrupt a running task: after a fail-fast, wait until no worker still runs
    one (a no-op for in-process backends, which finish or abandon their tasks before raising)."""
    client = getattr(backend, "client", None)
    if client is None:
        return

    def executing(dask_worker=None):
        return dask_worker.state.executing_count

    deadline = time.monotonic() + timeout
    while any(client.run(executing).values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Dask tasks still running {timeout} s after the failure")
        time.sleep(0.05)
