"""zephyr.backends.dask_checks: what the Dask backend checks before and while it runs, tested on
plain worker info dicts, without Dask."""

from __future__ import annotations

import logging
import socket

import pytest

from tests.imports import heavy_modules_loaded
from zephyr import ZephyrError
from zephyr.backends.dask_checks import (
    remote_workers,
    requested_resources,
    stall_reason,
    task_resources,
    wait_for_workers,
)

WORKERS = [{"resources": {"CPU": 1, "MEMORY": 8e9}}, {"resources": {"CPU": 1, "MEMORY": 4e9}}]


def test_only_the_resources_that_were_set_are_requested():
    assert requested_resources(None, None, None) == {}
    assert requested_resources(2e9, 1, None) == {"MEMORY": 2e9, "CPU": 1}


def test_a_request_some_worker_holds_annotates_the_tasks():
    assert task_resources({"MEMORY": 8e9}, WORKERS, set()) == {"MEMORY": 8e9}
    assert task_resources({}, WORKERS, set()) is None


def test_a_request_no_worker_holds_names_the_largest_offer_and_the_fix():
    with pytest.raises(
        ZephyrError,
        match=r"each task of the pipeline cannot be placed: it needs MEMORY=9GB, but none of the "
        r"2 Dask workers offers that \(the most any worker offers: MEMORY=8GB\); lower --memory",
    ):
        task_resources({"MEMORY": 9e9}, WORKERS, set())


def test_resources_no_worker_advertises_are_dropped_with_one_warning(caplog):
    logger = logging.getLogger("zephyr")
    logger.addHandler(caplog.handler)
    warned: set[str] = set()
    try:
        for _ in range(2):
            assert task_resources({"GPU": 1, "CPU": 1}, WORKERS, warned) == {"CPU": 1}
    finally:
        logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records].count(
        "no Dask worker advertises the resource(s) GPU; running without those restrictions "
        '(start workers with --resources "CPU=..,MEMORY=.." to enforce them)'
    ) == 1


def test_waiting_for_workers_ends_with_the_rule():
    with pytest.raises(ZephyrError, match=r"has no workers after 0\.2 s \(the rule: x=1\)"):
        wait_for_workers(list, "tcp://h:1", 0.2, "the rule: x=1")
    assert wait_for_workers(lambda: WORKERS, "tcp://h:1", 0) == WORKERS


def test_why_tasks_wait():
    asked = []

    def workers():
        asked.append(1)
        return WORKERS

    idle = {"workers": 2, "states": ["processing"]}
    assert stall_reason(idle, {"MEMORY": 9e9}, workers, "tcp://h:1") is None
    assert asked == [], "the workers are asked for only when tasks wait in no-worker"
    none = {"workers": 0, "states": ["queued"]}
    assert "has 0 workers" in stall_reason(none, None, workers, "tcp://h:1")
    stuck = {"workers": 2, "states": ["no-worker"]}
    assert "needs MEMORY=9GB" in stall_reason(stuck, {"MEMORY": 9e9}, workers, "tcp://h:1")


def test_the_checks_load_no_dask():
    assert heavy_modules_loaded("import zephyr.backends.dask_checks", ("dask", "distributed")) == []


def test_workers_on_other_machines_are_found_by_their_host():
    workers = [
        {"host": "127.0.0.1", "nthreads": 1},
        {"host": "10.255.1.7", "nthreads": 2},
        {"host": socket.gethostname()},
        {"host": "10.255.1.7"},
    ]
    assert remote_workers(workers) == ["10.255.1.7"]
    assert remote_workers(workers[:1] + workers[2:3]) == []
