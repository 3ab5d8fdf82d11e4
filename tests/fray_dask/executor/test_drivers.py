"""Several drivers on one DAG, as separate processes (`python -m tests.fray_dask.executor.driver`,
FRAY_CLUSTER_SPEC=local): two at once run each step once; one SIGKILLed mid-step leaves a lease
that goes stale, and the next driver reruns the half-written step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fray_dask.executor import RUNNING, SUCCESS, read_status
from fray_dask.executor.status import StepLease
from tests.fray_dask.executor.dag_steps import calls_of, wait_until

ROOT = Path(__file__).resolve().parents[3]


def _driver(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    env = {**os.environ, "FRAY_CLUSTER_SPEC": "local", "PYTHONPATH": str(ROOT)}
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fray_dask.executor.driver", *args],
            stdout=o,
            stderr=e,
            env=env,
            cwd=ROOT,
        )
    return proc, out, err


def _outcomes(out: Path) -> dict[str, str]:
    lines = [line.split() for line in out.read_text().splitlines() if line.startswith("OUTCOME")]
    return {name: action for _, name, action in lines}


def _finish(proc: subprocess.Popen, err: Path) -> None:
    assert proc.wait(timeout=120) == 0, err.read_text()[-3000:]


def test_two_drivers_at_once_run_every_step_exactly_once(tmp_path):
    prefix, calls, gate = str(tmp_path / "out"), str(tmp_path / "calls"), tmp_path / "gate"
    gate.write_text("")  # holds download in its middle until both drivers are at it
    a, a_out, a_err = _driver(tmp_path, "a", prefix, calls, "--gate", str(gate))
    b, b_out, b_err = _driver(tmp_path, "b", prefix, calls, "--gate", str(gate))
    wait_until(lambda: "waiting for it" in a_err.read_text() + b_err.read_text())
    gate.unlink()
    _finish(a, a_err)
    _finish(b, b_err)
    assert [calls_of(calls, n) for n in ("download", "clean", "dedup", "count")] == [1, 1, 1, 1]
    # Each step was run by one of the two; the other waited for it (or found it done) and
    # reused its output. Which driver runs a later step is a race both may win.
    first, second = _outcomes(a_out), _outcomes(b_out)
    assert sorted([first["raw/download"], second["raw/download"]]) == ["ran", "waited"]
    for name in ("raw/download", "clean", "dedup", "count"):
        actions = sorted([first[name], second[name]])
        assert actions in (["ran", "waited"], ["ran", "skipped"]), (name, actions)


def test_a_sigkilled_driver_s_step_is_taken_over_and_rerun(tmp_path):
    prefix, calls, gate = str(tmp_path / "out"), str(tmp_path / "calls"), tmp_path / "gate"
    gate.write_text("")
    killed, _, killed_err = _driver(tmp_path, "killed", prefix, calls, "--gate", str(gate))
    wait_until(lambda: calls_of(calls, "download") == 1)  # part-0 written, part-1 not yet
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    (download_path,) = [str(p) for p in (tmp_path / "out").glob("raw/download-*")]
    assert read_status(download_path) == RUNNING  # never SUCCESS
    assert not os.path.exists(f"{download_path}/part-1.jsonl")
    with open(f"{download_path}/.executor_lease") as f:
        holder = json.load(f)["holder"]
    assert holder.split("-")[-2] == str(killed.pid)

    gate.unlink()
    survivor, out, err = _driver(tmp_path, "survivor", prefix, calls)
    _finish(survivor, err)
    assert _outcomes(out) == dict.fromkeys(["raw/download", "clean", "dedup", "count"], "ran")
    assert calls_of(calls, "download") == 2  # the half-written step ran again
    assert read_status(download_path) == SUCCESS
    assert os.path.exists(f"{download_path}/part-1.jsonl")
    assert f"raw/download: taking over from {holder}" in err.read_text()


def test_an_interrupted_driver_stops_its_job_and_frees_the_lease_at_once(tmp_path):
    """Ctrl-C: the step's job is stopped and its lease released, so the next driver runs the
    step without waiting for the lease to go stale; the run's JSON says "interrupted"."""
    prefix, calls, gate = str(tmp_path / "out"), str(tmp_path / "calls"), tmp_path / "gate"
    gate.write_text("")
    driver, _, err = _driver(tmp_path, "interrupted", prefix, calls, "--gate", str(gate))
    wait_until(lambda: calls_of(calls, "download") == 1)
    job_pid = int((tmp_path / "calls" / "download.log").read_text().split()[0])
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=60) != 0
    assert "KeyboardInterrupt" in err.read_text()
    wait_until(lambda: not _alive(job_pid))
    (download_path,) = [str(p) for p in (tmp_path / "out").glob("raw/download-*")]
    assert read_status(download_path) == RUNNING
    assert StepLease(download_path, "anyone", 60).current() is None
    (run_file,) = (tmp_path / "out" / "experiments").glob("*.json")
    assert json.loads(run_file.read_text())["status"] == "interrupted"

    gate.unlink()
    again, out, again_err = _driver(tmp_path, "again", prefix, calls)
    _finish(again, again_err)
    assert _outcomes(out)["raw/download"] == "ran"
    assert "taking over" not in again_err.read_text()
    assert calls_of(calls, "download") == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
