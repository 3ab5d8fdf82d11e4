"""tpu.pods: how the GKE launcher reads a pod's end, preempted or failed, from the pod status the
Kubernetes API reports. Pure: pod JSON in the shapes of the v1 Pod API (written here; no API
server runs on our machines)."""

from __future__ import annotations

import pytest

from tpu.pods import classify, condition, ran, terminal


def pod(phase: str, *, reason=None, conditions=(), terminated=None, running=False) -> dict:
    state = {"terminated": terminated} if terminated else ({"running": {}} if running else {})
    status = {
        "phase": phase,
        "conditions": list(conditions),
        "containerStatuses": [{"name": "main", "state": state}],
    }
    if reason:
        status["reason"], status["message"] = reason, f"the node said {reason}"
    return {"metadata": {"name": "train-0-abc"}, "status": status}


def disruption(reason: str) -> dict:
    return {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": "bye"}


@pytest.mark.parametrize(
    "reason",
    [
        "PreemptionByScheduler",
        "TerminationByKubelet",
        "DeletionByTaintManager",
        "EvictionByEvictionAPI",
    ],
)
def test_the_disruption_target_condition_is_a_preemption(reason):
    ended = pod("Failed", conditions=[disruption(reason)], terminated={"exitCode": 143})
    kind, message = classify(ended, "train-0-abc", [])
    assert kind == "preempted"
    assert f"pod train-0-abc was preempted ({reason}: bye)" == message


@pytest.mark.parametrize(
    "reason", ["Evicted", "NodeLost", "Shutdown", "NodeShutdown", "Terminated"]
)
def test_node_level_ends_are_preemptions(reason):
    kind, message = classify(pod("Failed", reason=reason), "p", [])
    assert (kind, message) == (
        "preempted",
        f"pod p lost its node ({reason}: the node said {reason})",
    )


def test_a_pod_that_vanished_while_running_is_a_preemption():
    kind, message = classify(None, "p", ["last words"])
    assert kind == "preempted" and "disappeared while running" in message


def test_a_crash_is_a_failure_named_with_its_exit_code_and_last_lines():
    crashed = pod("Failed", terminated={"exitCode": 1, "reason": "Error"})
    kind, message = classify(crashed, "p", ["step 3", "ValueError: nan loss"])
    assert kind == "failed"
    assert message == "pod p exited with code 1 (Error); last lines: step 3 | ValueError: nan loss"


def test_an_out_of_memory_kill_is_a_failure_not_a_preemption():
    oom = pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    assert classify(oom, "p", [])[0] == "failed"


def test_the_termination_message_wins_over_the_log_tail():
    crashed = pod("Failed", terminated={"exitCode": 2, "reason": "Error", "message": "bad config"})
    assert classify(crashed, "p", ["noise"])[1].endswith("; last lines: bad config")


def test_success_and_phases():
    assert classify(pod("Succeeded", terminated={"exitCode": 0}), "p", [])[0] == "succeeded"
    assert ran(pod("Running", running=True)) and not ran(pod("Pending"))
    assert terminal(pod("Failed")) and terminal(pod("Succeeded")) and not terminal(pod("Running"))


def test_condition_reads_only_true_conditions_of_the_asked_types():
    job = {"status": {"conditions": [{"type": "Failed", "status": "False"}]}}
    assert condition(job, "Failed") is None
    job["status"]["conditions"].append({"type": "Complete", "status": "True"})
    assert condition(job, "Complete", "Completed") == {"type": "Complete", "status": "True"}
    assert condition(None, "Failed") is None
