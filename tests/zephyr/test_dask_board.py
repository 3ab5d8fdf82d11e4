"""zephyr.backends.dask_board.announce: one dashboard line, as the embedded cluster starts and
before any work (also when the usual port is taken)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import socket
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 8787))  # unless another cluster (the tests' own) holds it already
    except OSError:
        pass
    from zephyr import Dataset, DaskBackend
    if __name__ == "__main__":
        print(list(Dataset.from_list([1, 2]).map(str).execute(DaskBackend())))
    """
)


@pytest.mark.timeout(120)
def test_a_taken_dashboard_port_is_one_short_line_not_a_warning(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['1', '2']"
    assert "already in use" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "dashboard" in line.lower()]
    assert len(lines) == 1, done.stderr
    assert "port 8787 is in use by another process" in lines[0]
    port = int(lines[0].split("http://127.0.0.1:")[1].split("/")[0])
    assert port != 8787
    with socket.socket() as sock:  # the cluster is gone with its script
        sock.bind(("127.0.0.1", port))


@pytest.mark.timeout(120)
def test_the_example_logs_one_dashboard_line_before_any_stage_runs(tmp_path):
    """The link is worth something while the cluster lives: logged as it starts (with the page
    that shows each stage's progress), not printed after the run, when it is already dead."""
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "clean_corpus.py"), "--data", "data",
         "--shards", "2", "--docs", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=100, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    links = [i for i, line in enumerate(lines) if "dashboard" in line.lower()]
    work = [i for i, line in enumerate(lines) if "shards" in line or line.startswith("wrote ")]
    assert len(links) == 1, done.stdout
    assert work and links[0] < min(work), done.stdout
    assert "stage progress: http://127.0.0.1:" in lines[links[0]]
