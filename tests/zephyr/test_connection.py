"""The embedded cluster's connection: the dashboard line when the usual port is taken."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

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
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path
    )
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
