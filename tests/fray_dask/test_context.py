"""Job contexts (put/get/run/wait), actor handles and backpressure, the same on SyncContext,
ThreadContext and DaskContext; then what only a cluster-wide context does (shared named actors,
placement, lost workers)."""

from __future__ import annotations

import time
import uuid

import pytest

from fray_dask import (
    ActorLostError,
    DaskContext,
    Entrypoint,
    JobRequest,
    SyncContext,
    ThreadContext,
    backpressure,
    fray_job_ctx,
    get_default_job_ctx,
    set_job_ctx,
)
from tests.fray_dask import jobs
from tests.zephyr.probes import ConcurrencyProbe


@pytest.fixture(params=["sync", "threads", "dask"])
def ctx(request):
    if request.param == "sync":
        with SyncContext() as c:
            yield c
    elif request.param == "threads":
        with ThreadContext(max_workers=4) as c:
            yield c
    else:
        request.applymarker(pytest.mark.dask)
        request.getfixturevalue("dask_backend")
        yield DaskContext()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_run_get_and_put(ctx):
    assert ctx.get(ctx.run(jobs.square, 7)) == 49
    ref = ctx.put({"weights": [1, 2, 3]})
    assert ctx.get(ref) == {"weights": [1, 2, 3]}
    assert ctx.get([ctx.run(jobs.square, i) for i in range(5)]) == [0, 1, 4, 9, 16]
    assert ctx.get(ctx.run(sorted, [3, 1, 2], reverse=True)) == [3, 2, 1]


def test_a_failing_task_raises_its_own_exception_from_get(ctx):
    future = ctx.run(int, "not a number")
    with pytest.raises(ValueError, match="invalid literal"):
        ctx.get(future)


def test_wait_returns_ready_and_pending_in_order(ctx):
    futures = [ctx.run(jobs.square, 2), ctx.run(jobs.square, 3)]
    ready, pending = ctx.wait(futures, num_returns=2, timeout=30)
    assert ready == futures and pending == []
    with pytest.raises(ValueError, match="num_returns=3 but 2 futures"):
        ctx.wait(futures, num_returns=3)


def test_wait_returns_after_the_first_when_others_are_slow():
    with ThreadContext(max_workers=2) as ctx:
        slow = ctx.run(time.sleep, 2)
        quick = ctx.run(jobs.square, 3)
        started = time.monotonic()
        ready, pending = ctx.wait([slow, quick], num_returns=1)
        assert (ready, pending) == ([quick], [slow])
        assert time.monotonic() - started < 1.5
        ready, pending = ctx.wait([slow], num_returns=1, timeout=0.1)
        assert (ready, pending) == ([], [slow])


def test_get_rejects_things_that_are_not_futures(ctx):
    with pytest.raises(TypeError, match="ctx.get takes what put"):
        ctx.get(42)


def test_actor_methods_are_called_with_remote(ctx):
    counter = ctx.create_actor(jobs.Counter, 10)
    assert ctx.get(counter.incr.remote()) == 11
    assert ctx.get([counter.incr.remote(5), counter.value.remote()]) == [16, 16]
    with pytest.raises(KeyError, match="no such lesson"):
        ctx.get(counter.fail.remote())
    assert ctx.get(counter.value.remote()) == 16  # a failed call leaves the actor usable
    with pytest.raises(TypeError, match=r"actor methods are called with \.remote\(\)"):
        counter.incr(1)
    with pytest.raises(AttributeError, match="has no method 'decr'"):
        counter.decr  # noqa: B018
    with pytest.raises(AttributeError, match="Counter.n is not a method|has no method 'n'"):
        counter.n  # noqa: B018


def test_async_actor_methods_wait_without_holding_up_the_actors_other_calls(ctx):
    """`async def` methods run on an event loop (a Dask worker's, or the in-process actor's own),
    not on the actor's thread: while one call awaits, other calls are answered."""
    gate = ctx.create_actor(jobs.Gate)
    waiting = gate.wait.remote(60)
    assert ctx.get(gate.calls.remote(), timeout=30) == 1
    assert not ctx.get(gate.wait.remote(0.05), timeout=30)  # not opened yet: times out
    ctx.get(gate.open.remote(), timeout=30)
    assert ctx.get(waiting, timeout=30) is True


