"""DaskBackend on real LocalClusters: annotations reach the scheduler, resources and max_parallelism
hold across processes, nested pools cannot deadlock, lost tasks are retried, and bad setups fail
fast."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import urllib.request

import distributed
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

from tests.zephyr.probes import ConcurrencyProbe, start_dask_worker
from zephyr import Dataset, ZephyrError, flow_backend
from zephyr.backends.config import cli_context
from zephyr.backends.dask import DaskBackend

pytestmark = pytest.mark.dask


@contextlib.contextmanager
def local_cluster(**options):
    """A real LocalCluster of worker processes on loopback, with a client; closed afterwards."""
    with (
        distributed.LocalCluster(
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
            **options,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def resource_cluster():
    """One worker with two threads advertising MEMORY=1e9: two tasks could run at once unless the
    MEMORY annotation reaches the scheduler."""
    with local_cluster(
        n_workers=1, threads_per_worker=2, resources={"MEMORY": 1e9, "CPU": 2}
    ) as client:
        yield client


@pytest.fixture(scope="module")
def bare_cluster():
    """One single-threaded worker that advertises no resources at all."""
    with local_cluster(n_workers=1, threads_per_worker=1) as client:
        yield client


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def zephyr_warnings():
    handler = LogCapture()
    logger = logging.getLogger("zephyr")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _held(probe: ConcurrencyProbe, seconds: float):
    def fn(x):
        with probe.hold(seconds):
            return x

    return fn


def _restrictions(x):
    worker = distributed.get_worker()
    key = worker.get_current_task()
    return key, worker.state.tasks[key].resource_restrictions


# -- annotations and resources
def test_memory_annotation_reaches_scheduler_and_limits_concurrency(resource_cluster, tmp_path):
    probe = ConcurrencyProbe.create(tmp_path, "mem")
    backend = DaskBackend(resource_cluster, memory="1GB")
    out = list(backend.execute(Dataset.from_list(range(6)).map(_held(probe, 0.3))))
    assert out == list(range(6))
    assert probe.max == 1, "MEMORY=1e9 per task on a worker offering 1e9 allows one task at a time"

    [(key, restrictions)] = list(backend.execute(Dataset.from_list([0]).map(_restrictions)))
    assert restrictions == {"MEMORY": 1e9}
    assert re.fullmatch(r"r\d+\.s1\.map\(_restrictions\)-0-[0-9a-f]{8}", key)


def test_without_resources_the_same_worker_runs_tasks_concurrently(resource_cluster, tmp_path):
    probe = ConcurrencyProbe.create(tmp_path, "free")
    backend = DaskBackend(resource_cluster)
    assert list(backend.execute(Dataset.from_list(range(6)).map(_held(probe, 0.3)))) == list(
        range(6)
    )
    assert probe.max == 2


def test_unsatisfiable_memory_fails_at_submit_time(dask_backend):
    backend = DaskBackend(memory="64TB")
    with pytest.raises(
        ZephyrError,
        match=r"needs MEMORY=64TB, but none of the \d+ Dask workers offers that \(the most any "
        r"worker offers: MEMORY=[0-9.]+GB\); lower --memory",
    ):
        backend.execute(Dataset.from_list([1]).map(str))


def test_gpu_request_on_a_cpu_only_embedded_cluster_fails_clearly(dask_backend):
    with pytest.raises(
        ZephyrError, match=r"needs GPU=1, but none of the \d+ Dask workers offers that"
    ):
        DaskBackend(num_gpus=1).execute(Dataset.from_list([1]).map(str))


def test_cluster_without_resources_runs_unrestricted_and_warns_once(bare_cluster, zephyr_warnings):
    backend = DaskBackend(bare_cluster, memory="8GB", num_cpus=4)
    for _ in range(2):
        assert list(backend.execute(Dataset.from_list([1, 2]).map(lambda x: x + 1))) == [2, 3]
    warnings = [m for m in zephyr_warnings if "advertises the resource" in m]
    assert len(warnings) == 1 and "CPU,MEMORY" in warnings[0]


# -- bounded parallelism ---------------------------------------------------------------------------
def test_max_parallelism_holds_across_worker_processes(dask_backend, tmp_path):
    probe = ConcurrencyProbe.create(tmp_path, "bounded")
    limited = DaskBackend(max_parallelism=1)
    assert list(limited.execute(Dataset.from_list(range(4)).map(_held(probe, 0.2)))) == [0, 1, 2, 3]
    assert probe.max == 1

    probe2 = ConcurrencyProbe.create(tmp_path, "unbounded")
    assert list(dask_backend.execute(Dataset.from_list(range(4)).map(_held(probe2, 0.3)))) == [
        0,
        1,
        2,
        3,
    ]
    assert probe2.max == 2, "two single-threaded workers run two shards at once without a limit"


def test_driver_submits_only_a_window_of_tasks(dask_backend):
    seen: list[int] = []
    stop = threading.Event()

    def count_zephyr_tasks(dask_scheduler=None):
        # Tasks not yet finished: finished ones wait in memory until the driver consumes them.
        waiting = ("waiting", "queued", "processing", "no-worker")
        return sum(
            1
            for k, ts in dask_scheduler.tasks.items()
            if re.match(r"r\d+\.s\d+\.", str(k)) and ts.state in waiting
        )

    def poll():
        while not stop.is_set():
            seen.append(dask_backend.client.run_on_scheduler(count_zephyr_tasks))
            time.sleep(0.01)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        results = list(dask_backend.execute(Dataset.from_list(range(300)).map(_sleepy)))
    finally:
        stop.set()
        thread.join()
    assert results == list(range(300))
    # 300 shards pack into 60 tasks; the window is 2 per worker thread (4 here).
    assert max(seen) <= 4, f"the driver flooded the scheduler: {max(seen)} tasks at once"


def _sleepy(x):
    time.sleep(0.002)
    return x


def test_results_stream_before_the_last_shard_starts(dask_backend, tmp_path):
    probe = ConcurrencyProbe.create(tmp_path, "stream")
    it = dask_backend.execute(Dataset.from_list(range(12)).map(_held(probe, 0.05)))
    assert next(it) == 0
    assert probe.total < 12, "the first result arrives while later shards have not started"
    assert list(it) == list(range(1, 12))


# -- nested pools (seed Pattern 5) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread_cluster():
    """A single worker with a single thread: the hardest case for nested pools."""
    with local_cluster(n_workers=1, threads_per_worker=1) as client:
        yield client


def _nested_pipeline(outer, inner, outer_probe, inner_probe):
    def open_shard(records, info):
        outer_probe.enter()
        for shard_dir in records:
            for i in range(3):
                yield f"{shard_dir}/file-{i}"

    def close_shard(records, info):
        yield from records
        outer_probe.exit()

    def process_file(path):
        with inner_probe.hold(0.1):
            return path.upper()

    return (
        Dataset.from_list([f"dir{i}" for i in range(4)], backend=outer)
        .map_shard(open_shard)
        .map(process_file, backend=inner)
        .map_shard(close_shard)
    )


def test_nested_pools_hold_both_limits_on_one_thread_workers(one_thread_cluster, tmp_path):
    outer_probe = ConcurrencyProbe.create(tmp_path, "outer")
    inner_probe = ConcurrencyProbe.create(tmp_path, "inner")
    outer = DaskBackend(one_thread_cluster, max_parallelism=2)
    inner = DaskBackend(one_thread_cluster, max_parallelism=2)
    out = list(outer.execute(_nested_pipeline(outer, inner, outer_probe, inner_probe)))
    assert out == [f"DIR{i}/FILE-{j}" for i in range(4) for j in range(3)]
    assert 1 <= outer_probe.max <= 2
    assert 1 <= inner_probe.max <= 2
    assert inner_probe.total == 12


def test_nested_pools_through_flow_backend_like_the_seed(dask_backend, tmp_path):
    outer_probe = ConcurrencyProbe.create(tmp_path, "outer")
    inner_probe = ConcurrencyProbe.create(tmp_path, "inner")
    with cli_context("dask", max_parallelism=3, memory="512MB"):
        outer = flow_backend()
        inner = flow_backend(max_parallelism=1)
        assert outer is flow_backend()
        assert inner.config.memory == outer.config.memory == 512_000_000
        assert inner.config.max_parallelism == 1
        out = list(outer.execute(_nested_pipeline(outer, inner, outer_probe, inner_probe)))
    assert len(out) == 12
    assert outer_probe.max <= 3
    assert inner_probe.max == 1


# -- failures
def _die_once(marker_dir):
    def fn(x):
        marker = os.path.join(marker_dir, f"attempt-{x}")
        if x == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-task, as on OOM or preemption
        return x * 10

    return fn


def _always_die(x):
    os._exit(1)


def test_task_lost_with_its_worker_is_retried(dask_backend, tmp_path):
    out = list(dask_backend.execute(Dataset.from_list(range(3)).map(_die_once(str(tmp_path)))))
    assert out == [0, 10, 20]
    assert os.path.exists(tmp_path / "attempt-1")


def test_task_lost_more_than_max_retries_fails_with_a_clear_error(dask_backend):
    backend = DaskBackend(max_retries=1)
    with pytest.raises(ZephyrError, match=r"stage 'map' shard 0: the task was lost 2 times"):
        list(backend.execute(Dataset.from_list([0]).map(_always_die)))
    # the cluster recovers for the next pipeline
    assert list(dask_backend.execute(Dataset.from_list([1, 2]).map(str))) == ["1", "2"]


def test_user_error_fails_fast_without_running_every_shard(dask_backend, tmp_path):
    probe = ConcurrencyProbe.create(tmp_path, "ran")

    def fn(x):
        with probe.hold(0.05):
            if x == 2:
                raise KeyError("missing 'text'")
            return x

    with pytest.raises(
        ZephyrError, match=r"stage 'map' shard 2 \(input 2\): map\(.*\) raised KeyError"
    ) as e:
        list(dask_backend.execute(Dataset.from_list(range(200)).map(fn)))
    assert isinstance(e.value.__cause__, KeyError)
    assert "Traceback" in str(e.value.__cause__.__cause__)  # the worker-side traceback
    assert probe.total < 200


def test_unpicklable_function_is_refused_before_submission(dask_backend):
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with pytest.raises(ZephyrError, match=r"map\(.*uses_lock\) cannot be pickled.*module level"):
        dask_backend.execute(Dataset.from_list([1]).map(uses_lock))


@pytest.mark.timeout(10)
def test_unreachable_scheduler_fails_within_seconds():
    backend = DaskBackend("tcp://127.0.0.1:1", connect_timeout=2)
    with pytest.raises(
        ZephyrError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'"
    ):
        backend.execute(Dataset.from_list([1]))


# -- what the dashboard shows
def _record_groups(dask_scheduler=None):
    """On the scheduler: note the task-group and prefix names of every task that starts."""

    class Recorder(SchedulerPlugin):
        names: set = set()

        def transition(self, key, start, finish, *args, **kwargs):
            ts = dask_scheduler.tasks.get(key)
            if finish == "processing" and ts is not None:
                self.names.add((ts.group.name, ts.prefix.name))

    dask_scheduler.add_plugin(Recorder(), name="test-groups")


def _recorded_groups(dask_scheduler=None):
    plugin = dask_scheduler.plugins["test-groups"]
    dask_scheduler.remove_plugin(name="test-groups")
    return sorted(plugin.names)


@contextlib.contextmanager
def scheduler_groups(client):
    """The (task group, task prefix) names the scheduler gives the tasks started in the block."""
    names: list = []
    client.run_on_scheduler(_record_groups)
    try:
        yield names
    finally:
        names.extend(tuple(n) for n in client.run_on_scheduler(_recorded_groups))


def _clean(x):
    return x + 1


def _long_enough(x):
    return x % 2 == 0


def test_task_groups_show_run_stage_and_functions_and_keep_runs_apart(dask_backend):
    ds = Dataset.from_list(range(8)).map(_clean).reshard(2).filter(_long_enough)
    with scheduler_groups(dask_backend.client) as names:
        assert list(dask_backend.execute(ds)) == [2, 4, 6, 8]
        assert list(dask_backend.execute(ds)) == [2, 4, 6, 8]
    runs = sorted({group.split(".")[0] for group, _ in names})
    assert len(runs) == 2 and all(re.fullmatch(r"r\d+", r) for r in runs), names
    expected = {
        f"{run}.{part}"
        for run in runs
        for part in ("s1.map(_clean)", "s2.reshard.filter(_long_enough)")
    }
    # The Groups page shows task groups; the Progress panel and the task stream show prefixes.
    assert {group for group, _ in names} == expected
    assert {prefix for _, prefix in names} == expected


def _parity(x):
    return x % 2


def _size(key, items):
    return (key, sum(1 for _ in items))


def test_a_shuffles_stages_show_as_scatter_and_reduce_in_the_dashboard(dask_backend):
    ds = Dataset.from_list(range(8)).map(_clean).group_by(_parity, reducer=_size)
    with scheduler_groups(dask_backend.client) as names:
        assert sorted(dask_backend.execute(ds)) == [(0, 4), (1, 4)]
    run = names[0][0].split(".")[0]
    assert {group for group, _ in names} == {
        f"{run}.s1.map(_clean).scatter(_parity)",
        f"{run}.s2.reduce(_size)",
    }


def test_a_nested_stages_tasks_are_named_after_their_parent_stage(dask_backend, tmp_path):
    outer_probe = ConcurrencyProbe.create(tmp_path, "outer")
    inner_probe = ConcurrencyProbe.create(tmp_path, "inner")
    inner = DaskBackend(max_parallelism=2)
    ds = _nested_pipeline(dask_backend, inner, outer_probe, inner_probe)
    with scheduler_groups(dask_backend.client) as names:
        assert len(list(dask_backend.execute(ds))) == 12
    (run,) = {group.split(".")[0] for group, _ in names}
    assert {group for group, _ in names} == {
        f"{run}.s1.map_shard(open_shard).nested[map(process_file)].map_shard(close_shard)",
        f"{run}.s1.nested[map(process_file)]",
    }


def _report(page: str, stage_group: str, ready, timeout: float = 20.0) -> dict:
    """The newest run on the Zephyr page's JSON whose first stage is `stage_group` (any run id),
    once `ready(run)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{page}.json", timeout=5) as response:
            runs = json.load(response)["runs"]
        mine = [r for r in runs if r["stages"][0]["group"].endswith(stage_group)]
        if mine and ready(mine[0]):
            return mine[0]
        assert time.monotonic() < deadline, f"no report for {stage_group} met the condition: {mine}"
        time.sleep(0.05)


def _page_shard(x):
    time.sleep(0.02)
    return x


def test_the_zephyr_page_shows_a_whole_stage_while_few_tasks_are_submitted(dask_backend):
    page = dask_backend.page_link
    assert page is not None and page.endswith("/zephyr")
    results = dask_backend.execute(Dataset.from_list(range(60)).map(_page_shard))
    assert next(results) == 0
    running = _report(page, ".s1.map(_page_shard)", lambda r: r["stages"][0]["started"])
    assert running["state"] == "running" and running["stages"][0]["total"] == 60
    assert running["stages"][0]["done"] < 60 and running["stages"][0]["in_flight"] <= 4
    assert list(results) == list(range(1, 60))
    done = _report(page, ".s1.map(_page_shard)", lambda r: r["state"] == "done")
    assert (done["stages"][0]["done"], done["stages"][0]["in_flight"]) == (60, 0)
    with urllib.request.urlopen(page, timeout=5) as response:
        html = response.read().decode()
    assert f"{done['run']}.s1.map(_page_shard)" in html and "60 / 60" in html


def test_a_failed_run_shows_as_failed_on_the_zephyr_page(dask_backend):
    with pytest.raises(ZephyrError, match="raised ZeroDivisionError"):
        list(dask_backend.execute(Dataset.from_list(range(6)).map(_page_divide)))
    failed = _report(
        dask_backend.page_link,
        ".s1.map(_page_divide)",
        lambda r: r["state"] != "running",
    )
    assert failed["state"] == "failed" and failed["stages"][0]["done"] < 6


def _page_divide(x):
    return 1 / (x - 3)


def test_an_address_cluster_logs_its_dashboard_and_page_when_connecting(bare_cluster, caplog):
    logging.getLogger("zephyr").addHandler(caplog.handler)
    try:
        backend = DaskBackend(bare_cluster.scheduler.address)
        assert backend.client.status == "running"  # connecting, before any work
        lines = [r.getMessage() for r in caplog.records if "Dask dashboard" in r.getMessage()]
        link = bare_cluster.dashboard_link
        page = link.replace("/status", "/zephyr")
        assert lines == [
            f"Dask dashboard: {link} (stage progress: {page}; scheduler "
            f"{bare_cluster.scheduler.address})"
        ]
        with urllib.request.urlopen(page, timeout=5) as response:
            assert "zephyr" in response.read().decode().lower()
    finally:
        logging.getLogger("zephyr").removeHandler(caplog.handler)
        backend.close()


@pytest.mark.timeout(60)
def test_nested_pool_with_memory_requests_does_not_starve_inner_tasks(resource_cluster, tmp_path):
    """The outer shard waits for its inner tasks; if it also held MEMORY=1e9 on the only worker
    (which offers 1e9), no inner task could ever start."""
    outer = DaskBackend(resource_cluster, memory="1GB")
    inner = DaskBackend(resource_cluster, memory="1GB", max_parallelism=1)
    outer_probe = ConcurrencyProbe.create(tmp_path, "outer")
    inner_probe = ConcurrencyProbe.create(tmp_path, "inner")
    out = list(outer.execute(_nested_pipeline(outer, inner, outer_probe, inner_probe)))
    assert len(out) == 12
    assert inner_probe.max == 1


def _slow(x):
    time.sleep(0.5)
    return x


@pytest.mark.timeout(90)
def test_tasks_no_remaining_worker_can_run_fail_instead_of_waiting_forever():
    """The only worker offering MEMORY dies mid-run: Dask would keep the remaining tasks in state
    no-worker forever; zephyr raises once no_worker_timeout passes."""
    with (
        distributed.LocalCluster(
            n_workers=0, host="127.0.0.1", dashboard_address=":0", silence_logs=logging.CRITICAL
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        big = start_dask_worker(cluster.scheduler_address, "--resources", "MEMORY=1e9")
        small = start_dask_worker(cluster.scheduler_address)
        try:
            client.wait_for_workers(2, timeout=60)
            backend = DaskBackend(client, memory="1GB", no_worker_timeout=1)
            results = backend.execute(Dataset.from_list(range(6)).map(_slow))
            assert next(results) == 0
            big.kill()
            with pytest.raises(
                ZephyrError,
                match=r"stage 1 'map': 5 unfinished shard\(s\).*no worker has been able to run "
                r"them for \d+ s \(the rule: no_worker_timeout=1 s\): each task of the pipeline "
                r"cannot be placed: it needs MEMORY=1GB, but none of the 1 Dask workers",
            ):
                list(results)
        finally:
            for proc in (big, small):
                proc.kill()
                proc.wait(timeout=10)


def _task_key(x):
    return distributed.get_worker().get_current_task()


def test_tiny_shards_share_a_few_dozen_tasks(dask_backend):
    """Per-task overhead is paid per batch: 10,000 trivial shards must not cost 10,000 (or, with
    fixed packs of 64, 157) Dask tasks and as many round trips."""
    keys = list(dask_backend.execute(Dataset.from_list(range(10_000)).map(_task_key)))
    assert len(keys) == 10_000
    assert len(set(keys)) < 60, f"{len(set(keys))} tasks for 10,000 trivial shards"
