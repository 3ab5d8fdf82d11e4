"""group_by, deduplicate, reduce, count, sorted_merge_join and take, end to end on SyncBackend,
ThreadBackend and DaskBackend (the embedded cluster's worker processes): the same results on
each, the semantics the README states, the errors a user gets, and scratch space removed after
every run."""

from __future__ import annotations

import json
import logging
import os
import random

import pytest

from zephyr import Dataset, SyncBackend, ZephyrError
from zephyr.backends.dask import DaskBackend
from zephyr.shuffle.keys import partition_of

DOCS = [
    {"id": i, "lang": ["en", "de", "fr"][i % 3], "url": f"u{i % 7}", "text": f"doc {i}"}
    for i in range(60)
]


def docs(shards: int = 4) -> Dataset:
    """DOCS cut into `shards` source shards."""
    parts = [DOCS[i::shards] for i in range(shards)]
    return Dataset.from_list(parts).flat_map(lambda part: part)


def lang(doc):
    return doc["lang"]


def url(doc):
    return doc["url"]


def count_group(key, items):
    return {"key": key, "n": sum(1 for _ in items)}


def by_shard(backend, dataset) -> list:
    """The dataset's output with the shard of each record, as (shard, record) pairs (map_shard)."""
    tagged = dataset.map_shard(lambda records, info: ((info.shard_idx, r) for r in records))
    return list(backend.execute(tagged))


def test_group_by_calls_the_reducer_once_per_key_with_every_record(backend):
    got = list(backend.execute(docs().group_by(lang, reducer=count_group)))
    assert sorted(got, key=lambda r: r["key"]) == [
        {"key": "de", "n": 20},
        {"key": "en", "n": 20},
        {"key": "fr", "n": 20},
    ]


def test_group_by_keys_come_out_sorted_within_each_output_shard(backend):
    pairs = by_shard(backend, docs().group_by(url, reducer=count_group, num_output_shards=3))
    assert {key for _, r in pairs for key in [r["key"]]} == {f"u{i}" for i in range(7)}
    for shard in range(3):
        keys = [r["key"] for s, r in pairs if s == shard]
        assert keys == sorted(keys)
    # each key lives in exactly one output shard
    assert len({r["key"] for _, r in pairs}) == len(pairs)


def test_group_by_sort_by_orders_the_items_of_each_group(backend):
    def ids(key, items):
        return {"key": key, "ids": [d["id"] for d in items]}

    got = list(backend.execute(docs().group_by(lang, reducer=ids, sort_by=lambda d: -d["id"])))
    for group in got:
        assert group["ids"] == sorted(group["ids"], reverse=True)
        assert len(group["ids"]) == 20


def test_a_reducer_returning_a_generator_gives_all_its_values_and_a_list_is_one_value(backend):
    def every(key, items):
        yield from ({"key": key, "id": d["id"]} for d in items)

    def as_list(key, items):
        return [d["id"] for d in items]

    assert len(list(backend.execute(docs().group_by(lang, reducer=every)))) == 60
    lists = list(backend.execute(docs().group_by(lang, reducer=as_list)))
    assert sorted(len(x) for x in lists) == [20, 20, 20]


def test_the_combiner_pre_aggregates_and_the_result_is_unchanged(backend):
    calls = []

    def combine(key, items):
        return [{"lang": key, "n": sum(i["n"] for i in items)}]

    def total(key, items):
        items = list(items)
        calls.append(len(items))
        return {"lang": key, "count": sum(i["n"] for i in items)}

    pipeline = docs().map(lambda d: {"lang": d["lang"], "n": 1})
    got = list(backend.execute(pipeline.group_by(lang, reducer=total, combiner=combine)))
    assert sorted((r["lang"], r["count"]) for r in got) == [("de", 20), ("en", 20), ("fr", 20)]
    if isinstance(backend, SyncBackend):  # the reducer ran here: it saw one item per map shard
        assert calls == [4, 4, 4]


def test_num_output_shards_defaults_to_the_current_shard_count(backend):
    pairs = by_shard(backend, docs(shards=5).group_by(url, reducer=count_group))
    assert {s for s, _ in pairs} <= set(range(5))
    plan = docs(shards=5).group_by(url, reducer=count_group, num_output_shards=2).compute_plan()
    assert [s.num_shards for s in plan.stages] == [5, 2]


def test_deduplicate_keeps_the_first_record_of_each_key_in_the_datasets_order(backend):
    got = list(backend.execute(docs().deduplicate(url)))
    in_order = [d for shard in range(4) for d in DOCS[shard::4]]  # shard 0's records first
    first = {}
    for d in in_order:
        first.setdefault(d["url"], d)
    assert sorted(got, key=url) == sorted(first.values(), key=url)
    again = list(backend.execute(docs().deduplicate(url)))
    assert again == got