def test_named_actors_are_shared_and_names_are_unique(ctx):
    name = unique("curriculum")
    first = ctx.create_actor(jobs.Counter, name=name, get_if_exists=True)
    ctx.get(first.incr.remote())
    again = ctx.create_actor(jobs.Counter, 100, name=name, get_if_exists=True)
    assert ctx.get(again.incr.remote()) == 2  # the same instance: its constructor did not rerun
    with pytest.raises(ValueError, match=f"an actor named '{name}' already exists"):
        ctx.create_actor(jobs.Counter, name=name)
    first.kill()
    fresh = ctx.create_actor(jobs.Counter, name=name)
    assert ctx.get(fresh.value.remote()) == 0
    fresh.kill()


def test_backpressure_streams_in_order_with_bounded_concurrency(ctx, tmp_path):
    probe = ConcurrencyProbe.create(tmp_path, "bp")
    consumed = []

    def items():
        for i in range(12):
            consumed.append(i)
            yield (probe, i, 0.05)

    results = backpressure(jobs.square_in_probe, items(), max_in_flight=3, ctx=ctx)
    first = next(results)
    assert first == 0 and len(consumed) <= 4  # the input is read lazily
    assert [first, *results] == [i * i for i in range(12)]
    assert probe.max <= 3 and probe.total == 12


def test_backpressure_raises_a_task_error_and_rejects_bad_limits(ctx):
    with pytest.raises(ValueError, match="invalid literal"):
        list(backpressure(int, ["1", "x", "3"], max_in_flight=2, ctx=ctx))
    with pytest.raises(ValueError, match="max_in_flight must be a whole number >= 1, got 0"):
        next(backpressure(int, ["1"], max_in_flight=0, ctx=ctx))


def test_set_job_ctx_overrides_the_default():
    ctx = SyncContext()
    with set_job_ctx(ctx):
        assert fray_job_ctx() is ctx and get_default_job_ctx() is ctx
    assert fray_job_ctx() is not ctx


def test_a_local_cluster_job_gets_a_thread_context(monkeypatch):
    from fray_dask import LocalCluster

    with LocalCluster() as cluster:
        job = cluster.launch(
            JobRequest(name="where", entrypoint=Entrypoint(callable=jobs.report_current_cluster))
        )
        cluster.wait(job, raise_on_failure=True)
        assert cluster.logs(job) == [
            "[replica-0] cluster LocalCluster local",
            "[replica-0] context ThreadContext",
        ]


def test_a_named_actor_in_a_local_cluster_job_warns_once_that_other_jobs_cannot_share_it():
    """Two jobs on FRAY_CLUSTER_SPEC=local asking for one named actor get one instance each; each
    job is told once (per name) and pointed at the spec that shares names."""
    from fray_dask import LocalCluster

    name = unique("lessons")
    request = JobRequest(
        name="named", entrypoint=Entrypoint.from_callable(jobs.create_named_actor_twice, [name])
    )
    with LocalCluster() as cluster:
        launched = [cluster.launch(request) for _ in range(2)]
        cluster.wait(launched, raise_on_failure=True, timeout=60)
        for job in launched:
            logs = cluster.logs(job)
            warnings = [line for line in logs if "ActorNameNotSharedWarning" in line]
            assert len(warnings) == 1, logs
            assert f"the actor name {name!r} is shared only within this process" in warnings[0]
            assert "FRAY_CLUSTER_SPEC=local" in warnings[0]
            assert "run them on FRAY_CLUSTER_SPEC=dask" in warnings[0]
            assert f"[replica-0] counter {name} at 2" in logs  # its own instance, not shared


# -- cluster-wide actors (Dask) -----------------------------------------------------------------


