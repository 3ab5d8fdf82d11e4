"""Waiting helpers shared by the tests that start real processes: poll a condition or a file
with a deadline, and tell whether a pid still runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], what: str = "condition", timeout: float = 30) -> Any:
    """Polls `predicate` until it returns something truthy, which is returned; TimeoutError
    naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)
    return value


def wait_for_file(path: str, timeout: float = 30) -> str:
    """The contents of `path` once it exists (writers rename it into place when complete)."""
    wait_for(lambda: os.path.exists(path), f"{path} to appear", timeout)
    with open(path) as f:
        return f.read()


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