def test_deduplicate_gives_the_same_output_on_every_backend(backend):
    data = [{"k": random.Random(i).randrange(50), "i": i} for i in range(400)]
    parts = [data[i : i + 37] for i in range(0, 400, 37)]
    pipeline = Dataset.from_list(parts).flat_map(lambda p: p).deduplicate(lambda r: r["k"], 3)
    assert list(backend.execute(pipeline)) == list(SyncBackend().execute(pipeline))


def test_reduce_and_count(backend):
    assert list(backend.execute(docs().count())) == [60]
    longest = docs().reduce(lambda ds: max(len(d["text"]) for d in ds), max)
    assert list(backend.execute(longest)) == [6]
    sizes = docs().reduce(
        lambda ds: [sum(1 for _ in ds)], lambda vs: sorted(x for v in vs for x in v)
    )
    assert list(backend.execute(sizes)) == [[15, 15, 15, 15]]


def test_count_of_an_empty_dataset_is_zero_and_reduce_runs_the_global_reducer_once(backend):
    assert list(backend.execute(Dataset.from_list([]).count())) == [0]
    assert list(backend.execute(Dataset.from_list([[]]).flat_map(lambda x: x).count())) == [0]
    assert list(backend.execute(Dataset.from_list([]).reduce(list, list))) == [[]]


def _left(shards=3):
    return docs().group_by(url, reducer=count_group, num_output_shards=shards)


def _names(shards=3, keys=("u0", "u1", "u2", "u3", "u9")):
    rows = [{"url": k, "name": f"site {k}"} for k in keys]
    return Dataset.from_list(rows).group_by(
        url, reducer=lambda k, items: next(items), num_output_shards=shards
    )


def test_sorted_merge_join_inner_merges_the_two_dicts(backend):
    joined = _left().sorted_merge_join(_names(), lambda r: r["key"], url)
    got = sorted(list(backend.execute(joined)), key=lambda r: r["key"])
    assert got == [
        {"key": f"u{i}", "n": n, "url": f"u{i}", "name": f"site u{i}"}
        for i, n in zip(range(4), [9, 9, 9, 9], strict=True)
    ]


def test_sorted_merge_join_left_keeps_unmatched_records_with_none(backend):
    def pair(left, right):
        return (left["key"], right["name"] if right is not None else None)

    joined = _left().sorted_merge_join(_names(), lambda r: r["key"], url, pair, how="left")
    got = sorted(backend.execute(joined))
    assert got == [("u0", "site u0"), ("u1", "site u1"), ("u2", "site u2"), ("u3", "site u3"),
                   ("u4", None), ("u5", None), ("u6", None)]  # fmt: skip


def test_sorted_merge_join_gives_every_pair_of_a_repeated_key(backend):
    def ids(key, items):
        yield from ({"url": key, "left": d["id"]} for d in items)

    left = docs().group_by(url, reducer=ids, num_output_shards=2)
    rows = [{"url": "u1", "right": r} for r in ("a", "b", "c")]
    right = Dataset.from_list(rows).group_by(
        url, reducer=lambda k, items: iter(list(items)), num_output_shards=2
    )
    got = list(backend.execute(left.sorted_merge_join(right, url, url)))
    u1 = [d["id"] for d in DOCS if d["url"] == "u1"]
    assert sorted((r["left"], r["right"]) for r in got) == sorted(
        (i, r) for i in u1 for r in ("a", "b", "c")
    )


def test_sorted_merge_join_refuses_different_shard_counts_before_any_work(tmp_path):
    marker = tmp_path / "ran"

    def touch(doc):
        marker.touch()
        return doc

    joined = _left(3).map(touch).sorted_merge_join(_names(4), lambda r: r["key"], url)
    with pytest.raises(
        ValueError, match=r"same number of shards.*has 3 .* has 4.*num_output_shards"
    ):
        list(SyncBackend().execute(joined))
    assert not marker.exists()


def test_sorted_merge_join_of_an_unsorted_side_is_an_error_not_a_wrong_join():
    left = Dataset.from_list([[{"k": 2}, {"k": 1}]]).flat_map(lambda x: x)
    right = Dataset.from_list([[{"k": 1}, {"k": 2}]]).flat_map(lambda x: x)
    key = lambda r: r["k"]  # noqa: E731
    with pytest.raises(
        ZephyrError, match=r"left side is not sorted by its key \(1 comes after 2\)"
    ):
        list(SyncBackend().execute(left.sorted_merge_join(right, key, key)))


