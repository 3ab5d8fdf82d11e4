"""DaskBackend when the cluster fails under it: all workers killed (and none or a new one back), the
scheduler killed, and user errors kept out of the workers' crash logs.

Each test runs a real `dask scheduler` process and real `dask worker` processes on loopback and
SIGKILLs them; the driver must raise a ZephyrError that says what was lost (never hang), or finish
with the same output when workers come back in time.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.processes import wait_for
from tests.zephyr.probes import ConcurrencyProbe, start_dask_scheduler, start_dask_worker
from zephyr import Dataset, SyncBackend, ZephyrError
from zephyr.backends.dask import DaskBackend

pytestmark = pytest.mark.dask


@dataclass
class ExternalCluster:
    """A scheduler process and its worker processes (each one thread, no nanny)."""

    scheduler: object
    address: str
    workers: list = field(default_factory=list)

    def add_worker(self, log: str | None = None) -> None:
        self.workers.append(start_dask_worker(self.address, log=log))

    def kill_workers(self) -> None:
        for proc in self.workers:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def external_cluster(workers: int = 2, log: str | None = None):
    scheduler, address = start_dask_scheduler()
    cluster = ExternalCluster(scheduler, address)
    try:
        for _ in range(workers):
            cluster.add_worker(log)
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def backend_on(cluster: ExternalCluster, workers: int, **settings):
    backend = DaskBackend(cluster.address, connect_timeout=30, **settings)
    try:
        if workers:
            backend.client.wait_for_workers(workers, timeout=60)
        yield backend
    finally:
        backend.close()


def consume_within(results, seconds: float, what: str) -> list:
    """list(results), which must return or raise within `seconds` (the driver must never hang)."""
    box: dict = {}

    def consume():
        try:
            box["value"] = list(results)
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the driver was still blocked {seconds} s after {what}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _slow(x):
    time.sleep(0.2)
    return x


def _count_in_memory(dask_scheduler=None) -> int:
    return sum(
        1
        for key, ts in dask_scheduler.tasks.items()
        if re.match(r"r\d+\.s\d+\.", str(key)) and ts.state == "memory"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", ["running", "finished-not-fetched", "after-reshard"])
def test_all_workers_killed_and_none_back_fails_within_the_timeout(shape):
    """Before, the driver blocked forever in about half of the runs: in a result fetch, or waiting
    on a reshard's tasks whose inputs were lost with the workers."""
    with external_cluster(workers=2) as cluster, backend_on(cluster, 2, no_worker_timeout=2) as b:
        ds = Dataset.from_list(range(40)).map(_slow)
        if shape == "after-reshard":
            ds = ds.reshard(4).map(_slow)  # stage 0's results wait on the workers for stage 1
        results = b.execute(ds)
        assert next(results) == 0
        if shape == "finished-not-fetched":
            wait_for(lambda: b.client.run_on_scheduler(_count_in_memory), "a finished result")
        cluster.kill_workers()
        stage = "stage 2 'reshard -> map'" if shape == "after-reshard" else "stage 1 'map'"
        with pytest.raises(
            ZephyrError,
            match=rf"{stage}: \d+ unfinished shard\(s\) .*cannot run: no worker has been able to "
            r"run them for \d+ s \(the rule: no_worker_timeout=2 s\): the Dask scheduler at "
            rf"{cluster.address} has 0 workers; start workers",
        ):
            consume_within(results, 2 + 15, "all workers died")


def _record(x):
    time.sleep(0.2)
    return {"id": x, "text": f"doc {x}"}


@pytest.mark.timeout(120)
def test_workers_killed_and_a_new_one_joins_in_time_finish_with_identical_output(tmp_path):
    def pipeline(out):
        return Dataset.from_list(range(12)).map(_record).write_jsonl(f"{out}/{{shard:03d}}.jsonl")

    expected = list(SyncBackend().execute(pipeline(tmp_path / "ref")))
    with external_cluster(workers=2) as cluster, backend_on(cluster, 2, no_worker_timeout=30) as b:
        results = b.execute(pipeline(tmp_path / "out"))
        first = next(results)
        cluster.kill_workers()
        time.sleep(1)
        cluster.add_worker()
        paths = [first, *consume_within(results, 60, "a new worker joined")]
    assert [p.replace("/out/", "/ref/") for p in paths] == expected
    for got, want in zip(paths, expected, strict=True):
        with open(got) as g, open(want) as w:
            assert g.read() == w.read()


