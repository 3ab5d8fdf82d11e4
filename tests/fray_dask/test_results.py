"""Cluster.result on both clusters (subprocess LocalCluster and DaskCluster on the embedded
LocalCluster): each replica's return value, the job's own exception, stopped and command jobs,
the deadline, and values larger than a Dask event carries."""

from __future__ import annotations

import pytest

from fray_dask import (
    Entrypoint,
    JobFailedError,
    JobRequest,
    RemoteTraceback,
    ResourceConfig,
    create_environment,
)
from tests.fray_dask import jobs
from tests.processes import wait_for_file

pytestmark = pytest.mark.dask


def request(name, fn, *args, **kwargs) -> JobRequest:
    return JobRequest(name=name, entrypoint=Entrypoint.from_callable(fn, args), **kwargs)


def test_result_is_each_replicas_return_value_and_stays_available(cluster):
    job = cluster.launch(
        request("values", jobs.replica_identity, "t", resources=ResourceConfig(replicas=2))
    )
    values = cluster.result(job, timeout=60)
    assert [v["replica"] for v in values] == ["0", "1"]
    assert [v["tag"] for v in values] == ["t", "t"]
    assert cluster.result(job) == values  # the job has ended; its values are still there


def test_a_retried_job_returns_the_value_of_its_last_run(cluster, tmp_path):
    counter = str(tmp_path / "attempts")
    job = cluster.launch(request("retried", jobs.fail_times, counter, 1, max_retries_failure=1))
    assert cluster.result(job, timeout=60) == ["ok"]


def test_a_failed_job_raises_its_own_exception_with_the_jobs_traceback(cluster):
    job = cluster.launch(request("lesson", jobs.fail_with_lesson_error, "algebra"))
    with pytest.raises(jobs.LessonError, match="no such lesson: algebra") as failure:
        cluster.result(job, timeout=60)
    cause = failure.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail_with_lesson_error" in str(cause)  # the frame inside the job's process
    assert any(job in note and "replica 0" in note for note in failure.value.__notes__)


def test_an_exception_carrying_a_secret_comes_back_masked(cluster):
    env = create_environment(env_vars={"HF_TOKEN": "hf_result_secret_77"})
    job = cluster.launch(request("leaky", jobs.leak_secret, "HF_TOKEN", environment=env))
    with pytest.raises(JobFailedError, match=r"RuntimeError: auth failed with \*\*\*") as failure:
        cluster.result(job, timeout=60)
    shown = str(failure.value) + str(failure.value.__cause__)
    assert "auth failed with ***" in str(failure.value.__cause__)
    assert "hf_result_secret_77" not in shown


def test_a_stopped_job_raises_job_failed_and_a_deadline_names_the_job(cluster, tmp_path):
    job = cluster.launch(request("sleeper", jobs.sleep_with_pid, str(tmp_path), 300))
    wait_for_file(str(tmp_path / "pid-0"))
    with pytest.raises(TimeoutError, match=rf"job {job} is still running after 0.2 s"):
        cluster.result(job, timeout=0.2)
    cluster.terminate(job)
    with pytest.raises(JobFailedError, match=rf"job {job} \(sleeper\) stopped"):
        cluster.result(job, timeout=60)


def test_a_command_job_has_no_return_value(cluster):
    job = cluster.launch(JobRequest(name="cmd", entrypoint=Entrypoint.from_binary("true", [])))
    with pytest.raises(ValueError, match="ran the command 'true', which has no return value"):
        cluster.result(job)
    cluster.wait(job, timeout=60)


def test_a_large_value_arrives_whole(cluster):
    """Above RESULT_EVENT_BYTES a DaskCluster fetches the value from the task, not the event."""
    job = cluster.launch(request("big", jobs.big_value, 256 * 1024))
    assert cluster.result(job, timeout=60) == [jobs.big_value(256 * 1024)]
