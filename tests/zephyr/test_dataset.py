"""End-to-end Dataset behaviour, run on every backend (sync, threads, Dask), same expectations.

User functions live at module level (or are closures over plain data) so Dask workers can load them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from zephyr import Dataset, ShardInfo, SyncBackend, ZephyrError, create_backend, load_jsonl

dask = pytest.mark.dask


# -- user functions --------------------------------------------------------------------------------
def double(x):
    return 2 * x


def is_even(x):
    return x % 2 == 0


def upto(n):
    return range(n)


def describe_shard(records, info):
    """One output per shard: what map_shard received."""
    return [
        {
            "records_is_iterator": isinstance(records, Iterator),
            "info_is_shardinfo": isinstance(info, ShardInfo),
            "shard_idx": info.shard_idx,
            "total_shards": info.total_shards,
            "input": info.input,
            "records": list(records),
        }
    ]


def shard_sizes(records, info):
    return [(info.shard_idx, info.total_shards, info.input, list(records))]


SLOW_SHARDS = 5


def slower_when_earlier(x):
    time.sleep((SLOW_SHARDS - 1 - x) * 0.04)
    return x


class ParseFailure(Exception):
    pass


def fail_on_three(x):
    if x == 3:
        raise ParseFailure(f"cannot parse {x}")
    return x


def fail_on_odd_in_filter(x):
    if x % 2:
        raise KeyError("odd")
    return True


def fail_in_shard(records, info):
    for rec in records:
        if rec == 5:
            raise ZeroDivisionError("shard fn failed")
        yield rec


def write_jsonl(path: Path, records) -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))


def run(backend, ds) -> list:
    return list(backend.execute(ds))


# -- sources ---------------------------------------------------------------------------------------
@dask
def test_from_list_one_shard_per_item(backend):
    ds = Dataset.from_list(["a", "b", "c"]).map_shard(shard_sizes)
    assert run(backend, ds) == [(0, 3, "a", ["a"]), (1, 3, "b", ["b"]), (2, 3, "c", ["c"])]


@dask
def test_from_iterable_consumes_the_iterable_once_and_can_run_twice(backend):
    gen = (i * i for i in range(4))
    ds = Dataset.from_iterable(gen)
    assert list(gen) == []  # consumed when the dataset was built
    assert ds.num_input_shards == 4
    assert run(backend, ds) == [0, 1, 4, 9]
    assert run(backend, ds) == [0, 1, 4, 9]


@dask
def test_from_files_is_a_sorted_glob_one_shard_per_file(backend, tmp_path):
    for name in ["c.jsonl", "a.jsonl", "b.jsonl", "skip.txt"]:
        write_jsonl(tmp_path / name, [{"file": name}])
    (tmp_path / "dir.jsonl").mkdir()  # a directory matching the glob is not a shard
    ds = Dataset.from_files(str(tmp_path / "*.jsonl"))

    expected = [str(tmp_path / n) for n in ["a.jsonl", "b.jsonl", "c.jsonl"]]
    assert run(backend, ds) == expected
    records = run(backend, ds.flat_map(load_jsonl))
    assert records == [{"file": "a.jsonl"}, {"file": "b.jsonl"}, {"file": "c.jsonl"}]
    inputs = run(backend, ds.map_shard(shard_sizes))
    assert [(i, total, inp) for i, total, inp, _ in inputs] == [
        (i, 3, p) for i, p in enumerate(expected)
    ]


def test_from_files_skips_hidden_files_such_as_unfinished_write_temporaries(tmp_path):
    """A run killed mid-write leaves `.part.jsonl.tmp-<id>` beside its outputs; reading the
    folder back with `*` must not pick up that partial file."""
    write_jsonl(tmp_path / "part-0.jsonl", [{"i": 0}])
    (tmp_path / ".part-1.jsonl.tmp-0123abcd").write_text('{"i": 1')
    assert Dataset.from_files(str(tmp_path / "*")).compute_plan().source.items == (
        str(tmp_path / "part-0.jsonl"),
    )
    assert Dataset.from_files(str(tmp_path / ".*")).compute_plan().source.items == (
        str(tmp_path / ".part-1.jsonl.tmp-0123abcd"),
    )


def test_from_files_leaves_out_underscore_names_a_wildcard_matched(tmp_path):
    """`_quarantine/` (skipped records) and `_SUCCESS`-style markers sit beside outputs; a glob
    over the output folder reads only the data, unless the pattern names them."""
    write_jsonl(tmp_path / "part-0.jsonl", [{"i": 0}])
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "_quarantine").mkdir()
    write_jsonl(tmp_path / "_quarantine" / "part-0.jsonl", [{"bad": 1}])
    (tmp_path / "sub" / ".hidden").mkdir(parents=True)
    write_jsonl(tmp_path / "sub" / ".hidden" / "x.jsonl", [{"i": 2}])
    write_jsonl(tmp_path / "sub" / "part-1.jsonl", [{"i": 1}])

    def found(pattern: str) -> list[str]:
        items = Dataset.from_files(str(tmp_path / pattern)).compute_plan().source.items
        return [os.path.relpath(p, tmp_path) for p in items]

    assert found("*") == ["part-0.jsonl"]
    assert found("**") == ["part-0.jsonl", "sub/part-1.jsonl"]
    assert found("**/*.jsonl") == ["part-0.jsonl", "sub/part-1.jsonl"]
    assert found("_quarantine/*.jsonl") == ["_quarantine/part-0.jsonl"]
    assert found("_*") == ["_SUCCESS"]


@dask
def test_from_files_two_argument_form(backend, tmp_path):
    (tmp_path / "raw").mkdir()
    for i in (2, 0, 1):
        write_jsonl(tmp_path / "raw" / f"part-{i}.jsonl", [{"i": i}, {"i": i + 10}])
    write_jsonl(tmp_path / "raw" / "other.json", [{"i": -1}])

    for directory in (str(tmp_path / "raw"), str(tmp_path / "raw") + "/"):
        ds = Dataset.from_files(directory, "*.jsonl").load_jsonl().map(lambda r: r["i"])
        assert run(backend, ds) == [0, 10, 1, 11, 2, 12]


@dask
def test_from_files_on_a_memory_filesystem_keeps_the_protocol(backend):
    root = f"memory://zephyr-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        for name in ["b.jsonl", "a.jsonl"]:
            with fsspec.open(f"{root}/{name}", "wb") as f:
                f.write(b'{"x": 1}\n')
        for ds in (Dataset.from_files(f"{root}/*.jsonl"), Dataset.from_files(root, "*.jsonl")):
            paths = run(backend, ds)
            # the protocol is kept (memory:// paths may be spelled with the root slash)
            assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.jsonl", "b.jsonl"]
            assert all(p.startswith("memory://") for p in paths)
            assert [p.replace("memory:///", "memory://") for p in paths] == [
                f"{root}/a.jsonl",
                f"{root}/b.jsonl",
            ]
            for p in paths:
                with fsspec.open(p, "rb") as f:
                    assert f.read() == b'{"x": 1}\n'
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)


def test_from_files_reads_memory_files_in_process():
    root = f"memory://zephyr-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        with fsspec.open(f"{root}/in/0.jsonl", "wb") as f:
            f.write(b'{"x": 1}\n{"x": 2}\n')
        ds = Dataset.from_files(f"{root}/in/*.jsonl").load_jsonl()
        assert run(SyncBackend(), ds) == [{"x": 1}, {"x": 2}]
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)


def test_from_files_with_no_match_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-here" / "*.jsonl.gz")
    with pytest.raises(FileNotFoundError, match="nothing-here/\\*.jsonl.gz") as info:
        Dataset.from_files(pattern)
    assert "empty_glob_ok=True" in str(info.value)

    with pytest.raises(FileNotFoundError, match="nothing-here/\\*.jsonl"):
        Dataset.from_files(str(tmp_path / "nothing-here"), "*.jsonl")


@pytest.mark.parametrize("root", ["local", "memory"])
def test_from_files_on_a_directory_says_it_is_one_and_how_to_glob_it(tmp_path, root):
    folder = str(tmp_path / "raw") if root == "local" else f"memory://zephyr-dir-{uuid.uuid4().hex}"
    fs, path = fsspec.core.url_to_fs(folder)
    fs.makedirs(path, exist_ok=True)
    for name in ["part-0.jsonl.gz", "part-1.jsonl.gz", "README.txt"]:
        with fs.open(f"{path}/{name}", "wb") as f:
            f.write(b"")
    try:
        for given in (folder, folder + "/"):
            with pytest.raises(FileNotFoundError) as info:
                Dataset.from_files(given)
            message = str(info.value)
            assert f"{given!r} is a directory" in message
            assert f"from_files({given!r}, '*.jsonl.gz')" in message
            assert f"from_files({folder + '/*'!r})" in message
        # the hinted globs work as written
        assert Dataset.from_files(folder, "*.jsonl.gz").num_input_shards == 2
        assert Dataset.from_files(folder + "/*").num_input_shards == 3
    finally:
        if root == "memory":
            fs.rm(path, recursive=True)


@dask
def test_empty_glob_ok_gives_an_empty_dataset(backend, tmp_path):
    ds = Dataset.from_files(str(tmp_path / "*.jsonl"), empty_glob_ok=True)
    assert ds.num_input_shards == 0
    assert run(backend, ds.load_jsonl().map(double)) == []
    assert run(backend, ds.reshard(3).map_shard(shard_sizes)) == [
        (0, 3, None, []),
        (1, 3, None, []),
        (2, 3, None, []),
    ]


# -- record ops ------------------------------------------------------------------------------------
@dask
def test_map_flat_map_filter(backend):
    ds = Dataset.from_list([1, 2, 3])
    assert run(backend, ds.map(double)) == [2, 4, 6]
    assert run(backend, ds.flat_map(upto)) == [0, 0, 1, 0, 1, 2]
    assert run(backend, ds.flat_map(upto).filter(is_even)) == [0, 0, 0, 2]
    assert run(backend, ds.flat_map(upto).map(double).filter(lambda x: x > 0)) == [2, 2, 4]
    # a flat_map that yields nothing drops the shard's records; the order of the rest is kept
    assert run(backend, Dataset.from_list([0, 3, 0, 2]).flat_map(upto)) == [0, 1, 2, 0, 1]


@dask
def test_filter_true_keeps(backend):
    ds = Dataset.from_list(range(6))
    assert run(backend, ds.filter(lambda x: True)) == list(range(6))
    assert run(backend, ds.filter(lambda x: False)) == []
    assert run(backend, ds.filter(is_even)) == [0, 2, 4]


@dask
def test_map_shard_receives_an_iterator_and_shard_info(backend):
    ds = Dataset.from_list([[1, 2], [3], []]).flat_map(lambda xs: xs).map_shard(describe_shard)
    out = run(backend, ds)

    assert [o["shard_idx"] for o in out] == [0, 1, 2]
    assert {o["total_shards"] for o in out} == {3}
    assert [o["input"] for o in out] == [[1, 2], [3], []]
    assert [o["records"] for o in out] == [[1, 2], [3], []]
    assert all(o["records_is_iterator"] and o["info_is_shardinfo"] for o in out)


@dask
def test_map_shard_after_reshard_has_no_input(backend):
    ds = Dataset.from_list(["x", "y", "z"]).reshard(2).map_shard(describe_shard)
    out = run(backend, ds)

    assert [(o["shard_idx"], o["total_shards"], o["input"]) for o in out] == [
        (0, 2, None),
        (1, 2, None),
    ]
    assert [o["records"] for o in out] == [["x"], ["y", "z"]]


@dask
def test_map_shard_may_return_any_iterable_and_change_the_count(backend):
    def summarise(records, info):
        values = list(records)
        yield f"shard {info.shard_idx}"
        yield sum(values)

    ds = Dataset.from_list([range(3), range(4)]).flat_map(lambda r: r).map_shard(summarise)
    assert run(backend, ds) == ["shard 0", 3, "shard 1", 6]


def _as_dict(records, info):
    return {"shard": info.shard_idx, "n": sum(1 for _ in records)}


@dask
@pytest.mark.parametrize(
    "returned, what, parts",
    [
        (_as_dict, "dict", "its keys"),
        (lambda records, info: "summary", "str", "its characters"),
        (lambda records, info: b"\x00\x01", "bytes", "its byte values"),
    ],
    ids=["dict", "str", "bytes"],
)
def test_map_shard_returning_a_dict_str_or_bytes_is_refused(backend, returned, what, parts):
    ds = Dataset.from_list([[1, 2], [3]]).flat_map(lambda xs: xs).map_shard(returned)
    message = rf"map_shard.*returned a {what}, and iterating it would give {parts}"
    with pytest.raises(ZephyrError, match=message):
        run(backend, ds)


def test_flat_map_returning_a_dict_or_none_is_refused():
    ds = Dataset.from_list([{"a": 1}])
    with pytest.raises(ZephyrError, match=r"returned a dict.*\(`yield record`\)"):
        run(SyncBackend(), ds.flat_map(lambda doc: doc))
    with pytest.raises(ZephyrError, match=r"returned None; yield records"):
        run(SyncBackend(), ds.flat_map(lambda doc: None))
    # lists, tuples, generators and other iterables of records still work
    assert run(SyncBackend(), ds.flat_map(lambda doc: [doc, doc])) == [{"a": 1}, {"a": 1}]


@dask
def test_window_and_batch_group_each_shard_with_a_shorter_last_window(backend):
    ds = Dataset.from_list([7, 3]).flat_map(upto)
    expected = [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]  # windows never span shards
    assert run(backend, ds.window(3)) == expected
    assert run(backend, ds.batch(3)) == expected
    assert run(backend, ds.window(1)) == [[x] for x in [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]]
    assert run(backend, ds.window(100)) == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2]]


@dask
def test_take_per_shard(backend):
    ds = Dataset.from_list([5, 1, 0, 3]).flat_map(upto)
    assert run(backend, ds.take_per_shard(2)) == [0, 1, 0, 0, 1]
    assert run(backend, ds.take_per_shard(0)) == []
    assert run(backend, ds.take_per_shard(10)) == [0, 1, 2, 3, 4, 0, 0, 1, 2]


@dask
def test_take_per_shard_stops_reading_the_rest_of_the_shard(backend):
    # An endless shard: only a lazy take can finish.
    ds = Dataset.from_list([0, 1]).flat_map(lambda s: itertools.count(100 * s)).take_per_shard(3)
    assert run(backend, ds) == [0, 1, 2, 100, 101, 102]


# -- reshard and order -----------------------------------------------------------------------------
@dask
def test_reshard_keeps_order_and_near_equal_sizes(backend):
    ds = Dataset.from_list([4, 0, 7, 2, 1, 3]).flat_map(lambda n: [n] * n)
    records = run(backend, ds)
    assert len(records) == 17

    out = run(backend, ds.reshard(5).map_shard(shard_sizes))
    assert [(i, total, inp) for i, total, inp, _ in out] == [(i, 5, None) for i in range(5)]
    chunks = [recs for *_, recs in out]
    assert list(itertools.chain.from_iterable(chunks)) == records
    sizes = [len(c) for c in chunks]
    assert sum(sizes) == 17 and max(sizes) - min(sizes) <= 1

    assert run(backend, ds.reshard(5)) == records
    assert run(backend, ds.reshard(1).map_shard(shard_sizes)) == [(0, 1, None, records)]


@dask
def test_reshard_to_more_shards_than_records(backend):
    out = run(backend, Dataset.from_list(["a", "b"]).reshard(4).map_shard(shard_sizes))
    chunks = [recs for *_, recs in out]
    assert len(chunks) == 4
    assert sorted(len(c) for c in chunks) == [0, 0, 1, 1]
    assert list(itertools.chain.from_iterable(chunks)) == ["a", "b"]


@dask
def test_chained_reshards_and_ops_between_them(backend):
    ds = (
        Dataset.from_list(range(4))
        .flat_map(lambda i: range(10 * i, 10 * i + 5))
        .reshard(3)
        .filter(is_even)
        .map(double)
        .reshard(2)
        .window(4)
    )
    evens = [2 * x for i in range(4) for x in range(10 * i, 10 * i + 5) if x % 2 == 0]
    out = run(backend, ds)
    assert list(itertools.chain.from_iterable(out)) == evens
    assert all(1 <= len(w) <= 4 for w in out)


@dask
def test_results_come_in_shard_order_even_when_earlier_shards_are_slower(backend):
    ds = Dataset.from_list(range(SLOW_SHARDS)).map(slower_when_earlier)
    assert run(backend, ds) == list(range(SLOW_SHARDS))


@dask
def test_results_in_order_with_many_small_shards(backend):
    # Enough shards that the Dask backend packs several into one task.
    ds = Dataset.from_list(range(300)).flat_map(lambda i: [i, -i]).filter(lambda x: x % 3 != 0)
    assert run(backend, ds) == [x for i in range(300) for x in (i, -i) if x % 3 != 0]


# -- execution entry points ------------------------------------------------------------------------
@dask
def test_backend_execute_and_dataset_execute_agree(backend):
    ds = Dataset.from_list(range(5)).map(double).filter(lambda x: x != 4)
    assert run(backend, ds) == list(ds.execute(backend)) == [0, 2, 6, 8]


@dask
def test_dataset_execute_defaults_to_the_source_backend(backend):
    ds = Dataset.from_list([1, 2, 3], backend=backend).map(double)
    assert list(ds.execute()) == [2, 4, 6]


@dask
def test_building_a_dataset_runs_nothing(backend, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    marks_dir = str(marks)

    def touch(x):
        Path(marks_dir, str(x)).touch()
        return x

    ds = Dataset.from_list([1, 2, 3]).map(touch).filter(is_even).reshard(2).map(touch)
    ds.compute_plan(backend)
    repr(ds)
    results = backend.execute(ds)  # an iterator: still nothing has run
    assert os.listdir(marks) == []

    assert list(results) == [2]
    assert sorted(os.listdir(marks)) == ["1", "2", "3"]


@dask
def test_a_dataset_can_execute_twice_with_the_same_results(backend, tmp_path):
    ds = Dataset.from_list(range(6)).flat_map(upto).reshard(3).window(2).take_per_shard(2)
    first = run(backend, ds)
    assert first == run(backend, ds)
    assert first == list(ds.execute(backend))
    assert first  # not trivially empty


@dask
def test_methods_return_new_datasets_and_leave_the_original_unchanged(backend):
    base = Dataset.from_list([1, 2, 3])
    before = repr(base)
    doubled = base.map(double)
    evens = base.filter(is_even)
    resharded = base.reshard(1)

    assert repr(base) == before
    assert doubled is not base and evens is not base and resharded is not base
    assert run(backend, base) == [1, 2, 3]
    assert run(backend, doubled) == [2, 4, 6]
    assert run(backend, evens) == [2]
    assert run(backend, doubled.map(double)) == [4, 8, 12]
    assert run(backend, doubled) == [2, 4, 6]
    assert len(base.compute_plan().stages) == 1 and len(resharded.compute_plan().stages) == 2


# -- errors ----------------------------------------------------------------------------------------
@dask
def test_user_error_names_stage_shard_input_and_record(backend):
    ds = Dataset.from_list([1, 2, 3, 4]).map(double).map(lambda x: x // 2).map(fail_on_three)
    with pytest.raises(ZephyrError, match=r"stage 'map -> map -> map' shard 2 \(input 3\)") as info:
        run(backend, ds)

    err = info.value
    message = str(err)
    assert "map(fail_on_three)" in message
    assert "ParseFailure: cannot parse 3" in message
    assert "record: 3" in message
    assert type(err.__cause__) is ParseFailure
    assert str(err.__cause__) == "cannot parse 3"
    # the traceback of the user function is reachable from the error
    assert "fail_on_three" in "".join(traceback.format_exception(err))


@dask
def test_user_error_in_a_file_pipeline_names_the_file(backend, tmp_path):
    path = tmp_path / "part-7.jsonl"
    write_jsonl(path, [{"v": 1}, {"v": 3}])
    ds = (
        Dataset.from_files(str(tmp_path), "*.jsonl")
        .load_jsonl()
        .map(lambda r: fail_on_three(r["v"]))
    )

    with pytest.raises(ZephyrError, match=r"stage 'load_jsonl -> map' shard 0") as info:
        run(backend, ds)
    assert str(path) in str(info.value)
    assert "record: {'v': 3}" in str(info.value)
    assert isinstance(info.value.__cause__, ParseFailure)


@dask
def test_user_error_in_filter_and_map_shard(backend):
    with pytest.raises(ZephyrError, match=r"stage 'filter' shard 1 \(input 1\).*KeyError") as info:
        run(backend, Dataset.from_list([0, 1, 2]).filter(fail_on_odd_in_filter))
    assert type(info.value.__cause__) is KeyError

    ds = Dataset.from_list([[1, 2], [4, 5, 6]]).flat_map(lambda xs: xs).map_shard(fail_in_shard)
    with pytest.raises(ZephyrError, match=r"stage 'flat_map -> map_shard' shard 1") as info:
        run(backend, ds)
    assert "map_shard(fail_in_shard)" in str(info.value)
    assert type(info.value.__cause__) is ZeroDivisionError


@dask
def test_user_error_after_reshard_names_the_resharded_shard(backend):
    ds = Dataset.from_list([0, 1, 2, 3, 4, 5]).reshard(3).map(fail_on_three)
    with pytest.raises(ZephyrError, match=r"stage 'reshard -> map' shard 1: ") as info:
        run(backend, ds)
    assert "record: 3" in str(info.value)
    assert type(info.value.__cause__) is ParseFailure


@dask
def test_error_in_a_packed_shard_names_that_shard(backend):
    # Many tiny shards: the Dask backend runs several per task; the error still names the shard.
    ds = Dataset.from_list(range(300)).map(lambda x: x - 214).map(fail_on_three)
    with pytest.raises(ZephyrError, match=r"stage 'map -> map' shard 217 \(input 217\)") as info:
        run(backend, ds)
    assert type(info.value.__cause__) is ParseFailure


# -- ops on another backend (nested) ---------------------------------------------------------------
@dask
def test_op_on_another_backend_runs_nested_with_the_same_results(backend):
    inner = SyncBackend()
    ds = Dataset.from_list([[1, 2], [], [3]]).flat_map(lambda xs: xs)
    nested = ds.map(double, backend=inner).flat_map(upto, backend=inner).filter(is_even)
    assert run(backend, nested) == run(backend, ds.map(double).flat_map(upto).filter(is_even))
    assert run(backend, nested) == [0, 0, 2, 0, 2, 4]


@dask
def test_user_error_in_a_nested_op_has_the_original_cause(backend):
    inner = SyncBackend()
    ds = (
        Dataset.from_list([[1, 2], [3, 4]])
        .flat_map(lambda xs: xs)
        .map(fail_on_three, backend=inner)
    )
    with pytest.raises(ZephyrError, match=r"shard 1 \(input \[3, 4\]\)") as info:
        run(backend, ds)

    err = info.value
    assert "map(fail_on_three)" in str(err)
    assert "record: 3" in str(err)
    assert "ParseFailure: cannot parse 3" in str(err)
    # described once, chained to the user's exception (not to another ZephyrError)
    assert type(err.__cause__) is ParseFailure, f"cause is {type(err.__cause__).__name__}: {err}"
    assert "raised ZephyrError" not in str(err)


def test_unknown_backend_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backend 'ray'") as info:
        create_backend("ray")
    for name in ("dask", "sync", "threads"):
        assert name in str(info.value)


def test_create_backend_makes_the_named_backend():
    from zephyr import ThreadBackend

    assert isinstance(create_backend("sync"), SyncBackend)
    with create_backend("threads", max_parallelism=2) as threads:
        assert isinstance(threads, ThreadBackend)
        assert threads.config.max_parallelism == 2
        assert list(threads.execute(Dataset.from_list([1, 2]).map(double))) == [2, 4]
    with pytest.raises(ValueError, match="unknown backend config key"):
        create_backend("sync", max_paralelism=2)


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda ds: ds.window(0), ValueError),
        (lambda ds: ds.window(-2), ValueError),
        (lambda ds: ds.window(2.5), ValueError),
        (lambda ds: ds.window(True), ValueError),
        (lambda ds: ds.batch(0), ValueError),
        (lambda ds: ds.reshard(0), ValueError),
        (lambda ds: ds.reshard("4"), ValueError),
        (lambda ds: ds.take_per_shard(-1), ValueError),
        (lambda ds: ds.map(3), TypeError),
        (lambda ds: ds.flat_map("load_jsonl"), TypeError),
        (lambda ds: ds.filter(None), TypeError),
        (lambda ds: ds.map_shard([]), TypeError),
    ],
    ids=[
        "window0", "window-neg", "window-float", "window-bool", "batch0", "reshard0",
        "reshard-str", "take-neg", "map-int", "flat_map-str", "filter-none", "map_shard-list",
    ],
)  # fmt: skip
def test_bad_arguments_raise_when_the_op_is_added(build, error):
    ds = Dataset.from_list([1, 2, 3])
    with pytest.raises(error):
        build(ds)


def test_bad_argument_messages_name_the_method_and_value():
    ds = Dataset.from_list([1])
    with pytest.raises(ValueError, match=r"Dataset.window takes an integer >= 1, got 0"):
        ds.window(0)
    with pytest.raises(ValueError, match=r"Dataset.reshard takes an integer >= 1, got 0"):
        ds.reshard(0)
    with pytest.raises(TypeError, match=r"Dataset.map takes a function, got int 3"):
        ds.map(3)


class _FailOrRunOn:
    """Shard 0 fails once shard 1 is running; shard 1 runs on for 3 s, then leaves a marker."""

    def __init__(self, folder: Path):
        self.started = folder / "sibling-started"
        self.marker = folder / "sibling-finished"

    def __call__(self, x):
        if x == 0:
            deadline = time.monotonic() + 10
            while not self.started.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise ValueError("shard 0 is bad")
        self.started.touch()
        time.sleep(3)
        self.marker.touch()
        return x


def test_thread_backend_waits_for_running_siblings_only_up_to_a_deadline(
    monkeypatch, caplog, tmp_path
):
    """After a failure the ThreadBackend lets running tasks finish (so none is mid-write when the
    error arrives), but a sibling that runs on is not waited for past the deadline."""
    import zephyr.backends.threads as threads

    monkeypatch.setattr(threads, "CANCEL_WAIT_SECONDS", 0.5)
    backend = threads.ThreadBackend(max_parallelism=2)
    fn = _FailOrRunOn(tmp_path)
    marker = fn.marker
    logger = logging.getLogger("zephyr")
    logger.addHandler(caplog.handler)
    try:
        with pytest.raises(ZephyrError, match="shard 0 is bad"):
            list(Dataset.from_list([0, 1]).map(fn).execute(backend))
        assert not marker.exists(), "the error waited for the sibling past the deadline"
    finally:
        logger.removeHandler(caplog.handler)
        backend.close()
    assert marker.exists()  # close() still lets it finish
    assert "1 cancelled task(s) still running after 0.5 s" in caplog.text
