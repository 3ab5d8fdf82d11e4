"""Replica work directories (`<tmp>/fray-<job>-<replica>-pid<owner>-*`, holding a callable's
payload and result): their names, which carry the pid of the process that owns them, and the
sweep of those whose owner died. Standard library only; starts no process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile

logger = logging.getLogger("fray_dask")

# mkdtemp appends 8 characters from [a-z0-9_]; job ids are [A-Za-z0-9._-] (see JobRequest.name).
_NAME = re.compile(r"fray-.+-\d+-pid(\d+)-[a-z0-9_]+")


def workdir_prefix(job_id: str, replica: int) -> str:
    """The mkdtemp prefix of a replica's work directory, naming this process as its owner.

    The owner removes the directory when the run ends; if the owner dies first, the runner's
    lifeline thread removes it (fray_dask.runner), and if both die at once (SIGKILL of the whole
    process tree, the OOM killer), `sweep_stale_workdirs` at the next cluster start does."""
    return f"fray-{job_id}-{replica}-pid{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale_workdirs(root: str | None = None) -> list[str]:
    """Removes the replica work directories under `root` (default: the temp dir) whose owning
    process no longer runs; returns their paths. Directories of live processes, of other users
    and anything not named like a work directory are left alone. A reused pid keeps a stale
    directory until that process ends too (never the reverse)."""
    root = root or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    uid = os.getuid()
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != uid:
                continue
            if _alive(int(match.group(1))):
                continue
            shutil.rmtree(entry.path)
            removed.append(entry.path)
    if removed:
        logger.info("removed %d work directories of replicas whose driver died", len(removed))
    return removed
