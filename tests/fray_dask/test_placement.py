"""The driver-side replica queue: which worker a replica is sent to, and when (no Dask: the
scheduler's view of usage is given as data)."""

from __future__ import annotations

import threading
import time

from fray_dask.placement import Dispatcher, Pending, choose

TWO_WORKERS = {
    "w1": ({"CPU": 1, "MEMORY": 100}, {}),
    "w2": ({"CPU": 2, "MEMORY": 100}, {}),
}


def test_choose_prefers_the_most_free_cpu_among_workers_that_fit():
    free = {"a": {"CPU": 1, "MEMORY": 10}, "b": {"CPU": 3, "MEMORY": 10}, "c": {"CPU": 8}}
    assert choose(free, {"CPU": 1, "MEMORY": 5}) == "b"  # c offers no MEMORY at all
    assert choose(free, {"CPU": 4, "MEMORY": 5}) is None
    assert choose(free, {"NON_PREEMPTIBLE": 0}) is None


class Sent:
    def __init__(self):
        self.where: dict[str, str] = {}
        self.event = threading.Event()

    def item(self, key, needed, cancelled=lambda: False):
        def submit(worker):
            self.where[key] = worker
            self.event.set()

        return Pending(key, needed, submit, cancelled)

    def wait_for(self, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.where) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return dict(self.where)


def test_replicas_wait_in_the_driver_until_a_worker_is_free():
    usage = dict(TWO_WORKERS)
    dispatcher = Dispatcher(lambda: usage)
    sent = Sent()
    try:
        for i in range(4):
            dispatcher.put(sent.item(f"r{i}", {"CPU": 1}))
        placed = sent.wait_for(3)
        assert sorted(placed.values()) == ["w1", "w2", "w2"]  # 3 CPUs free, 3 replicas placed
        time.sleep(0.2)
        assert "r3" not in sent.where
        dispatcher.release(next(k for k, w in placed.items() if w == "w1"))
        assert sent.wait_for(4)["r3"] == "w1"
    finally:
        dispatcher.close()


def test_other_clients_usage_counts_and_cancelled_replicas_are_dropped():
    usage = {"w1": ({"CPU": 1}, {"CPU": 1}), "w2": ({"CPU": 1}, {})}  # w1 is busy elsewhere
    dispatcher = Dispatcher(lambda: usage)
    sent = Sent()
    try:
        dispatcher.put(sent.item("gone", {"CPU": 1}, cancelled=lambda: True))
        dispatcher.put(sent.item("big", {"CPU": 2}))
        dispatcher.put(sent.item("small", {"CPU": 1}))  # not held up by "big" ahead of it
        assert sent.wait_for(1) == {"small": "w2"}
        time.sleep(0.2)
        assert set(sent.where) == {"small"}
    finally:
        dispatcher.close()