def test_take_returns_the_first_records_in_shard_order_reading_only_the_shards_needed(
    backend, tmp_path
):
    def read(shard):
        (tmp_path / f"read-{shard}").touch()
        return [{"shard": shard, "i": i} for i in range(10)]

    got = Dataset.from_list(range(20)).flat_map(read).take(25, backend)
    assert [(r["shard"], r["i"]) for r in got] == [(s, i) for s in range(3) for i in range(10)][:25]
    assert sorted(os.listdir(tmp_path)) == ["read-0", "read-1", "read-2"]
    assert Dataset.from_list(range(3)).take(10, backend) == [0, 1, 2]
    assert Dataset.from_list(range(3)).take(0, backend) == []


def test_take_after_a_shuffle(backend):
    got = docs().deduplicate(url, num_output_shards=1).take(3, backend)
    assert [d["url"] for d in got] == ["u0", "u1", "u2"]


def test_plan_shows_the_scatter_and_reduce_stages(capsys):
    docs().group_by(lang, reducer=count_group).write_jsonl("out/{shard}.jsonl").plan()
    text = capsys.readouterr().out
    assert "stage 1: flat_map -> scatter  [4 shards, input: source]" in text
    assert "stage 2: reduce -> write_jsonl  [4 shards, input: shuffle of 4 shards]" in text
    assert "group_by(key=lang, reducer=count_group): scatter by key into 4 shards" in text


def test_a_skip_existing_writer_after_a_shuffle_computes_only_missing_outputs(backend, tmp_path):
    pattern = str(tmp_path / "out" / "{shard}.jsonl")
    pipeline = docs().group_by(lang, reducer=count_group, num_output_shards=3)
    paths = list(backend.execute(pipeline.write_jsonl(pattern, skip_existing=True)))
    first = {p: open(p).read() for p in paths}
    os.remove(paths[1])
    ran = []

    def counted(key, items):
        ran.append(key)
        return count_group(key, items)

    again = docs().group_by(lang, reducer=counted, num_output_shards=3)
    assert list(backend.execute(again.write_jsonl(pattern, skip_existing=True))) == paths
    assert {p: open(p).read() for p in paths} == first
    if isinstance(backend, SyncBackend):
        assert len(ran) == sum(1 for line in first[paths[1]].splitlines() if line)


def test_a_key_function_that_raises_names_the_stage_shard_input_and_record(backend):
    def bad_key(doc):
        if doc["id"] == 7:
            raise KeyError("lang")
        return doc["lang"]

    with pytest.raises(ZephyrError) as e:
        list(backend.execute(docs().group_by(bad_key, reducer=count_group)))
    msg = str(e.value)
    assert "stage 'flat_map -> scatter' shard 3" in msg
    assert "group_by(key=" in msg and "bad_key" in msg and "raised KeyError: 'lang'" in msg
    assert "record: {'id': 7" in msg


def test_a_reducer_that_raises_names_the_stage_shard_and_key(backend):
    def bad(key, items):
        if key == "fr":
            raise ValueError("no French")
        return key

    with pytest.raises(ZephyrError) as e:
        list(backend.execute(docs().group_by(lang, reducer=bad)))
    msg = str(e.value)
    assert "stage 'reduce' shard" in msg and "reducer=" in msg and "bad" in msg
    assert "raised ValueError: no French; key: 'fr'" in msg


def test_keys_of_types_that_cannot_be_ordered_are_an_error_naming_both(backend):
    mixed = Dataset.from_list([[1, "a", 2]]).flat_map(lambda x: x)
    with pytest.raises(ZephyrError, match=r"keys of types '(int|str)' and '(str|int)' cannot be "):
        list(backend.execute(mixed.group_by(lambda x: x, reducer=lambda k, it: k)))


def test_set_keys_are_refused_as_they_hash_differently_between_processes():
    data = Dataset.from_list([[{"tags": {"a", "b"}}]]).flat_map(lambda x: x)
    with pytest.raises(ZephyrError, match=r"frozenset does not .*use a sorted tuple"):
        list(SyncBackend().execute(data.deduplicate(lambda d: frozenset(d["tags"]))))


def test_records_of_any_python_type_come_back_unchanged(backend):
    records = [(1, "a"), {"t": (1, 2), "b": b"\x00", "s": {1, 2}}, 3.5, None, [1, (2,)]]
    data = Dataset.from_list([records]).flat_map(lambda x: x)
    got = list(backend.execute(data.deduplicate(lambda r: repr(r))))
    assert sorted(map(repr, got)) == sorted(map(repr, records))
    assert {type(r) for r in got} == {type(r) for r in records}


def test_scratch_is_removed_after_a_run_and_after_a_failed_one(backend, tmp_path):
    scratch = tmp_path / "scratch"
    ok = docs().group_by(lang, reducer=count_group, scratch=str(scratch))
    assert len(list(backend.execute(ok))) == 3
    assert os.listdir(scratch) == []

    def fail(key, items):
        raise RuntimeError("boom")

    bad = docs().group_by(lang, reducer=fail, scratch=str(scratch))
    with pytest.raises(ZephyrError, match="boom"):
        list(backend.execute(bad))
    assert os.listdir(scratch) == []


