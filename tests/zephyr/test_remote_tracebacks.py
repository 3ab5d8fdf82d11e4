"""A failure in user code on another process shows the user's own file and line, not cloudpickle's
"<dynamic-code>": a zephyr map on Dask workers and a fray job, each defined in a script run with
`python script.py` (so its functions travel to the workers by value, as a user's do).

Real subprocesses: the script connects to the session's LocalCluster (real worker processes); the
fray job runs on FRAY_CLUSTER_SPEC=local (a real replica process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PIPELINE = """\
import sys

from zephyr.backends.dask import DaskBackend
from zephyr import Dataset


def parse(value):
    return int(value)  # line 8: fails on "x"


def clean(value):
    return parse(value) + 1


if __name__ == "__main__":
    backend = DaskBackend(sys.argv[1])
    try:
        list(Dataset.from_list(["1", "x"]).map(clean).execute(backend))
    finally:
        backend.close()
"""

JOB = """\
from fray_dask import Entrypoint, JobRequest, current_cluster


def load(step):
    raise KeyError(f"no checkpoint for step {step}")  # line 5


def train(steps):
    load(steps)


if __name__ == "__main__":
    cluster = current_cluster()
    entrypoint = Entrypoint.from_callable(train, args=[3])
    job = cluster.launch(JobRequest(name="train", entrypoint=entrypoint))
    cluster.result(job, timeout=60)
"""


def _run_script(tmp_path, source: str, *args: str, env: dict | None = None) -> str:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    environ = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=environ,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.dask
@pytest.mark.timeout(180)
def test_a_failing_map_on_dask_workers_shows_the_users_file_and_line(tmp_path, dask_backend):
    stderr = _run_script(tmp_path, PIPELINE, dask_backend.client.scheduler.address)
    script = str(tmp_path / "user_script.py")
    assert "<dynamic-code>" not in stderr
    assert f'File "{script}", line 8, in parse' in stderr
    assert f'File "{script}", line 12, in clean' in stderr
    assert "return int(value)  # line 8" in stderr  # the source line, read from the user's file
    assert "ValueError: invalid literal for int()" in stderr


@pytest.mark.timeout(180)
def test_a_failing_job_shows_the_users_file_and_line(tmp_path):
    stderr = _run_script(tmp_path, JOB, env={"FRAY_CLUSTER_SPEC": "local"})
    script = str(tmp_path / "user_script.py")
    assert "<dynamic-code>" not in stderr
    assert f'File "{script}", line 5, in load' in stderr
    assert f'File "{script}", line 9, in train' in stderr
    assert "KeyError: 'no checkpoint for step 3'" in stderr