@pytest.mark.dask
def test_two_jobs_increment_one_named_counter(fray_dask_cluster, dask_backend):
    name = unique("shared-counter")
    request = JobRequest(
        name="incr", entrypoint=Entrypoint.from_callable(jobs.increment_named_counter, [name, 5])
    )
    launched = [fray_dask_cluster.launch(request) for _ in range(2)]
    fray_dask_cluster.wait(launched, raise_on_failure=True)
    ctx = DaskContext()
    counter = ctx.create_actor(jobs.Counter, name=name, get_if_exists=True)
    assert ctx.get(counter.value.remote()) == 10
    counter.kill()
    logs = [line for job in launched for line in fray_dask_cluster.logs(job)]
    assert not [line for line in logs if "ActorNameNotSharedWarning" in line]  # shared here


@pytest.mark.dask
def test_handles_travel_to_tasks(dask_backend):
    ctx = DaskContext()
    counter = ctx.create_actor(jobs.Counter)
    ctx.get([ctx.run(_incr_via, counter) for _ in range(4)])
    assert ctx.get(counter.value.remote()) == 4


def _incr_via(handle):
    return handle.incr.remote().result()


@pytest.mark.dask
def test_non_preemptible_actors_live_only_on_workers_that_advertise_it(private_dask):
    private_dask.add_worker("CPU=1,MEMORY=2e9")
    ctx = DaskContext(private_dask.address)
    try:
        with pytest.raises(
            ValueError, match=r"actor 'coordinator' cannot be placed.*NON_PREEMPTIBLE=1"
        ):
            ctx.create_actor(jobs.Counter, name="coordinator", preemptible=False, num_cpus=0)
        safe = private_dask.add_worker("CPU=1,MEMORY=2e9,NON_PREEMPTIBLE=1")
        handles = [
            ctx.create_actor(jobs.Counter, name=f"coordinator-{i}", preemptible=False, num_cpus=0)
            for i in range(4)
        ]
        assert {h.worker for h in handles} == {safe}
        with pytest.raises(ValueError, match=r"needs CPU=8"):
            ctx.create_actor(jobs.Counter, num_cpus=8)
    finally:
        ctx.close()


@pytest.mark.dask
def test_calls_to_an_actor_whose_worker_died_raise_actor_lost(private_dask):
    private_dask.add_worker()
    ctx = DaskContext(private_dask.address)
    try:
        counter = ctx.create_actor(jobs.Counter, name="doomed")
        assert ctx.get(counter.incr.remote()) == 1
        in_flight = counter.slow.remote(60)
        private_dask.kill_worker(counter.worker)
        started = time.monotonic()
        with pytest.raises(ActorLostError, match=r"actor doomed \(Counter\) is lost"):
            ctx.get(in_flight)
        with pytest.raises(ActorLostError, match="doomed"):
            ctx.get(counter.incr.remote())
        assert time.monotonic() - started < 30  # an error, not a hang
        private_dask.add_worker()
        again = ctx.create_actor(jobs.Counter, name="doomed", get_if_exists=True)
        assert ctx.get(again.incr.remote()) == 1  # a new instance; the old state is gone
    finally:
        ctx.close()


@pytest.mark.dask
def test_tasks_that_wait_on_other_work_leave_the_thread_pool(dask_backend):
    """Four tasks on two single-threaded workers all create (or find) one named actor and call
    it: a task waiting for the actor's creation must not hold the thread the creation needs."""
    ctx = DaskContext()
    name = unique("from-tasks")
    ids = ctx.get([ctx.run(_find_shared, name) for _ in range(4)], timeout=60)
    assert len(set(ids)) == 1
    ctx.create_actor(jobs.Counter, name=name, get_if_exists=True).kill()
    nested = ctx.get([ctx.run(jobs.run_nested, i) for i in range(4)], timeout=60)
    assert nested == [0, 1, 4, 9]


def _find_shared(name):
    ctx = fray_job_ctx()
    handle = ctx.create_actor(jobs.Counter, name=name, get_if_exists=True)
    return ctx.get(handle.pid.remote())
