"""A shuffle's memory stays bounded by the task's budget whatever the data: records beyond it spill
to sorted runs, a key whose group is larger than the budget is still reduced from an iterator,
and more runs than a reduce task may open at once merge in passes. Measured in this process with
tracemalloc on SyncBackend (the kernels are the ones Dask workers run; the worker-RSS check on a
real cluster is benchmarks/shuffle_throughput.py's). Also: the shuffle hash is the same in every
process."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import pytest

from zephyr import Dataset, SyncBackend
from zephyr.shuffle import scratch
from zephyr.shuffle.keys import partition_of

MIB = 1 << 20


def _records(shard: int, per_shard: int, skew: bool):
    """`per_shard` records of ~300 bytes; with `skew` every one shares the key 'hot'."""
    text = "x" * 280
    for i in range(per_shard):
        n = shard * per_shard + i
        yield {"key": "hot" if skew else f"k{n % 5000:05d}", "n": n, "text": text}


def _dataset(shards: int, per_shard: int, skew: bool = False) -> Dataset:
    return Dataset.from_list(range(shards)).flat_map(lambda s: _records(s, per_shard, skew))


def _peak_during(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _runs_written(folder) -> list[str]:
    return [name for _, _, names in os.walk(folder) for name in names if name.endswith(".run")]


def test_a_dataset_ten_times_the_buffer_spills_and_peaks_near_the_budget(tmp_path, monkeypatch):
    """The buffer here is MIN_BUFFER (4 MiB: the budget given is below this process's memory);
    the data is ~36 MiB encoded, and one key's group (skew) is all of it."""
    seen_runs: set[str] = set()

    def total(key, items):
        seen_runs.update(_runs_written(tmp_path / "scratch"))
        return {"key": key, "count": sum(1 for _ in items)}

    backend = SyncBackend(memory="8MB", scratch=str(tmp_path / "scratch"))
    pipeline = _dataset(shards=4, per_shard=30_000, skew=True).group_by(
        lambda r: r["key"], reducer=total, num_output_shards=2
    )
    got, peak = _peak_during(lambda: list(backend.execute(pipeline)))
    assert got == [{"key": "hot", "count": 120_000}]
    assert len(seen_runs) >= 8  # each shard (~9 MiB) spilled at least twice
    assert peak < 2 * scratch.MIN_BUFFER, f"peak {peak / MIB:.1f} MiB"


def test_more_runs_than_a_reduce_task_may_open_merge_in_passes(tmp_path, monkeypatch):
    """A 256 KiB buffer: each shard spills several runs, a reduce task may merge only two at
    once (fan_in), so it merges in passes; the output equals the unbounded run's."""
    monkeypatch.setattr(scratch, "MIN_BUFFER", 256 << 10)
    assert scratch.fan_in(scratch.MIN_BUFFER) == 2
    passes: set[str] = set()

    def total(key, items):
        if not passes:  # the intermediate runs exist once the first key is reduced
            passes.update(n for n in _runs_written(tmp_path / "scratch") if n.startswith("m"))
        return (key, sum(r["n"] for r in items))

    def pipeline():
        return _dataset(shards=3, per_shard=3_000).group_by(
            lambda r: r["key"], reducer=total, num_output_shards=2
        )

    small = SyncBackend(memory="1MB", scratch=str(tmp_path / "scratch"))
    got, peak = _peak_during(lambda: list(small.execute(pipeline())))
    monkeypatch.undo()
    want = list(SyncBackend().execute(pipeline()))
    assert got == want and len(got) == 5000
    assert passes, "no intermediate merge happened"
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB"


def test_deduplicate_with_a_small_buffer_keeps_exactly_one_record_per_key(tmp_path):
    backend = SyncBackend(memory="8MB", scratch=str(tmp_path / "scratch"))
    pipeline = _dataset(shards=4, per_shard=20_000).deduplicate(lambda r: r["key"], 3)
    got, peak = _peak_during(lambda: list(backend.execute(pipeline)))
    assert sorted(r["key"] for r in got) == [f"k{i:05d}" for i in range(5000)]
    assert all(r["n"] == int(r["key"][1:]) for r in got)  # the first of each key survived
    assert peak < 2 * scratch.MIN_BUFFER, f"peak {peak / MIB:.1f} MiB"


@pytest.mark.parametrize(
    "key", ["text", b"bytes", 12345, 2.5, ("a", 1, None), ["x", {"y": 2}], {"b": 1, "a": 2}]
)
def test_the_shuffle_hash_is_the_same_in_every_process(key):
    code = f"from zephyr.shuffle.keys import partition_of; print(partition_of({key!r}, 1000))"
    outs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        outs.add(int(proc.stdout))
    assert outs == {partition_of(key, 1000)}


def test_keys_equal_in_python_go_to_the_same_shard():
    np = pytest.importorskip("numpy")
    assert partition_of(1, 97) == partition_of(1.0, 97) == partition_of(True, 97)
    assert partition_of((1, "a"), 97) == partition_of((1.0, "a"), 97)
    assert partition_of(np.int64(7), 97) == partition_of(7, 97) == partition_of(np.float32(7), 97)
    assert partition_of(np.str_("ab"), 97) == partition_of("ab", 97)
    assert partition_of([np.int32(3), "x"], 97) == partition_of((3, "x"), 97)


def test_numpy_and_python_numbers_that_are_equal_form_one_group():
    np = pytest.importorskip("numpy")
    values = [1, np.int64(1), 2.0, np.int32(2), np.float64(1.0), 3] * 5
    data = Dataset.from_list([values[i::4] for i in range(4)]).flat_map(lambda x: x)
    got = list(
        SyncBackend().execute(
            data.group_by(
                lambda v: v, reducer=lambda k, it: (k, len(list(it))), num_output_shards=7
            )
        )
    )
    assert sorted((int(k), n) for k, n in got) == [(1, 15), (2, 10), (3, 5)]


def test_a_combiner_under_a_small_buffer_shrinks_it_in_place_and_counts_stay_exact(tmp_path):
    """Count per key with a combiner: the buffer fills again and again (~9 MiB of records per
    shard, 4 MiB buffer), is combined in place each time, and the reducer sees a handful of
    partial counts per key, not every record."""
    sizes: list[int] = []

    def partial(key, items):
        return [{"key": key, "n": sum(i["n"] for i in items)}]

    def total(key, items):
        items = list(items)
        sizes.append(len(items))
        return (key, sum(i["n"] for i in items))

    backend = SyncBackend(memory="8MB", scratch=str(tmp_path / "scratch"))
    pipeline = (
        _dataset(shards=4, per_shard=30_000)
        .map(lambda r: {"key": r["key"], "n": 1, "pad": r["text"]})
        .group_by(lambda r: r["key"], reducer=total, combiner=partial, num_output_shards=2)
    )
    got, peak = _peak_during(lambda: list(backend.execute(pipeline)))
    assert sorted(got) == [(f"k{i:05d}", 24) for i in range(5000)]
    assert max(sizes) <= 8  # at most a couple of partial counts per map shard
    assert peak < 2 * scratch.MIN_BUFFER, f"peak {peak / MIB:.1f} MiB"
