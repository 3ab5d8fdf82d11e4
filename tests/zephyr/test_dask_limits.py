"""zephyr.backends.dask_limits: `max_parallelism` is a cluster-wide semaphore that bounds a
backend's shards even where the driver's window does not (several runs at once), and the
semaphores of finished runs leave the scheduler and the workers' caches."""

from __future__ import annotations

import threading

import pytest

from tests.zephyr.probes import ConcurrencyProbe
from tests.zephyr.test_dask_backend import _held, local_cluster
from zephyr import Dataset
from zephyr.backends import dask_limits
from zephyr.backends.dask import DaskBackend

pytestmark = pytest.mark.dask


@pytest.fixture(scope="module")
def four_workers():
    """Four single-threaded worker processes: four shards could run at once."""
    with local_cluster(n_workers=4, threads_per_worker=1) as client:
        yield client


def _zephyr_semaphores(dask_scheduler=None) -> list[str]:
    ext = dask_scheduler.extensions["semaphores"]
    return sorted(n for n in ext.max_leases if str(n).startswith(dask_limits.PREFIX))


def test_max_parallelism_bounds_shards_beyond_the_drivers_window(four_workers, tmp_path):
    """Two runs of one backend at once: each run's window is 2, so 4 shards would be in flight
    on 4 free threads; only the semaphore keeps it to 2. Counted by the tasks themselves."""
    probe = ConcurrencyProbe.create(tmp_path, "limited")
    backend = DaskBackend(four_workers, max_parallelism=2)
    results: dict[str, list] = {}

    def run(name: str) -> None:
        results[name] = list(backend.execute(Dataset.from_list(range(6)).map(_held(probe, 0.4))))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {"a": list(range(6)), "b": list(range(6))}
    assert probe.max == 2

    unbounded = ConcurrencyProbe.create(tmp_path, "unbounded")
    free = DaskBackend(four_workers)
    assert list(free.execute(Dataset.from_list(range(8)).map(_held(unbounded, 0.4)))) == list(
        range(8)
    )
    assert unbounded.max > 2, "without a limit the four workers run more than two shards at once"
    backend.close()
    free.close()


def test_semaphores_of_finished_runs_are_closed_and_registered_again(four_workers, tmp_path):
    backend = DaskBackend(four_workers, max_parallelism=1)
    for attempt in range(2):  # the second run finds its semaphore closed on the workers
        probe = ConcurrencyProbe.create(tmp_path, f"run{attempt}")
        out = list(backend.execute(Dataset.from_list(range(4)).map(_held(probe, 0.1))))
        assert out == [0, 1, 2, 3] and probe.max == 1
        assert four_workers.run_on_scheduler(_zephyr_semaphores) == []
    backend.close()


def _shrink_cache(limit: int) -> None:
    dask_limits.MAX_CACHED = limit


def test_workers_keep_a_bounded_number_of_semaphores(four_workers):
    four_workers.run(_shrink_cache, 2)
    try:
        for _ in range(5):  # five backends, five semaphores
            with DaskBackend(four_workers, max_parallelism=1) as backend:
                assert list(backend.execute(Dataset.from_list(range(4)).map(str))) == list("0123")
        cached = four_workers.run(dask_limits.cached)
        assert cached and all(len(names) <= 2 for names in cached.values()), cached
    finally:
        four_workers.run(_shrink_cache, dask_limits.MAX_CACHED)
