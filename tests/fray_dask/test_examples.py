"""examples/rl_jobs.py and examples/rl_loop.py run as a user would run them: a fresh interpreter,
the embedded cluster (or a private one whose workers a test kills)."""

from __future__ import annotations

import json
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


def _run_rl_loop(out: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "rl_loop.py"), "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.dask
def test_the_rl_loop_trains_unlocks_the_dependent_lesson_and_moves_weights(tmp_path):
    """examples/rl_loop.py as a user runs it (a fresh interpreter, the embedded cluster), with
    small settings: the trainer finishes, the curriculum unlocks 'mirror' during the run, and
    both rollouts saw several weight versions."""
    env = {k: v for k, v in os.environ.items() if k != "FRAY_CLUSTER_SPEC"}
    proc = _run_rl_loop(tmp_path, env, "--steps", "80")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    trainer = json.loads((tmp_path / "trainer.json").read_text())
    assert trainer["steps"] == 80
    assert trainer["mirror_unlocked_at"] is not None  # unlocked during the run
    assert trainer["curriculum"]["lessons"]["mirror"]["samples"] > 0  # and then trained on
    for i in range(2):
        versions = json.loads((tmp_path / f"rollout-{i}.json").read_text())["weight_versions"]
        assert versions == sorted(versions) and len(versions) >= 3
        assert f"rollout-{i} (succeeded): weight versions seen {versions}" in out
    assert "'mirror' unlocked at step" in out and "lesson mirror" in out


@pytest.mark.dask
def test_the_rl_loop_finishes_when_a_rollout_worker_is_killed(private_dask, tmp_path):
    """SIGKILL the Dask worker running rollout 1 mid-run: the trainer still finishes on the
    other rollout's episodes and the driver prints its summary. The jobs run on workers that
    hold one job each (CPU=0.5); the coordinators live on a non-preemptible worker of their own,
    as a real deployment would keep them."""
    private_dask.add_worker("CPU=0,MEMORY=1e9,NON_PREEMPTIBLE=1")
    jobs = [private_dask.add_worker("CPU=0.5,MEMORY=2e9") for _ in range(3)]
    env = {**os.environ, "FRAY_CLUSTER_SPEC": f"dask?address={private_dask.address}"}
    proc = _run_rl_loop(tmp_path, env, "--steps", "80")
    try:
        seen = []
        for line in proc.stdout:  # the driver streams the trainer's lines
            seen.append(line)
            if "step 20:" in line:  # a quarter of the way: both rollouts are running
                break
        processing = private_dask.client.processing()
        victim = next(w for w in jobs if any("rl-rollout-1" in str(k) for k in processing[w]))
        assert not (tmp_path / "DONE").exists()
        private_dask.kill_worker(victim)
        rest, _ = proc.communicate(timeout=150)
        out = "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    trainer = json.loads((tmp_path / "trainer.json").read_text())
    assert trainer["steps"] == 80
    assert "rollout-0 (succeeded)" in out
    assert "rollout-1 (" in out  # its summary line is there, whatever became of it
