"""A gcp-storage-emulator process for tests that read and write gs:// (the real gcsfs client against
a local, in-memory GCS API): started on a free port, waited for, stopped with its process group;
and `gcsfs_on`, which points gs:// at it for this process and the ones it starts."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"gcp-storage-emulator exited with code {proc.returncode} before serving {url}; "
                f"its output:\n{log_path.read_text(errors='replace')}"
            )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            pytest.fail(
                f"gcp-storage-emulator not answering at {url} after {STARTUP_TIMEOUT:g} s; "
                f"its output:\n{log_path.read_text(errors='replace')}"
            )
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the emulator and anything it started (it runs in its own process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_emulator(log_path: Path) -> Iterator[str]:
    """An in-memory emulator, its output in `log_path`; yields its endpoint (the value for
    STORAGE_EMULATOR_HOST) once it answers, and stops it on exit."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start"]
            + f"--host 127.0.0.1 --port {port} --in-memory".split(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_up(proc, endpoint, log_path)
        yield endpoint
    finally:
        _stop(proc)


@contextlib.contextmanager
def gcsfs_on(endpoint: str, bucket: str = "bucket") -> Iterator[Any]:
    """Points gs:// at `endpoint`, in this process and in processes started later, and yields a
    fresh gcsfs filesystem holding the new empty bucket `bucket`; restores everything on exit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
        # gcsfs reads this when first imported: left on, every new bucket costs a 60 s probe of a
        # gRPC API the emulator does not serve.
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        # Anonymous credentials, without probing the GCE metadata server. fsspec reads FSSPEC_*
        # variables when imported: workers (new processes) get it from the environment, this
        # process (fsspec already imported) through fsspec's config.
        mp.setenv("FSSPEC_GCS_TOKEN", "anon")
        mp.setitem(
            fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"}
        )
        import gcsfs

        if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
            # gcsfs was imported before this helper set the variable: use the plain filesystem.
            registry = importlib.import_module("fsspec.registry")._registry
            for protocol in ("gs", "gcs"):
                mp.setitem(registry, protocol, gcsfs.core.GCSFileSystem)
        try:
            gcsfs.core.GCSFileSystem.clear_instance_cache()
            fs = fsspec.filesystem("gs")
            fs.mkdir(bucket)
            yield fs
        finally:
            gcsfs.core.GCSFileSystem.clear_instance_cache()
