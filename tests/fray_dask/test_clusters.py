"""Jobs on both clusters (subprocess LocalCluster and DaskCluster on the embedded LocalCluster):
replicas, environments, secrets, failures and retries, terminate, logs and waiting."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from fray_dask import (
    Entrypoint,
    JobFailedError,
    JobRequest,
    JobStatus,
    ResourceConfig,
    create_environment,
)
from tests.fray_dask import jobs
from tests.processes import pid_alive, wait_for_file

pytestmark = pytest.mark.dask


def request(name, fn, *args, **kwargs) -> JobRequest:
    return JobRequest(name=name, entrypoint=Entrypoint.from_callable(fn, args), **kwargs)


def test_replicas_see_their_ids_and_logs_carry_replica_prefixes(cluster):
    job = cluster.launch(
        request(
            "ids",
            jobs.report_env,
            "FRAY_REPLICA_ID",
            "FRAY_REPLICA_COUNT",
            "FRAY_CLUSTER_SPEC",
            resources=ResourceConfig(replicas=2),
        )
    )
    info = cluster.wait(job)
    assert info.status is JobStatus.SUCCEEDED
    assert [t.status for t in info.tasks] == [JobStatus.SUCCEEDED] * 2
    logs = cluster.logs(job)
    for replica in (0, 1):
        assert f"[replica-{replica}] FRAY_REPLICA_ID={replica}" in logs
        assert f"[replica-{replica}] FRAY_REPLICA_COUNT=2" in logs
        assert f"[replica-{replica}] FRAY_CLUSTER_SPEC={cluster.spec}" in logs
    assert job in [i.job_id for i in cluster.list_jobs()]


def test_env_vars_apply_to_their_job_only(cluster):
    env = create_environment(env_vars={"FRAY_TEST_COLOUR": "teal"})
    with_env = cluster.launch(request("env", jobs.report_env, "FRAY_TEST_COLOUR", environment=env))
    without = cluster.launch(request("no-env", jobs.report_env, "FRAY_TEST_COLOUR"))
    cluster.wait([with_env, without], raise_on_failure=True)
    assert "[replica-0] FRAY_TEST_COLOUR=teal" in cluster.logs(with_env)
    assert "[replica-0] FRAY_TEST_COLOUR=<unset>" in cluster.logs(without)
    assert "FRAY_TEST_COLOUR" not in os.environ


def test_secrets_reach_the_job_but_never_its_info_logs_or_reprs(cluster, tmp_path):
    secret = "hf_s3cr3t_value_42"
    env = create_environment(env_vars={"HF_TOKEN": secret, "WANDB_API_KEY": "wandb-key-99"})
    received = str(tmp_path / "received")
    ok = cluster.launch(request("secret-ok", jobs.write_env, received, "HF_TOKEN", environment=env))
    leaky = cluster.launch(request("secret-leak", jobs.leak_secret, "HF_TOKEN", environment=env))
    infos = cluster.wait([ok, leaky])
    assert wait_for_file(received) == secret  # the job got the real value
    assert infos[1].status is JobStatus.FAILED
    shown = "\n".join(cluster.logs(leaky)) + repr(infos) + repr(cluster.list_jobs())
    shown += repr(request("r", jobs.leak_secret, "HF_TOKEN", environment=env))
    with pytest.raises(JobFailedError) as failure:
        cluster.wait(leaky, raise_on_failure=True)
    shown += str(failure.value)
    assert secret not in shown and "wandb-key-99" not in shown
    assert "my token is ***" in shown and "auth failed with ***" in infos[1].error_message


def test_a_failing_job_carries_its_error_and_retries_up_to_its_budget(cluster, tmp_path):
    counter = str(tmp_path / "attempts")
    job = cluster.launch(request("fails", jobs.fail_times, counter, 99, max_retries_failure=2))
    info = cluster.wait(job)
    assert info.status is JobStatus.FAILED
    assert (info.tasks[0].attempts, info.tasks[0].failures) == (3, 3)
    assert "ValueError: boom (attempt 3)" in info.error_message
    with open(counter) as f:
        assert len(f.readlines()) == 3
    with pytest.raises(JobFailedError, match=r"boom \(attempt 3\)"):
        cluster.wait(job, raise_on_failure=True)


def test_a_retry_can_succeed(cluster, tmp_path):
    counter = str(tmp_path / "attempts")
    job = cluster.launch(request("flaky", jobs.fail_times, counter, 1, max_retries_failure=1))
    info = cluster.wait(job, raise_on_failure=True)
    assert info.status is JobStatus.SUCCEEDED and info.tasks[0].failures == 1
    assert info.error_message is None
    assert "[replica-0] succeeded on attempt 2" in cluster.logs(job)


def test_terminate_stops_every_replica_process_within_seconds(cluster, tmp_path):
    job = cluster.launch(
        request(
            "sleeper", jobs.sleep_with_pid, str(tmp_path), 300, resources=ResourceConfig(replicas=2)
        )
    )
    pids = [int(wait_for_file(str(tmp_path / f"pid-{i}"))) for i in (0, 1)]
    assert all(pid_alive(p) for p in pids)
    assert cluster.poll(job).status is JobStatus.RUNNING
    started = time.monotonic()
    cluster.terminate(job)
    info = cluster.wait(job, timeout=10)
    assert info.status is JobStatus.STOPPED
    assert [t.status for t in info.tasks] == [JobStatus.STOPPED] * 2
    deadline = started + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)
    with pytest.raises(JobFailedError, match="stopped"):
        cluster.wait(job, raise_on_failure=True)
    cluster.terminate(job)  # terminating a finished job does nothing


def test_binary_entrypoints_run_with_their_args_and_exit_codes(cluster):
    ok = cluster.launch(
        JobRequest(
            name="echo",
            entrypoint=Entrypoint.from_binary(
                "python", ["-c", "import sys; print(sys.argv)", "a b"]
            ),
        )
    )
    bad = cluster.launch(
        JobRequest(
            name="exit3",
            entrypoint=Entrypoint(binary="python -c 'print(\"dying\"); raise SystemExit(3)'"),
        )
    )
    missing = cluster.launch(
        JobRequest(name="missing", entrypoint=Entrypoint(binary="no-such-program-xyz"))
    )
    infos = cluster.wait([ok, bad, missing])
    assert [i.status for i in infos] == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.FAILED]
    assert "[replica-0] ['-c', 'a b']" in cluster.logs(ok)
    assert "exit code 3; last output: dying" in infos[1].error_message
    assert "cannot start 'no-such-program-xyz'" in infos[2].error_message


def test_monitor_streams_lines_while_the_job_runs(cluster):
    job = cluster.launch(request("chatty", jobs.print_burst_then_pause, 2.0))
    arrivals: list[tuple[float, str]] = []
    info = cluster.monitor(job, on_line=lambda line: arrivals.append((time.monotonic(), line)))
    finished = time.monotonic()
    assert info.status is JobStatus.SUCCEEDED
    lines = [line for _, line in arrivals]
    assert lines[:3] == [f"[replica-0] line {i}" for i in range(3)]
    # The second line of a burst is not held back until the job prints again or ends.
    assert arrivals[1][0] < finished - 1.0
    # Output without a newline still arrives, cut into 64 KiB pieces.
    assert "".join(line.removeprefix("[replica-0] ") for line in lines[3:]) == "x" * 100_000


def test_wait_takes_lists_and_a_deadline(cluster, tmp_path):
    quick = cluster.launch(request("quick", jobs.square, 3))
    slow = cluster.launch(request("slow", jobs.sleep_with_pid, str(tmp_path), 300))
    assert cluster.wait([quick])[0].status is JobStatus.SUCCEEDED
    with pytest.raises(TimeoutError, match=rf"jobs still running after 0.2 s: {slow}"):
        cluster.wait([quick, slow], timeout=0.2)
    cluster.terminate(slow)
    assert cluster.wait(slow, timeout=10).status is JobStatus.STOPPED


def test_an_unpicklable_entrypoint_fails_at_launch(cluster):
    lock = threading.Lock()
    with pytest.raises(ValueError, match="cannot be pickled"):
        cluster.launch(request("lock", jobs.square, lock))


def test_unknown_job_ids_are_a_clear_error(cluster):
    with pytest.raises(KeyError, match="no job 'nope' on this cluster"):
        cluster.poll("nope")


def test_jobs_get_pip_packages_from_a_cached_isolated_virtualenv(cluster, tmp_path):
    from tests.fray_dask.test_venv import make_wheel

    wheel = make_wheel(tmp_path, "fray_job_only_pkg", "1.0", "VERSION = 'from-the-venv'\n")
    env = create_environment(
        pip_packages=[wheel], env_vars={"FRAY_VENV_CACHE": str(tmp_path / "venvs")}
    )
    outs = [str(tmp_path / f"out-{i}") for i in range(2)]
    first = cluster.launch(
        request("pkg", jobs.use_package, "fray_job_only_pkg", outs[0], environment=env)
    )
    cluster.wait(first, raise_on_failure=True)
    second = cluster.launch(
        request("pkg", jobs.use_package, "fray_job_only_pkg", outs[1], environment=env)
    )
    cluster.wait(second, raise_on_failure=True)
    assert [wait_for_file(o) for o in outs] == ["from-the-venv"] * 2
    assert len(os.listdir(tmp_path / "venvs")) == 2  # one venv (and its lock file), built once
    with pytest.raises(ImportError):
        __import__("fray_job_only_pkg")


def test_workspace_is_the_jobs_working_directory(cluster, tmp_path):
    here = cluster.launch(
        JobRequest(
            name="pwd",
            entrypoint=Entrypoint.from_binary("python", ["-c", "import os; print(os.getcwd())"]),
            environment=create_environment(workspace=str(tmp_path)),
        )
    )
    missing = cluster.launch(
        request("nowhere", jobs.square, 2, environment=create_environment(workspace="/no/such/dir"))
    )
    infos = cluster.wait([here, missing])
    assert cluster.logs(here) == [f"[replica-0] {tmp_path}"]
    assert "workspace '/no/such/dir' is not a directory" in infos[1].error_message


@pytest.mark.parametrize("kind", ["local", "dask"])
def test_unknown_extras_are_refused_and_ignored_fields_are_reported(kind, caplog, dask_backend):
    from fray_dask import DaskCluster, LocalCluster

    with LocalCluster() if kind == "local" else DaskCluster() as cluster:
        with pytest.raises(ValueError, match="zephyr-dask has no extra 'gpu'; its extras are dev"):
            cluster.launch(
                request("extras", jobs.square, 2, environment=create_environment(extras=["gpu"]))
            )
        image = create_environment(docker_image="us-docker.pkg.dev/proj/img:1")
        with caplog.at_level("WARNING", logger="fray_dask"):
            for _ in range(2):
                cluster.wait(cluster.launch(request("img", jobs.square, 2, environment=image)))
    warnings = [r.getMessage() for r in caplog.records if "docker_image" in r.getMessage()]
    assert len(warnings) == 1  # once per cluster, not per job
    assert warnings[0].startswith(f"{type(cluster).__name__} ignores docker_image (job 'img')")


def test_secrets_a_job_inherits_from_its_parent_are_masked_too(monkeypatch, tmp_path):
    from fray_dask import LocalCluster

    monkeypatch.setenv("GITHUB_TOKEN", "ghp_inherited_123")
    with LocalCluster() as cluster:
        job = cluster.launch(request("inherit", jobs.leak_secret, "GITHUB_TOKEN"))
        info = cluster.wait(job)
    assert "ghp_inherited_123" not in "\n".join(cluster.logs(job)) + repr(info)
    assert "[replica-0] my token is ***" in cluster.logs(job)


def test_a_job_ends_when_its_process_exits_and_takes_its_leftovers_along(cluster, tmp_path):
    """A process the job started and left running holds the output pipe open; the job still
    succeeds when its own process exits, and the leftover is stopped with it."""
    job = cluster.launch(request("leaves-a-child", jobs.spawn_grandchild, str(tmp_path)))
    info = cluster.wait(job, timeout=30)
    assert info.status is JobStatus.SUCCEEDED
    assert "[replica-0] started a grandchild and left" in cluster.logs(job)
    grandchild = int(wait_for_file(str(tmp_path / "grandchild")))
    deadline = time.monotonic() + 10
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(grandchild)


DRIVER = """
import sys, time
from fray_dask import Entrypoint, JobRequest, LocalCluster
cluster = LocalCluster()
script = "sleep 120 & echo $! > {folder}/pid.tmp; mv {folder}/pid.tmp {folder}/pid; wait"
cluster.launch(JobRequest(name="orphan", entrypoint=Entrypoint.from_binary("sh", ["-c", script])))
time.sleep(120)
"""


def test_a_binary_jobs_children_die_with_the_driver(tmp_path):
    """A driver killed with SIGKILL takes the binary job's whole process group with it: the
    shell's background `sleep` too, not only the shell."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(folder=tmp_path)])
    try:
        grandchild = int(wait_for_file(str(tmp_path / "pid")))
        assert pid_alive(grandchild)
    finally:
        driver.kill()
        driver.wait(timeout=10)
    deadline = time.monotonic() + 10
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(grandchild), "the binary job's child outlived its driver"


@pytest.mark.parametrize("spec", ["local", pytest.param("dask", marks=pytest.mark.dask)])
def test_a_function_from_a_module_beside_the_driver_script_runs_in_a_job(spec, tmp_path):
    """`python experiments/run.py` whose job runs `helpers.shout` (experiments/helpers.py): the
    job's process imports `helpers` as the driver did, from the script's folder."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "helpers.py").write_text("def shout(text):\n    return text.upper()\n")
    (folder / "run.py").write_text(
        "from fray_dask import Entrypoint, JobRequest, current_cluster\n"
        "from helpers import shout\n"
        "cluster = current_cluster()\n"
        "job = cluster.launch(JobRequest('shout', Entrypoint.from_callable(shout, args=['hi'])))\n"
        "print(cluster.result(job, timeout=120))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAY_")}
    done = subprocess.run(
        [sys.executable, "experiments/run.py"],
        cwd=tmp_path,
        env={**env, "FRAY_CLUSTER_SPEC": spec},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "['HI']"
