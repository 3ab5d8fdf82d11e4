"""examples/tpu_psum.py runs as a user would run it: a fresh interpreter, tpu-local by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_tpu_psum_example_sums_over_two_slices_of_two_hosts():
    pytest.importorskip("jax")
    env = {k: v for k, v in os.environ.items() if k != "FRAY_CLUSTER_SPEC"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tpu_psum.py")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for replica, (slice_, host) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        line = f"process {replica} of 4 (slice {slice_}, host {host}): psum = 10"
        assert f"[replica-{replica}] {line}" in done.stdout
    assert "tpu-psum: succeeded" in done.stdout
