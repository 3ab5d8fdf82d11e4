"""tpu.job_poller.JobPoller, driven through GkeTpuCluster against tests/tpu/k8s_standin.py: pods
map to replicas, logs stream in order, preemptions and crashes are told apart and counted against
their budgets, Indexed Jobs and JobSets restart as gangs.
"""

from __future__ import annotations

import pytest

from fray_dask.types import Entrypoint, JobStatus
from tests.processes import wait_for
from tests.tpu.gke_helpers import finished, pods_of, request, train
from tpu.manifests import k8s_name

kubernetes = pytest.importorskip("kubernetes")

# -- running ----------------------------------------------------------------------------------


def test_job_succeeds_and_monitor_streams_its_log_in_order(gke, standin):
    job_id = gke.launch(request())
    [pod] = pods_of(standin, job_id, 1)
    standin.run(pod, ("step 1", "step 2"))
    wait_for(lambda: len(gke.logs(job_id)) == 2, what="lines streamed while the pod runs")
    assert gke.poll(job_id).status is JobStatus.RUNNING
    standin.succeed(pod, ("done",))
    lines: list[str] = []
    info = gke.monitor(job_id, on_line=lines.append, timeout=10)
    assert lines == ["[replica-0] step 1", "[replica-0] step 2", "[replica-0] done"]
    assert info.status is JobStatus.SUCCEEDED
    assert info.tasks[0].worker == pod and info.tasks[0].attempts == 1
    assert finished(gke, job_id).status is JobStatus.SUCCEEDED
    with pytest.raises(NotImplementedError, match="write its result to storage"):
        gke.result(job_id)  # a pod's return value never reaches this driver


def test_a_log_stream_cut_mid_way_is_reopened_without_losing_or_repeating_lines(gke, standin):
    job_id = gke.launch(request())
    [pod] = pods_of(standin, job_id, 1)
    standin.run(pod, ("one", "two"))
    wait_for(lambda: len(gke.logs(job_id)) == 2, what="the first lines")
    standin.drop_log_streams()
    standin.log(pod, "three")
    standin.succeed(pod, ("four",))
    assert finished(gke, job_id).status is JobStatus.SUCCEEDED
    assert gke.logs(job_id) == [f"[replica-0] {x}" for x in ("one", "two", "three", "four")]
    assert len(standin.requests_of("GET", f"/pods/{pod}/log")) == 2


def test_multi_host_pods_map_to_replicas_by_completion_index(gke, standin):
    job_id = gke.launch(request("v5litepod-16"))
    pods = pods_of(standin, job_id, 4)
    for pod in reversed(pods):
        index = standin.get("pods", pod)["metadata"]["annotations"][
            "batch.kubernetes.io/job-completion-index"
        ]
        standin.run(pod, (f"host {index} up",))
        standin.succeed(pod, (f"host {index} done",))
    info = gke.monitor(job_id, on_line=lambda line: None, timeout=10)
    assert info.status is JobStatus.SUCCEEDED
    logs = gke.logs(job_id)
    for i in range(4):
        assert [x for x in logs if x.startswith(f"[replica-{i}]")] == [
            f"[replica-{i}] host {i} up",
            f"[replica-{i}] host {i} done",
        ]
        assert info.tasks[i].worker == pods[i]


def test_preemption_and_crash_are_told_apart_and_kubernetes_replaces_the_pod(gke, standin):
    job_id = gke.launch(request(max_retries_failure=1))
    [first] = pods_of(standin, job_id, 1)
    standin.run(first, ("epoch 1",))
    standin.preempt(first)  # Failed with exit 143, but DisruptionTarget says preempted
    [second] = pods_of(standin, job_id, 1, exclude=[first])
    standin.run(second)
    standin.crash(second, 3, ("Traceback (most recent call last):", "ValueError: boom"))
    [third] = pods_of(standin, job_id, 1, exclude=[first, second])
    standin.run(third)
    wait_for(lambda: gke.poll(job_id).tasks[0].attempts == 3, what="the third pod seen running")
    standin.vanish(third)  # its node is gone: a preemption too
    [fourth] = pods_of(standin, job_id, 1, exclude=[first, second, third])
    standin.run(fourth)
    standin.succeed(fourth, ("ok",))
    info = finished(gke, job_id)
    assert info.status is JobStatus.SUCCEEDED
    task = info.tasks[0]
    assert (task.preemptions, task.failures, task.attempts) == (2, 1, 4)
    assert gke.logs(job_id) == [
        "[replica-0] epoch 1",
        "[replica-0] Traceback (most recent call last):",
        "[replica-0] ValueError: boom",
        "[replica-0] ok",
    ]


def test_a_crash_past_the_failure_budget_fails_the_job_naming_pod_exit_code_and_lines(gke, standin):
    job_id = gke.launch(request())
    [pod] = pods_of(standin, job_id, 1)
    standin.run(pod)
    standin.crash(pod, 3, ("loading", "ValueError: boom"))
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert (info.tasks[0].failures, info.tasks[0].preemptions) == (1, 0)
    assert pod in info.error_message and "exited with code 3" in info.error_message
    assert "ValueError: boom" in info.error_message


