"""benchmarks/executor_overhead.py runs end to end on a tiny DAG (a fresh interpreter, one child
process per job) and prints its two target lines: the executor/plain-jobs ratio and the time to
find a finished DAG has nothing to do. The numbers themselves are not asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_executor_overhead_benchmark_prints_both_target_lines():
    env = {k: v for k, v in os.environ.items() if k != "FRAY_CLUSTER_SPEC"}
    env["PYTHONPATH"] = str(ROOT)
    script = ROOT / "benchmarks" / "executor_overhead.py"
    args = ["--steps", "12", "--layers", "3", "--repeat", "1", "--spec", "local"]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "12 no-op steps, 3 layers of 4" in out, out
    assert re.search(r"median ratio executor/plain \d+\.\d\dx  target <= 1\.3x: (met|NOT met)", out)
    assert re.search(r"run\(\), all 12 skipped +best +\d+\.\d{3} s", out), out
    assert re.search(r"median nothing-to-do run \d+\.\d{3} s  target < 2 s: (met|NOT met)", out)
