"""The `zephyr` command, run as a real subprocess: flags reach flow_backend(), --dry-run prints
plans, bad values fail with one line and exit code 2, and an unreachable cluster fails fast."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import zephyr as zephyr_package

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import sys
    import psutil
    from zephyr import Dataset, flow_backend

    def tens(x):  # a function of the script: travels to Dask workers by value
        return x * 10

    if __name__ == "__main__":
        backend = flow_backend()
        inner = flow_backend(max_parallelism=2)
        assert flow_backend() is backend
        cfg = backend.config
        print("backend", type(backend).__name__, cfg.max_parallelism, cfg.memory, cfg.num_cpus,
              cfg.max_retries, "inner", inner.config.max_parallelism, inner.config.memory)
        print("scratch", cfg.scratch, inner.config.scratch)
        print("args", sys.argv[1:])
        ds = Dataset.from_list([1, 2, 3]).map(tens).reshard(2)
        print("results", list(backend.execute(ds)))
        print("child processes", len(psutil.Process().children(recursive=True)))
    """
)


def zephyr(*args: str, timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}  # this checkout's zephyr, also from another cwd
    return subprocess.run(
        [sys.executable, "-m", "zephyr.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def write(tmp_path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(SCRIPT)
    return str(path)


def test_help_lists_every_flag():
    out = zephyr("--help")
    assert out.returncode == 0
    for flag in ("--backend", "--cluster", "--max-parallelism", "--memory", "--num-cpus",
                 "--num-gpus", "--retries", "--scratch", "--dry-run", "--entry-point"):  # fmt: skip
        assert flag in out.stdout


def test_flags_configure_flow_backend_and_overrides_inherit(script):
    out = zephyr("--backend", "sync", "--max-parallelism", "8", "--memory", "2GB", "--num-cpus",
                 "2", "--retries", "5", "--scratch", "/tmp/s", script, "--input", "x")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "backend SyncBackend 8 2000000000 2.0 5 inner 2 2000000000" in out.stdout
    assert "scratch /tmp/s /tmp/s" in out.stdout
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
    assert "child processes 0" not in out.stdout  # the embedded cluster's workers


def test_dry_run_prints_the_plan_and_runs_nothing(script):
    out = zephyr("--dry-run", script)
    assert out.returncode == 0, out.stderr
    assert "stage 1: map" in out.stdout and "stage 2: reshard" in out.stdout
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
        "if __name__ == '__main__':\n"
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
        "if __name__ == '__main__':\n"
        "    inner = flow_backend(max_parallelism=2)\n"
        "    print('results', list(inner.execute(Dataset.from_list([1, 2]).map(touch))))\n"
    )
    out = zephyr("--dry-run", str(path))
    assert out.returncode == 0, out.stderr
    assert "stage 1: map" in out.stdout and "results []" in out.stdout
    assert not marker.exists(), "a dry run executed a pipeline"


def test_guarded_script_runs_as_main_with_argv_and_writes_its_output(tmp_path):
    out_dir = tmp_path / "out"
    path = write(
        tmp_path,
        "guarded.py",
        """
        import sys
        from zephyr import Dataset, flow_backend

        def double(x):
            return 2 * x

        if __name__ == "__main__":
            print("argv", sys.argv, "file", __file__)
            out = sys.argv[sys.argv.index("--out") + 1]
            ds = Dataset.from_list([1, 2, 3]).map(double).write_jsonl(out + "/{shard}.jsonl")
            print("wrote", len(list(flow_backend().execute(ds))))
        """,
    )
    out = zephyr("--backend", "sync", "guarded.py", "--out", str(out_dir), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert f"argv ['guarded.py', '--out', '{out_dir}'] file {path}" in out.stdout
    assert "wrote 3" in out.stdout
    rows = [json.loads(line) for i in range(3) for line in (out_dir / f"{i}.jsonl").open()]
    assert rows == [2, 4, 6]


def test_dry_run_prints_every_plan_writes_nothing_and_starts_no_cluster(tmp_path):
    out_dir = tmp_path / "out"
    path = write(
        tmp_path,
        "two.py",
        f"""
        import psutil
        from zephyr import Dataset, flow_backend

        OUT = {str(out_dir)!r}
        if __name__ == "__main__":
            words = Dataset.from_list(["a", "bb"]).map(len).write_jsonl(OUT + "/{{shard}}.jsonl")
            print("first", list(flow_backend().execute(words)))
            evens = Dataset.from_list(range(4)).filter(lambda x: x % 2 == 0).reshard(1)
            print("second", list(flow_backend().execute(evens)))
            print("child processes", len(psutil.Process().children(recursive=True)))
        """,
    )
    out = zephyr("--dry-run", path)  # the default backend: Dask on an embedded cluster
    assert out.returncode == 0, out.stderr
    assert "stage 1: map -> write_jsonl" in out.stdout
    assert "stage 1: filter" in out.stdout and "stage 2: reshard" in out.stdout
    assert "first []" in out.stdout and "second []" in out.stdout
    assert "child processes 0" in out.stdout  # no LocalCluster worker was started
    assert "Dask dashboard" not in out.stderr
    assert not out_dir.exists()


def test_help_says_dry_run_still_runs_the_scripts_own_code():
    out = zephyr("--help")
    assert "own code outside pipelines still runs" in " ".join(out.stdout.split())


@pytest.mark.parametrize("code, status", [("sys.exit(3)", 3), ("sys.exit('bye')", 1)])
def test_exit_status_is_what_python_gives(tmp_path, code, status):
    path = write(tmp_path, "ex.py", f"import sys\nif __name__ == '__main__':\n    {code}\n")
    out = zephyr("--backend", "sync", path)
    assert out.returncode == status
    assert out.stderr == ("bye\n" if status == 1 else "")


def test_uncaught_exception_prints_the_scripts_traceback_and_exits_1(tmp_path):
    path = write(
        tmp_path,
        "boom.py",
        """
        def explode():
            raise KeyError("boom")

        if __name__ == "__main__":
            explode()
        """,
    )
    out = zephyr("--backend", "sync", path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == f'  File "{path}", line 6, in <module>'  # no frame of zephyr/cli.py
    assert lines[-1] == "KeyError: 'boom'"


MAIN_AND_GUARD = """
    def main():
        print("main ran as", __name__)

    if __name__ == "__main__":
        main()
    """


def test_main_with_a_guard_runs_once(tmp_path):
    path = write(tmp_path, "both.py", MAIN_AND_GUARD)
    out = zephyr("--backend", "sync", path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["main ran as __main__"]
    # --entry-point runs the module body not as __main__, then calls the function: once too.
    out = zephyr("--backend", "sync", "--entry-point", "main", path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["main ran as __zephyr_script__"]


def test_main_never_called_runs_nothing_and_says_so(tmp_path):
    path = write(tmp_path, "lonely.py", "def main():\n    print('main ran')\n")
    out = zephyr("--backend", "sync", path)
    assert out.returncode == 0
    assert out.stdout == ""  # as `python lonely.py`
    assert "lonely.py defines main() but never calls it" in out.stderr
    assert "--entry-point main" in out.stderr


def test_package_docstring_example_runs(tmp_path):
    doc = zephyr_package.__doc__
    code = textwrap.dedent(doc[doc.index("Example") :].split("\n", 1)[1])
    (tmp_path / "example.py").write_text(code)
    out = zephyr("--backend", "sync", "example.py", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['clean/00000.jsonl.gz']"
    with gzip.open(tmp_path / "clean" / "00000.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    assert len(docs) == 1 and docs[0]["text"].startswith("a long document")


@pytest.mark.parametrize(
    "asks, what",
    [
        ("flow_backend().client", "the embedded Dask cluster"),
        ("DaskBackend('tcp://127.0.0.1:1').client", "the Dask cluster 'tcp://127.0.0.1:1'"),
        ("DaskCluster()", "the embedded Dask cluster"),
    ],
    ids=["embedded", "address", "fray-job-cluster"],
)
def test_dry_run_refuses_code_outside_pipelines_that_asks_for_a_cluster(tmp_path, asks, what):
    path = write(
        tmp_path,
        "asks.py",
        f"""
        from fray_dask import DaskCluster
        from zephyr import DaskBackend, flow_backend
        if __name__ == "__main__":
            print("skipped in a dry run:", flow_backend().dry_run)
            {asks}
        """,
    )
    out = zephyr("--dry-run", path)
    assert out.returncode == 1, out.stderr
    assert "skipped in a dry run: True" in out.stdout
    assert f"zephyr --dry-run starts no cluster, but the script asked for {what}" in out.stderr
    assert "skip that code when flow_backend().dry_run is True" in out.stderr
