"""The `zephyr` command, run as a real subprocess: flags reach flow_backend(), --dry-run prints
plans, bad values fail with one line and exit code 2, and an unreachable cluster fails fast."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    from zephyr import Dataset, flow_backend

    def main():
        backend = flow_backend()
        inner = flow_backend(max_parallelism=2)
        assert flow_backend() is backend
        cfg = backend.config
        print("backend", type(backend).__name__, cfg.max_parallelism, cfg.memory, cfg.num_cpus,
              cfg.max_retries, "inner", inner.config.max_parallelism, inner.config.memory)
        print("args", sys.argv[1:])
        ds = Dataset.from_list([1, 2, 3]).map(lambda x: x * 10).reshard(2)
        print("results", list(backend.execute(ds)))
    """
)


def zephyr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zephyr.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(SCRIPT)
    return str(path)


def test_help_lists_every_flag():
    out = zephyr("--help")
    assert out.returncode == 0
    for flag in ("--backend", "--cluster", "--max-parallelism", "--memory", "--num-cpus",
                 "--num-gpus", "--retries", "--dry-run", "--entry-point"):  # fmt: skip
        assert flag in out.stdout


def test_flags_configure_flow_backend_and_overrides_inherit(script):
    out = zephyr("--backend", "sync", "--max-parallelism", "8", "--memory", "2GB", "--num-cpus",
                 "2", "--retries", "5", script, "--input", "x")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "backend SyncBackend 8 2000000000 2.0 5 inner 2 2000000000" in out.stdout
    assert "args ['--input', 'x']" in out.stdout
    assert "results [10, 20, 30]" in out.stdout


@pytest.mark.dask
def test_default_backend_is_dask_and_logs_the_dashboard(script):
    out = zephyr(script)
    assert out.returncode == 0, out.stderr
    assert "backend DaskBackend" in out.stdout
    assert "results [10, 20, 30]" in out.stdout
    assert "Dask dashboard: http://127.0.0.1:" in out.stderr
    assert re.search(r"\[r\d+ s2/2\] 'reshard': 2/2 shards", out.stderr)  # a summary a stage


def test_dry_run_prints_the_plan_and_runs_nothing(script):
    out = zephyr("--dry-run", script)
    assert out.returncode == 0, out.stderr
    assert "stage 0: map" in out.stdout and "stage 1: reshard" in out.stdout
    assert "results []" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--memory=lots"], "argument --memory: invalid memory size 'lots'"),
        (["--memory", "8"], "has no unit"),
        (["--max-parallelism", "0"], "argument --max-parallelism: expected an integer >= 1"),
        (["--backend", "ray"], "argument --backend: invalid choice: 'ray'"),
        (["--retries", "-1"], "argument --retries: expected an integer >= 0"),
    ],
)
def test_bad_flag_values_give_one_line_and_exit_2(script, args, message):
    out = zephyr(*args, script)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zephyr: error:"), out.stderr
    assert message in lines[0]


def test_missing_script_and_missing_entry_point(script):
    out = zephyr("no_such_script.py")
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = zephyr("--backend", "sync", "--entry-point", "run", script)
    assert out.returncode == 2 and "has no function 'run'" in out.stderr


@pytest.mark.timeout(30)
def test_unreachable_cluster_fails_fast_naming_the_address(script):
    out = zephyr("--cluster", "tcp://127.0.0.1:1", script)
    assert out.returncode == 1
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1' within 5 s" in out.stderr


def test_user_error_exits_1_with_the_stage_and_shard(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "from zephyr import Dataset, flow_backend\n"
        "def main():\n"
        "    list(flow_backend().execute(Dataset.from_list(['a']).map(int)))\n"
    )
    out = zephyr("--backend", "sync", str(path))
    assert out.returncode == 1
    assert (
        "zephyr: error: stage 'map' shard 0 (input 'a'): map(int) raised ValueError" in out.stderr
    )


def test_dry_run_covers_backends_derived_with_overrides(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "job.py"
    path.write_text(
        "from zephyr import Dataset, flow_backend\n"
        "def touch(x):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    return x\n"
        "def main():\n"
        "    inner = flow_backend(max_parallelism=2)\n"
        "    print('results', list(inner.execute(Dataset.from_list([1, 2]).map(touch))))\n"
    )
    out = zephyr("--dry-run", str(path))
    assert out.returncode == 0, out.stderr
    assert "stage 0: map" in out.stdout and "results []" in out.stdout
    assert not marker.exists(), "a dry run executed a pipeline"
