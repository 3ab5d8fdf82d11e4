"""examples/rl_jobs.py runs as a user would run it: a fresh interpreter, the embedded cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.dask
def test_rl_example_runs_three_jobs_sharing_one_actor():
    env = {k: v for k, v in os.environ.items() if k != "FRAY_CLUSTER_SPEC"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "rl_jobs.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "[replica-0] trained on 8 rollouts" in out
    for name in ("train", "rollout-0", "rollout-1"):
        assert f"{name}: succeeded" in out