@pytest.mark.timeout(120)
def test_scheduler_killed_mid_run_fails_naming_it_and_skip_existing_resumes(tmp_path):
    probe = ConcurrencyProbe.create(tmp_path, "ran")

    def record(x):
        with probe.hold(0.2):
            return {"id": x}

    def pipeline():
        return (
            Dataset.from_list(range(40))
            .map(record)
            .write_jsonl(f"{tmp_path}/out/{{shard:03d}}.jsonl", skip_existing=True)
        )

    with external_cluster(workers=2) as cluster, backend_on(cluster, 2) as b:
        results = b.execute(pipeline())
        next(results)
        cluster.scheduler.kill()
        with pytest.raises(
            ZephyrError,
            match=rf"stage 1 'map -> write_jsonl': lost the connection to the Dask scheduler at "
            rf"{cluster.address}.*; \d+/40 shards had finished and \d+ had not .*Outputs already "
            r"committed are complete files.*run again with skip_existing=True",
        ):
            consume_within(results, 10, "the scheduler died")
    done = len(list((tmp_path / "out").glob("*.jsonl")))
    ran_before = probe.total
    assert done < 40
    with external_cluster(workers=2) as cluster, backend_on(cluster, 2) as b:
        paths = list(b.execute(pipeline()))
    assert len(paths) == 40
    assert [json.loads(open(p).read()) for p in paths] == [{"id": i} for i in range(40)]
    assert probe.total - ran_before == 40 - done, "the rerun computes only the missing shards"


def _fails_on_2(x):
    if x == 2:
        raise KeyError("missing 'text'")
    return x


@pytest.mark.timeout(120)
def test_user_errors_are_not_logged_as_worker_crashes(tmp_path):
    """A user's exception reaches the driver as a ZephyrError; the worker's log does not show it
    as `Compute Failed` with a traceback into zephyr (before, every error was seen twice)."""
    log = str(tmp_path / "worker.log")
    with external_cluster(workers=1, log=log) as cluster, backend_on(cluster, 1) as b:
        with pytest.raises(ZephyrError, match=r"shard 2 \(input 2\): map\(_fails_on_2\) raised"):
            list(b.execute(Dataset.from_list(range(4)).map(_fails_on_2)))
        # a stage whose results stay on the cluster (before a reshard) fails the same way
        with pytest.raises(ZephyrError, match=r"shard 2 \(input 2\): map\(_fails_on_2\) raised"):
            list(b.execute(Dataset.from_list(range(4)).map(_fails_on_2).reshard(1)))
        # losing a worker is still a retry, not a user error
        assert list(b.execute(Dataset.from_list(range(3)).map(str))) == ["0", "1", "2"]
    with open(log) as f:
        text = f.read()
    assert "Start worker" in text  # the log was captured
    assert "Compute Failed" not in text
    assert "KeyError" not in text


@pytest.mark.timeout(120)
def test_a_cluster_without_workers_fails_by_the_stall_rule_or_runs_once_one_joins():
    with external_cluster(workers=0) as cluster:
        backend = DaskBackend(cluster.address, connect_timeout=30, no_worker_timeout=2)
        try:
            with pytest.raises(
                ZephyrError,
                match=rf"the Dask cluster at {cluster.address} has no workers after 2 s \(the "
                rf"rule: no_worker_timeout=2 s\); start workers \(dask worker {cluster.address}\)",
            ):
                consume_within(backend.execute(Dataset.from_list([1, 2])), 2 + 15, "the start")
        finally:
            backend.close()
        cluster.add_worker()
        with backend_on(cluster, 0, no_worker_timeout=60) as b:
            assert list(b.execute(Dataset.from_list([1, 2]).map(str))) == ["1", "2"]
