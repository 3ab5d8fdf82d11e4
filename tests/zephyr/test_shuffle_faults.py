"""A shuffle on the embedded cluster's worker processes when a worker is SIGKILLed mid-task, on
the map side (after it spilled runs) and, separately, on the reduce side: the lost task reruns and
the output is identical to a clean run's, no record lost or repeated (a lost attempt's runs are
never read: only those named by the attempt that finished are)."""

from __future__ import annotations

import os
import signal

import pytest

from zephyr import Dataset, SyncBackend
from zephyr.backends.dask import DaskBackend

pytestmark = pytest.mark.dask


def _records(shard: int):
    text = "y" * 280
    for i in range(30_000):
        yield {"key": f"k{(shard * 30_000 + i) % 7000:05d}", "shard": shard, "i": i, "text": text}


def _kill_once(marker: str) -> None:
    """SIGKILL this worker process, the first time only (the marker file says it happened)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _pipeline(marker: str | None, side: str, scratch: str) -> Dataset:
    def key(r):
        if marker and side == "map" and r["shard"] == 1 and r["i"] == 25_000:
            _kill_once(marker)  # after this shard spilled two runs of its ~9 MB
        return r["key"]

    def reducer(k, items):
        if marker and side == "reduce" and k == "k03500":
            _kill_once(marker)
        items = list(items)
        return {"key": k, "n": len(items), "first": (items[0]["shard"], items[0]["i"])}

    return (
        Dataset.from_list(range(4))
        .flat_map(_records)
        .group_by(key, reducer=reducer, num_output_shards=3, scratch=scratch)
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("side", ["map", "reduce"])
def test_a_worker_killed_mid_shuffle_gives_the_clean_runs_output(dask_backend, tmp_path, side):
    expected = list(SyncBackend().execute(_pipeline(None, side, str(tmp_path / "s0"))))
    assert sum(r["n"] for r in expected) == 120_000
    marker = str(tmp_path / "killed")
    backend = DaskBackend(memory="8MB")  # a 4 MiB buffer: the map side spills before the kill
    try:
        got = list(backend.execute(_pipeline(marker, side, str(tmp_path / "s1"))))
    finally:
        backend.close()
    assert os.path.exists(marker), "no worker was killed"
    assert got == expected
    assert os.listdir(tmp_path / "s1") == []