def test_the_backends_scratch_setting_is_used(tmp_path):
    seen = []

    def spy(key, items):
        seen.extend(os.listdir(tmp_path / "scratch"))
        return key

    backend = SyncBackend(scratch=str(tmp_path / "scratch"))
    assert sorted(backend.execute(docs().group_by(lang, reducer=spy))) == ["de", "en", "fr"]
    assert seen and all(name.startswith("r") for name in seen)
    assert os.listdir(tmp_path / "scratch") == []


def test_group_by_then_write_reads_back_as_json(backend, tmp_path):
    pattern = str(tmp_path / "{shard}.jsonl")
    paths = list(backend.execute(docs().group_by(lang, reducer=count_group).write_jsonl(pattern)))
    rows = [json.loads(line) for p in paths for line in open(p)]
    assert sorted(r["key"] for r in rows) == ["de", "en", "fr"]


def test_a_shuffle_on_a_cluster_with_remote_workers_needs_a_shared_scratch(monkeypatch):
    """A cluster whose worker info names another machine (as a Kubernetes cluster's would: no real
    second machine exists here) is refused a local scratch folder before any task, with the fix;
    given scratch=, the same plan binds to it."""

    class RemoteConnection:
        address = "tcp://10.255.1.7:8786"

        def workers(self):
            return [{"host": "10.255.1.7", "nthreads": 1, "memory_limit": 4e9}]

    monkeypatch.delenv("ZEPHYR_SCRATCH", raising=False)
    backend = DaskBackend("tcp://10.255.1.7:8786")
    monkeypatch.setattr(DaskBackend, "connection", property(lambda self: RemoteConnection()))
    data = Dataset.from_list([1, 2]).deduplicate(str)
    with pytest.raises(ZephyrError, match=r"workers on other machines \(10.255.1.7\).*scratch="):
        backend.execute(data)
    shared = DaskBackend("tcp://10.255.1.7:8786", scratch="memory://shared")
    assert shared._scratch_root(data.compute_plan().stages[0].steps[-1].op) == "memory://shared"
    assert shared._task_budget() == 4e9


def test_a_run_never_started_or_stopped_early_leaves_no_scratch(backend, tmp_path):
    scratch = tmp_path / "scratch"
    pipeline = docs().group_by(url, reducer=count_group, num_output_shards=7, scratch=str(scratch))
    unstarted = backend.execute(pipeline)
    del unstarted
    assert not scratch.exists() or os.listdir(scratch) == []
    results = backend.execute(pipeline)
    next(results)
    results.close()
    assert os.listdir(scratch) == []


def test_the_progress_lines_name_the_scatter_and_reduce_stages(caplog):
    logger = logging.getLogger("zephyr")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="zephyr"):
            list(SyncBackend().execute(docs().group_by(lang, reducer=count_group)))
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records]
    assert any("s1/2] 'flat_map(<lambda>) -> scatter(lang)': 4/4 shards" in m for m in lines)
    assert any("s2/2] 'reduce(count_group)': 4/4 shards" in m and "out 3" in m for m in lines)


def test_two_shuffles_in_a_row_and_a_join_with_an_unshuffled_right_side(backend):
    counts = docs().group_by(url, reducer=count_group, num_output_shards=3)
    by_size = counts.deduplicate(lambda r: r["n"], num_output_shards=2)
    assert sorted(r["n"] for r in backend.execute(by_size)) == [8, 9]
    # the right side: three plain source shards, u1's row in the shard group_by sends u1 to
    parts: list[list] = [[], [], []]
    parts[partition_of("u1", 3)].append({"url": "u1", "site": "one"})
    names = Dataset.from_list(parts).flat_map(lambda x: x)
    joined = list(backend.execute(counts.sorted_merge_join(names, lambda r: r["key"], url)))
    assert joined == [{"key": "u1", "n": 9, "url": "u1", "site": "one"}]


def test_tiny_shards_packed_into_a_task_share_its_runs(dask_backend, tmp_path):
    """2,000 one-record shards run in a few dozen Dask tasks; each task writes one spill file for
    all its shards (not one file per shard), so the reducers open a few dozen runs."""
    scratch = tmp_path / "scratch"

    def files_seen(key, items):
        runs = [n for _, _, names in os.walk(scratch) for n in names if n.endswith(".run")]
        return (key, sum(1 for _ in items), len(runs))

    pipeline = Dataset.from_list(range(2000)).group_by(
        lambda x: x % 10, reducer=files_seen, num_output_shards=4, scratch=str(scratch)
    )
    got = list(dask_backend.execute(pipeline))
    assert sorted((k, n) for k, n, _ in got) == [(k, 200) for k in range(10)]
    assert max(files for _, _, files in got) < 200
