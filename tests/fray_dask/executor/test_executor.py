"""The executor end to end on real clusters: the subprocess LocalCluster (`FRAY_CLUSTER_SPEC=local`)
and the embedded Dask cluster. Steps are real jobs writing real files; each step records every
start in a calls file, so "ran once" is counted, not inferred."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fray_dask import LocalCluster
from fray_dask.executor import (
    DEP_FAILED,
    FAILED,
    RUNNING,
    SUCCESS,
    Executor,
    ExecutorStep,
    InputName,
    PreviousTaskFailedError,
    StepsFailedError,
    output_path_of,
    read_status,
    this_output_path,
    versioned,
)
from fray_dask.executor.status import StepLease
from tests.fray_dask.executor import dag_steps
from tests.fray_dask.executor.dag_steps import calls_of, four_steps

NAMES = ["raw/download", "clean", "dedup", "count"]
CALL_NAMES = ["download", "clean", "dedup", "count"]


@pytest.fixture
def local_cluster():
    cluster = LocalCluster()
    yield cluster
    cluster.close()


def _tokens(output_path: str) -> int:
    with open(os.path.join(output_path, "count.json")) as f:
        return json.load(f)["tokens"]


def _actions(outcomes) -> dict[str, str]:
    return {o.name: o.action for o in outcomes}


@pytest.mark.parametrize("cluster", ["local", pytest.param("dask", marks=pytest.mark.dask)])
def test_a_dag_runs_once_then_nothing_then_only_what_a_changed_value_touches(
    tmp_path, cluster, request
):
    """download -> clean (zephyr) -> dedup (zephyr) -> count: the first run runs each step once;
    the second runs nothing; raising `min_words` reruns clean and what follows at new paths,
    leaving download and the old outputs where they were."""
    on = (
        request.getfixturevalue("fray_dask_cluster")
        if cluster == "dask"
        else request.getfixturevalue("local_cluster")
    )
    prefix, calls = str(tmp_path / "out"), str(tmp_path / "calls")
    first = Executor(prefix, cluster=on).run(four_steps(calls))
    assert _actions(first) == dict.fromkeys(NAMES, "ran")
    assert [calls_of(calls, n) for n in CALL_NAMES] == [1, 1, 1, 1]
    paths = {o.name: o.output_path for o in first}
    assert all(read_status(p) == SUCCESS for p in paths.values())
    # 3 distinct texts of >= 2 words after lowercasing and whitespace: 4 + 5 + 7 tokens
    assert _tokens(paths["count"]) == 16

    again = Executor(prefix, cluster=on).run(four_steps(calls))
    assert _actions(again) == dict.fromkeys(NAMES, "skipped")
    assert [o.output_path for o in again] == [o.output_path for o in first]
    assert [calls_of(calls, n) for n in CALL_NAMES] == [1, 1, 1, 1]

    changed = Executor(prefix, cluster=on).run(four_steps(calls, min_words=5))
    assert _actions(changed) == {
        "raw/download": "skipped",
        "clean": "ran",
        "dedup": "ran",
        "count": "ran",
    }
    assert [calls_of(calls, n) for n in CALL_NAMES] == [1, 2, 2, 2]
    new_paths = {o.name: o.output_path for o in changed}
    assert new_paths["raw/download"] == paths["raw/download"]
    for name in ("clean", "dedup", "count"):
        assert new_paths[name] != paths[name]
        assert new_paths[name].startswith(f"{prefix}/{name}-")
        assert read_status(paths[name]) == SUCCESS  # the old outputs stay
    assert _tokens(new_paths["count"]) == 5 + 7
    assert _tokens(paths["count"]) == 16


def test_each_step_writes_its_info_and_the_run_writes_one_json(tmp_path, local_cluster):
    prefix, calls = str(tmp_path / "out"), str(tmp_path / "calls")
    executor = Executor(prefix, cluster=local_cluster, description="four steps")
    outcomes = executor.run(four_steps(calls))
    clean_path = outcomes[1].output_path
    with open(os.path.join(clean_path, ".executor_info")) as f:
        info = json.load(f)
    assert info["name"] == "clean"
    assert info["fn_name"].endswith("dag_steps.clean")
    assert info["version"]["config"] == {"input_path": "DEP[0]", "min_words": 2}
    assert info["version"]["dependencies"] == [outcomes[0].output_path]
    assert clean_path.endswith("-" + info["version_hash"])
    assert info["config"]["input_path"] == outcomes[0].output_path
    assert info["config"]["output_path"] == clean_path
    assert info["dependencies"] == [outcomes[0].output_path]
    assert info["status"] == SUCCESS
    assert info["started"] <= info["ended"]
    assert executor.run_file.startswith(f"{prefix}/experiments/")
    with open(executor.run_file) as f:
        run = json.load(f)
    assert run["status"] == "succeeded"
    assert run["description"] == "four steps"
    assert [(s["name"], s["action"], s["output_path"]) for s in run["steps"]] == [
        (o.name, "ran", o.output_path) for o in outcomes
    ]


def test_a_failing_step_fails_its_dependants_while_independent_steps_finish(
    tmp_path, local_cluster, capsys
):
    prefix, calls = str(tmp_path / "out"), str(tmp_path / "calls")
    raw, cleaned, unique, counted = four_steps(calls, fail_count=True)
    after = ExecutorStep("report", dag_steps.count, dag_steps.CountConfig(counted, calls))
    side = ExecutorStep(
        "side", dag_steps.count, dag_steps.CountConfig(output_path_of(cleaned), calls)
    )
    executor = Executor(prefix, cluster=local_cluster)
    with pytest.raises(StepsFailedError) as caught:
        executor.run([after, side])
    error = caught.value
    count_path = executor.output_path_of(counted)
    assert [f.name for f in error.failures] == ["count"]
    assert f"count at {count_path}" in str(error)
    assert "ValueError: count refuses to count" in str(error)
    assert error.dep_failed == ["report"]
    assert isinstance(error.__cause__, ValueError)  # the job's own exception
    assert read_status(count_path) == FAILED
    assert read_status(executor.output_path_of(after)) == DEP_FAILED
    assert read_status(executor.output_path_of(side)) == SUCCESS
    assert calls_of(calls, "count") == 2  # count, and side (the same function)
    # Each job's lines reach the driver's stdout, named by step.
    printed = capsys.readouterr().out
    assert f"[count] [replica-0] counting {executor.output_path_of(unique)}" in printed
    assert "[count] [replica-0] ValueError: count refuses" in printed

    # Without force_run_failed, nothing runs and the error names the failed steps.
    with pytest.raises(PreviousTaskFailedError, match=r"count \(FAILED at .*report \(DEP_FAILED"):
        Executor(prefix, cluster=local_cluster).run([after, side], force_run_failed=False)
    assert calls_of(calls, "count") == 2

    # Fixed (fail is not versioned: same paths), the default run reruns exactly the failed steps.
    fixed = four_steps(calls)[3]
    after = ExecutorStep("report", dag_steps.count, dag_steps.CountConfig(fixed, calls))
    outcomes = Executor(prefix, cluster=local_cluster).run([after, side])
    assert _actions(outcomes) == {
        "raw/download": "skipped",
        "clean": "skipped",
        "dedup": "skipped",
        "count": "ran",
        "report": "ran",
        "side": "skipped",
    }


def test_a_step_that_cannot_start_fails_with_the_launch_error(tmp_path, local_cluster):
    from fray_dask import ResourceConfig

    step = ExecutorStep(
        "huge",
        dag_steps.count,
        dag_steps.CountConfig("x", str(tmp_path / "calls")),
        resources=ResourceConfig(cpu=10_000),
    )
    executor = Executor(str(tmp_path / "out"), cluster=local_cluster)
    with pytest.raises(StepsFailedError, match=r"huge at .*huge-\w{6}"):
        executor.run([step])
    assert read_status(executor.output_path_of(step)) == FAILED


def test_dry_run_runs_nothing_and_writes_nothing(tmp_path, local_cluster, capsys):
    prefix, calls = tmp_path / "out", str(tmp_path / "calls")
    outcomes = Executor(str(prefix), cluster=local_cluster).run(four_steps(calls), dry_run=True)
    assert [o.action for o in outcomes] == ["run"] * 4
    assert not prefix.exists() and not os.path.exists(calls)
    printed = capsys.readouterr().out
    for o in outcomes:
        assert f"run  {o.name} -> {o.output_path}" in printed

    Executor(str(prefix), cluster=local_cluster).run(four_steps(calls)[:2])
    # Another driver holds dedup's lease: the dry run says it would wait.
    executor = Executor(str(prefix), cluster=local_cluster)
    executor.run(four_steps(calls), dry_run=True)  # to learn the paths
    dedup_path = executor.output_path_of(executor.graph.order[2].step)
    assert StepLease(dedup_path, "someone-else", 60).try_acquire()
    before = sorted(p.relative_to(prefix) for p in prefix.rglob("*"))
    outcomes = executor.run(four_steps(calls), dry_run=True)
    assert [o.action for o in outcomes] == ["skip", "skip", "wait", "run"]
    assert sorted(p.relative_to(prefix) for p in prefix.rglob("*")) == before
    assert "wait dedup" in capsys.readouterr().out


def test_run_only_runs_the_matches_and_the_dependencies_they_still_need(tmp_path, local_cluster):
    prefix, calls = str(tmp_path / "out"), str(tmp_path / "calls")
    executor = Executor(prefix, cluster=local_cluster)
    outcomes = executor.run(four_steps(calls, min_words=3), run_only=["^dedup$"])
    assert _actions(outcomes) == {"raw/download": "ran", "clean": "ran", "dedup": "ran"}
    # download succeeded: a new min_words needs clean again, but not download
    outcomes = executor.run(four_steps(calls, min_words=4), run_only=["dedup"])
    assert _actions(outcomes) == {"clean": "ran", "dedup": "ran"}
    assert calls_of(calls, "download") == 1
    with pytest.raises(ValueError, match=r"\['tokenize'\] match no step; the steps are: clean"):
        executor.run(four_steps(calls), run_only=["tokenize"])


def test_max_concurrent_bounds_the_steps_running_at_once(tmp_path, local_cluster):
    """Six independent steps that each hold their job for a while; with max_concurrent=2 no
    moment has more than two of them inside their function (spans recorded by the jobs)."""
    spans = tmp_path / "spans"
    steps = [
        ExecutorStep(f"s{i}", dag_steps.hold, dag_steps.HoldConfig(str(spans), versioned(i)))
        for i in range(6)
    ]
    Executor(str(tmp_path / "out"), cluster=local_cluster).run(steps, max_concurrent=2)
    intervals = [tuple(map(float, p.read_text().split())) for p in spans.iterdir()]
    assert len(intervals) == 6
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_a_driver_that_lost_its_lease_stops_its_job_and_never_writes_success(
    tmp_path, local_cluster
):
    """The lease of a running step is taken over (its heartbeat looked stale to another driver):
    the first driver's next heartbeat finds out, stops its job, and reports the step failed
    without writing a status; the status stays the one the new holder owns."""
    prefix, calls, gate = str(tmp_path / "out"), str(tmp_path / "calls"), tmp_path / "gate"
    gate.write_text("")
    steps = four_steps(calls, gate=str(gate))
    executor = Executor(prefix, cluster=local_cluster, heartbeat_interval=0.1, stale_after=5)
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            executor.run(steps)
        except BaseException as e:  # noqa: BLE001 - checked below
            errors.append(e)

    driver = threading.Thread(target=drive)
    driver.start()
    dag_steps.wait_until(lambda: calls_of(calls, "download") == 1)
    download_path = executor.output_path_of(steps[0])
    assert StepLease(download_path, "intruder", stale_after=1e-9).try_acquire()
    driver.join(timeout=60)
    gate.unlink()
    assert not driver.is_alive()
    (error,) = errors
    assert isinstance(error, StepsFailedError)
    assert "another driver took the step over" in str(error)
    assert read_status(download_path) == RUNNING
    assert StepLease(download_path, "intruder", 5).current().holder == "intruder"
    assert not os.path.exists(os.path.join(download_path, "part-1.jsonl"))


def test_steps_with_the_same_version_run_once_and_paths_follow_the_version(tmp_path):
    calls = str(tmp_path / "calls")
    a = ExecutorStep("gen", dag_steps.count, dag_steps.CountConfig("in", calls))
    b = ExecutorStep("gen", dag_steps.count, dag_steps.CountConfig("in", calls))
    executor = Executor(str(tmp_path / "out"))
    outcomes = executor.run([a, b], dry_run=True)
    assert len(outcomes) == 1
    assert executor.output_path_of(a) == executor.output_path_of(b)


def test_the_config_reaching_the_function_has_real_paths(tmp_path, local_cluster):
    calls = str(tmp_path / "calls")
    raw = four_steps(calls)[0]
    probe = ExecutorStep(
        "probe",
        dag_steps.dump_config,
        {
            "whole": raw,
            "part": raw / "part-0.jsonl",
            "mine": this_output_path("x.json"),
            "fixed": InputName.hardcoded("data/raw"),
            "n": versioned(3),
        },
    )
    executor = Executor(str(tmp_path / "out"), cluster=local_cluster)
    executor.run([probe])
    out = executor.output_path_of(probe)
    with open(os.path.join(out, "x.json")) as f:
        seen = json.load(f)
    raw_path = executor.output_path_of(raw)
    assert seen == {
        "whole": raw_path,
        "part": f"{raw_path}/part-0.jsonl",
        "mine": f"{out}/x.json",
        "fixed": f"{tmp_path}/out/data/raw",
        "n": 3,
    }


def test_a_run_with_nothing_to_do_starts_no_cluster(tmp_path, local_cluster):
    """Every step succeeded before: the run decides so from the status files alone, without
    starting the embedded Dask cluster it would launch jobs on (FRAY_CLUSTER_SPEC unset)."""
    prefix, calls = str(tmp_path / "out"), str(tmp_path / "calls")
    Executor(prefix, cluster=local_cluster).run(four_steps(calls))
    code = (
        "from fray_dask.embedded import running_embedded\n"
        "from fray_dask.executor import Executor\n"
        "from tests.fray_dask.executor.dag_steps import four_steps\n"
        f"outcomes = Executor({prefix!r}).run(four_steps({calls!r}))\n"
        "print([o.action for o in outcomes], running_embedded())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAY_")}
    root = str(Path(__file__).resolve().parents[3])
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": root},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['skipped', 'skipped', 'skipped', 'skipped'] None"