def test_preemptions_past_the_budget_delete_the_job(gke, standin):
    job_id = gke.launch(request(max_retries_preemption=1))
    seen: list[str] = []
    for _ in range(2):
        [pod] = pods_of(standin, job_id, 1, exclude=seen)
        seen.append(pod)
        standin.run(pod)
        standin.preempt(pod, reason="TerminationByKubelet")
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert info.tasks[0].preemptions == 2 and info.tasks[0].failures == 0
    assert "max_retries_preemption=1" in info.error_message
    assert "TerminationByKubelet" in info.error_message
    deletes = standin.requests_of("DELETE", f"/jobs/{k8s_name(job_id)}")
    assert deletes and deletes[0].query.get("propagationPolicy") == "Background"


def test_indexed_job_restarts_as_a_gang_after_a_preemption(gke, standin):
    req = request("v5litepod-16", entrypoint=Entrypoint.from_callable(train, [1]))
    job_id = gke.launch(req)
    name = k8s_name(job_id)
    first = pods_of(standin, job_id, 4)
    for pod in first:
        standin.run(pod, ("attempt 1",))
    wait_for(lambda: len(gke.logs(job_id)) == 4, what="every host seen running")
    standin.preempt(first[2])  # the Job fails with reason PodFailurePolicy; its gang goes
    second = pods_of(standin, job_id, 4, exclude=first)
    for pod in second:
        standin.run(pod, ("attempt 2",))
        standin.succeed(pod)
    info = finished(gke, job_id)
    assert info.status is JobStatus.SUCCEEDED
    assert [t.preemptions for t in info.tasks] == [0, 0, 1, 0]
    assert [t.failures for t in info.tasks] == [0] * 4
    assert [t.attempts for t in info.tasks] == [2] * 4
    deletes = standin.requests_of("DELETE", f"/jobs/{name}")
    assert [d.query.get("propagationPolicy") for d in deletes] == ["Foreground"]
    job_posts = standin.requests_of("POST", "/jobs")
    assert len(job_posts) == 2 and job_posts[0].body == job_posts[1].body
    assert len(standin.requests_of("POST", "/services")) == 1  # Service and ConfigMap stay
    for i in range(4):
        assert [x for x in gke.logs(job_id) if x.startswith(f"[replica-{i}]")] == [
            f"[replica-{i}] attempt 1",
            f"[replica-{i}] attempt 2",
        ]


def test_indexed_job_crash_without_failure_budget_fails_the_gang(gke, standin):
    job_id = gke.launch(request("v5litepod-16"))
    pods = pods_of(standin, job_id, 4)
    for pod in pods:
        standin.run(pod)
    standin.crash(pods[1], 2, ("OOM",))
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert [t.status for t in info.tasks] == [JobStatus.STOPPED, JobStatus.FAILED] + [
        JobStatus.STOPPED
    ] * 2
    assert info.tasks[1].failures == 1 and sum(t.preemptions for t in info.tasks) == 0
    assert (
        "exited with code 2" in info.error_message and "BackoffLimitExceeded" in info.error_message
    )
    assert "max_retries_failure=0" in info.error_message


def test_jobset_restarts_are_counted_as_preemptions_and_failures(gke, standin):
    job_id = gke.launch(request("v5litepod-16", 2, max_retries_failure=1))
    name = k8s_name(job_id)
    first = pods_of(standin, job_id, 8)
    for pod in first:
        standin.run(pod)
    wait_for(lambda: all(t.attempts == 1 for t in gke.poll(job_id).tasks))
    slice1_host2 = next(p for p in first if p.startswith(f"{name}-slice-1-2-"))
    assert gke.poll(job_id).tasks[6].worker == slice1_host2  # replica = slice * hosts + host
    standin.preempt(slice1_host2)  # the JobSet restarts; restartsCountTowardsMax stays 0
    second = pods_of(standin, job_id, 8, exclude=first)
    for pod in second:
        standin.run(pod)
    wait_for(lambda: all(t.attempts == 2 for t in gke.poll(job_id).tasks))
    standin.crash(second[0], 1, ("boom",))  # a restart that counts towards maxRestarts
    third = pods_of(standin, job_id, 8, exclude=first + second)
    for pod in third:
        standin.run(pod)
        standin.succeed(pod)
    info = finished(gke, job_id)
    assert info.status is JobStatus.SUCCEEDED
    assert standin.get("jobsets", name)["status"]["restarts"] == 2
    # Which pod failed is not known: the JobSet controller deleted it before the next poll.
    assert sum(t.preemptions for t in info.tasks) == 1
    assert sum(t.failures for t in info.tasks) == 1


def test_jobset_preemptions_past_the_budget_delete_the_jobset(gke, standin):
    job_id = gke.launch(request("v5litepod-16", 2, max_retries_preemption=0))
    pods = pods_of(standin, job_id, 8)
    for pod in pods:
        standin.run(pod)
    standin.preempt(pods[5])
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert "max_retries_preemption=0" in info.error_message
    assert standin.requests_of("DELETE", f"/jobsets/{k8s_name(job_id)}")


def test_jobset_failure_past_max_restarts_fails_the_job(gke, standin):
    job_id = gke.launch(request("v5litepod-16", 2))
    pods = pods_of(standin, job_id, 8)
    for pod in pods:
        standin.run(pod)
    standin.crash(pods[3], 7)
    info = finished(gke, job_id)
    assert info.status is JobStatus.FAILED
    assert info.tasks[3].failures == 1 and "ReachedMaxRestarts" in info.error_message
