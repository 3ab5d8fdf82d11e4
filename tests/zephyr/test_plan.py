"""The planner: fusion into stages, stage titles and Dask task-group names, descriptions,
template validation.

Pure: no Dask cluster and no I/O (only the import-boundary check spawns a plain Python subprocess).
"""

from __future__ import annotations

import functools

import pytest
from dask.utils import key_split
from distributed.utils import key_split_group

from tests.imports import heavy_modules_loaded
from zephyr import Dataset, Plan, SyncBackend, ThreadBackend, load_jsonl
from zephyr.ops import FilterOp, FlatMapOp, MapOp, MapShardOp, TakePerShardOp, WindowOp, WriteOp
from zephyr.plan import compute_plan
from zephyr.stages import Nested


def double(x):
    return 2 * x


def keep_even(x):
    return x % 2 == 0


def explode(x):
    return [x, x]


def passthrough(records, info):
    return records


FILES = tuple(f"/data/raw/part-{i:04d}.jsonl.gz" for i in range(4))


def files_dataset(files=FILES) -> Dataset:
    """A from_files-like dataset that touches no filesystem (the planner only sees the items)."""
    return Dataset.from_list(files).load_jsonl()


# -- fusion ----------------------------------------------------------------------------------------
def test_record_and_shard_ops_fuse_into_one_stage():
    ds = (
        Dataset.from_list(range(5))
        .map(double)
        .flat_map(explode)
        .filter(keep_even)
        .map_shard(passthrough)
        .window(3)
        .take_per_shard(2)
        .write_jsonl("out/{shard:05d}.jsonl")
    )
    plan = ds.compute_plan()

    assert len(plan.stages) == 1
    (stage,) = plan.stages
    assert [type(op) for op in stage.ops] == [
        MapOp, FlatMapOp, FilterOp, MapShardOp, WindowOp, TakePerShardOp, WriteOp,
    ]  # fmt: skip
    assert stage.num_shards == 5
    assert stage.inputs == (0, 1, 2, 3, 4)
    assert stage.reshard_from is None
    assert stage.writes


def test_source_only_dataset_is_one_identity_stage():
    plan = Dataset.from_list([1, 2, 3]).compute_plan()

    assert len(plan.stages) == 1
    assert plan.stages[0].ops == ()
    assert plan.stages[0].name == "identity"
    assert plan.stages[0].num_shards == 3


def test_reshard_starts_a_new_stage_with_its_shard_count():
    ds = (
        Dataset.from_list(range(10)).map(double).reshard(3).filter(keep_even).reshard(7).map(double)
    )
    plan = ds.compute_plan()

    assert [s.index for s in plan.stages] == [0, 1, 2]
    assert [s.num_shards for s in plan.stages] == [10, 3, 7]
    assert [s.reshard_from for s in plan.stages] == [None, 10, 3]
    assert plan.stages[0].inputs == tuple(range(10))
    assert plan.stages[1].inputs is None and plan.stages[2].inputs is None
    assert [[type(op) for op in s.ops] for s in plan.stages] == [[MapOp], [FilterOp], [MapOp]]
    assert [s.name for s in plan.stages] == ["map", "reshard -> filter", "reshard -> map"]


def test_reshard_right_after_the_source_leaves_an_identity_first_stage():
    plan = Dataset.from_list(range(4)).reshard(2).map(double).compute_plan()

    assert [s.name for s in plan.stages] == ["identity", "reshard -> map"]
    assert [s.num_shards for s in plan.stages] == [4, 2]


# -- nested backends -------------------------------------------------------------------------------
def test_op_on_another_backend_becomes_a_nested_op_in_the_parent_stage():
    executor, other = SyncBackend(), ThreadBackend(max_parallelism=2)
    ds = Dataset.from_list(["a", "b"]).flat_map(explode).map(double, backend=other).filter(bool)
    plan = ds.compute_plan(executor)

    assert len(plan.stages) == 1
    ops = plan.stages[0].ops
    assert [type(op) for op in ops] == [FlatMapOp, Nested, FilterOp]
    nested = ops[1]
    assert nested.backend is other
    assert [type(op) for op in nested.ops] == [MapOp]
    assert nested.ops[0].fn is double
    assert nested.label == "nested[map]"
    assert plan.stages[0].name == "flat_map -> nested[map] -> filter"
    assert "map(double)" in nested.detail


def test_consecutive_ops_on_the_same_other_backend_share_one_nested_op():
    executor, other = SyncBackend(), SyncBackend()
    ds = Dataset.from_list([1]).map(double, backend=other).flat_map(explode, backend=other)
    (stage,) = ds.compute_plan(executor).stages

    assert len(stage.ops) == 1 and isinstance(stage.ops[0], Nested)
    assert [type(op) for op in stage.ops[0].ops] == [MapOp, FlatMapOp]


def test_op_on_the_executing_backend_is_not_nested():
    executor = SyncBackend()
    ds = Dataset.from_list([1]).map(double, backend=executor).flat_map(explode)
    (stage,) = ds.compute_plan(executor).stages

    assert [type(op) for op in stage.ops] == [MapOp, FlatMapOp]


def test_a_backend_equal_in_settings_but_another_object_is_still_nested():
    executor, other = SyncBackend(max_parallelism=2), SyncBackend(max_parallelism=2)
    (stage,) = Dataset.from_list([1]).map(double, backend=other).compute_plan(executor).stages

    assert isinstance(stage.ops[0], Nested) and stage.ops[0].backend is other


# -- names -----------------------------------------------------------------------------------------
def test_stage_title_and_task_group_name_the_users_functions():
    ds = files_dataset().map(double).filter(keep_even).write_jsonl("clean/{shard:05d}.jsonl.gz")
    (stage,) = ds.compute_plan().stages

    assert stage.name == "load_jsonl -> map -> filter -> write_jsonl"
    assert stage.title == "load_jsonl -> map(double) -> filter(keep_even) -> write_jsonl"
    assert stage.task_group("r2") == "r2.s1.load_jsonl.map(double).filter(keep_even).write_jsonl"


class Tokenizer:
    def __call__(self, record):
        return record


def test_titles_name_lambdas_partials_callable_objects_and_shard_ops():
    ds = (
        Dataset.from_list(range(4))
        .map(lambda x: x)
        .filter(functools.partial(keep_even))
        .flat_map(Tokenizer())
        .map_shard(passthrough)
        .take_per_shard(2)
        .reshard(2)
        .window(3)
    )
    first, second = ds.compute_plan().stages

    assert first.title == (
        "map(<lambda>) -> filter(keep_even) -> flat_map(Tokenizer) -> map_shard(passthrough) "
        "-> take_per_shard(2)"
    )
    assert second.title == "reshard -> window(3)"
    assert second.task_group("r1") == "r1.s2.reshard.window(3)"
    assert Dataset.from_list([1]).compute_plan().stages[0].task_group("r1") == "r1.s1.identity"


def test_a_long_chain_keeps_a_bounded_readable_name():
    ds = Dataset.from_list([1])
    for _ in range(30):
        ds = ds.map(double)
    ds = ds.map(keep_even)
    (stage,) = ds.compute_plan().stages

    group = stage.task_group("r7")
    assert len(group) <= 150 and len(stage.title) <= 150
    assert group.startswith("r7.s1.map(double).map(double).")
    assert group.endswith(".map(keep_even)")
    left_out = int(group.split(".+")[1].split(".")[0])
    assert group.count("map(double)") + left_out == 30
    assert "+" in stage.title and stage.title.endswith(" -> map(keep_even)")


def test_a_nested_stage_is_named_after_its_parent_stage():
    ds = Dataset.from_list(range(3)).map(double, backend=SyncBackend()).filter(keep_even)
    (stage,) = ds.compute_plan(ThreadBackend()).stages
    assert stage.title == "nested[map(double)] -> filter(keep_even)"
    (nested,) = [op for op in stage.ops if isinstance(op, Nested)]
    assert nested.stage.task_group("r3.s1") == "r3.s1.nested[map(double)]"


@pytest.mark.parametrize(
    "ds",
    [
        files_dataset().map(double).filter(keep_even).write_jsonl("o/{shard}.jsonl"),
        Dataset.from_list(range(3)).flat_map(explode).map_shard(passthrough).window(2),
        Dataset.from_list(range(3)).reshard(2).take_per_shard(1),
        Dataset.from_list(range(3)).map(double, backend=SyncBackend()),
        Dataset.from_list(range(3)).map(lambda x: x).filter(functools.partial(keep_even)),
        Dataset.from_list(range(3)),
    ],
    ids=["reader-writer", "shard-ops", "reshard", "nested", "lambda-partial", "identity"],
)
def test_dask_groups_a_stages_tasks_under_exactly_its_task_group_name(ds):
    """The scheduler names a task's group with dask.utils.key_split (distributed's
    key_split_group for string keys): every key of a stage, retries included, lands in a group
    reading exactly Stage.task_group."""
    for stage in ds.compute_plan(SyncBackend()).stages:
        group = stage.task_group("r12")
        assert group.startswith(f"r12.s{stage.index + 1}.")
        for key in (f"{group}-3-a1b2c3d4", f"{group}-0-a1b2c3d4-retry1", f"{group}-12-00000000"):
            assert key_split(key) == group, key
            assert key_split_group(key) == group, key


def test_reader_shows_under_its_own_name_but_other_flat_maps_do_not():
    (stage,) = Dataset.from_list(FILES).flat_map(load_jsonl).flat_map(explode).compute_plan().stages
    assert stage.name == "load_jsonl -> flat_map"


# -- describe / plan() -----------------------------------------------------------------------------
def test_describe_lists_stages_and_op_details():
    ds = (
        files_dataset()
        .map(double)
        .filter(keep_even)
        .reshard(2)
        .window(16)
        .take_per_shard(3)
        .write_jsonl("clean/{shard:05d}.jsonl.gz")
    )
    plan = ds.compute_plan()
    text = plan.describe()

    assert isinstance(plan, Plan)
    assert str(plan) == text
    lines = text.splitlines()
    assert lines[0].startswith("Plan: 2 stage(s) from from_list")
    assert "(4 shards)" in lines[0]
    assert "stage 1: load_jsonl -> map -> filter  [4 shards, input: source]" in text
    assert "stage 2: reshard -> window -> take_per_shard -> write_jsonl  [2 shards, " in text
    assert "input: reshard of 4 shards]" in text
    for detail in (
        "flat_map(load_jsonl)",
        "map(double)",
        "filter(keep_even)",
        "window(16)",
        "take_per_shard(3)",
        "write_jsonl('clean/{shard:05d}.jsonl.gz')",
    ):
        assert detail in text
    # stage headers come before their op details, in stage order
    assert text.index("stage 1:") < text.index("map(double)") < text.index("stage 2:")
    assert text.index("stage 2:") < text.index("window(16)")


def test_describe_shows_a_nested_backend():
    other = ThreadBackend(max_parallelism=3)
    text = (
        Dataset.from_list([1, 2]).map(double, backend=other).compute_plan(SyncBackend()).describe()
    )

    assert "nested[map]" in text
    assert "ThreadBackend(max_parallelism=3)" in text
    assert "map(double)" in text


def test_dataset_plan_prints_the_description_and_returns_the_plan(capsys):
    ds = Dataset.from_list([1, 2, 3]).map(double).reshard(1).write_jsonl("out.jsonl")
    plan = ds.plan()

    out = capsys.readouterr().out
    assert isinstance(plan, Plan)
    assert out.strip() == plan.describe().strip()
    assert "stage 1: map" in out
    assert "stage 2: reshard -> write_jsonl" in out


def test_planning_is_repeatable_and_does_not_change_the_dataset():
    ds = files_dataset().map(double).reshard(2)
    before = repr(ds)
    assert ds.compute_plan().describe() == ds.compute_plan().describe()
    assert repr(ds) == before


# -- output template validation --------------------------------------------------------------------
def test_several_shards_without_shard_field_is_refused():
    ds = Dataset.from_list(range(16)).write_jsonl("out/part.jsonl")
    with pytest.raises(ValueError, match="has no '{shard}'") as info:
        ds.compute_plan()
    message = str(info.value)
    assert "add '{shard:05d}'" in message
    assert "'out/part.jsonl'" in message
    assert "16 shards" in message


def test_single_shard_may_write_to_a_fixed_path():
    plan = Dataset.from_list(range(16)).reshard(1).write_jsonl("out/all.jsonl").compute_plan()
    assert plan.stages[-1].writes


def test_several_shards_after_reshard_without_shard_field_is_refused():
    ds = Dataset.from_list([1]).reshard(4).write_jsonl("out/part.jsonl")
    with pytest.raises(ValueError, match="has no '{shard}'.*4 shards"):
        ds.compute_plan()


def test_execute_refuses_a_bad_template_before_running_anything(tmp_path):
    calls = tmp_path / "calls"

    def touch(x):
        calls.write_text("called")
        return x

    ds = Dataset.from_list(range(3)).map(touch).write_jsonl(str(tmp_path / "out.jsonl"))
    with pytest.raises(ValueError, match="has no '{shard}'"):
        SyncBackend().execute(ds)
    assert not calls.exists()
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("pattern", ["out/{name}-{shard}.jsonl", "out/{}.jsonl", "out/{0}.jsonl"])
def test_unknown_template_field_is_refused(pattern):
    ds = Dataset.from_list(range(2)).write_jsonl(pattern)
    with pytest.raises(ValueError, match="not a template field"):
        ds.compute_plan()


def test_unknown_template_field_message_names_the_field_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"uses \{name\}") as info:
        Dataset.from_list(range(2)).write_jsonl("out/{name}-{shard}.jsonl").compute_plan()
    for field in ("{shard}", "{total}", "{basename}"):
        assert field in str(info.value)


def test_basename_after_reshard_is_refused():
    ds = files_dataset().reshard(2).write_jsonl("out/{basename}.jsonl.gz")
    with pytest.raises(ValueError, match=r"uses \{basename\}.*reshard"):
        ds.compute_plan()


def test_basename_from_input_files_is_accepted():
    plan = files_dataset().write_jsonl("out/{basename}.jsonl.gz").compute_plan()
    assert plan.stages[0].writes


def test_basename_of_inputs_that_are_not_paths_is_refused():
    with pytest.raises(ValueError, match=r"\{basename\}.*not file paths"):
        Dataset.from_list([1, 2]).write_jsonl("out/{basename}.jsonl").compute_plan()


def test_basename_shared_by_several_inputs_needs_the_shard_field():
    files = ("/a/part-0.jsonl", "/b/part-0.jsonl.gz")
    with pytest.raises(ValueError, match="share a basename"):
        files_dataset(files).write_jsonl("out/{basename}.jsonl").compute_plan()
    files_dataset(files).write_jsonl("out/{basename}-{shard}.jsonl").compute_plan()


@pytest.mark.parametrize(
    "pattern",
    ["out/{shard}.jsonl", "out/{shard:05d}-of-{total:05d}.jsonl", "out/{{literal}}-{shard}.jsonl"],
)
def test_valid_templates_are_accepted(pattern):
    Dataset.from_list(range(3)).write_jsonl(pattern).compute_plan()


def test_callable_pattern_is_not_validated_as_a_template():
    def name(shard, total):
        return f"out/{shard}-of-{total}.jsonl"

    (stage,) = Dataset.from_list(range(3)).write_jsonl(name).compute_plan().stages
    assert "write_jsonl('test_callable_pattern_is_not_validated_as_a_template.name')" in (
        stage.ops[0].detail
    )


def test_compute_plan_function_matches_the_dataset_method():
    ds = Dataset.from_list(range(3)).map(double).reshard(2)
    direct = compute_plan(ds._source, ds._ops, None)
    assert direct.describe() == ds.compute_plan().describe()


# -- import boundary -------------------------------------------------------------------------------
def test_importing_zephyr_does_not_import_dask_or_pyarrow():
    code = (
        "import zephyr.plan, zephyr.dataset, zephyr\n"
        "from zephyr import Dataset, SyncBackend\n"
        "Dataset.from_list([1, 2]).map(str).compute_plan(SyncBackend()).describe()\n"
    )
    heavy = heavy_modules_loaded(code, ("dask", "distributed", "pyarrow"))
    assert heavy == [], f"heavy modules imported: {heavy}"


# -- where skipped records go (on_error="skip") ----------------------------------------------------
def test_a_skipping_stage_quarantines_beside_its_own_writer_named_after_each_output():
    plan = (
        files_dataset()
        .map(double, on_error="skip")
        .write_jsonl("gs://b/clean/{basename}.jsonl.gz")
        .compute_plan()
    )
    (stage,) = plan.stages
    assert stage.quarantine.path(2, 4, FILES[2]) == "gs://b/clean/_quarantine/part-0002.jsonl"
    assert "      bad records (on_error='skip') -> gs://b/clean/_quarantine/" in plan.describe()
    # a folder given on the op keeps the names
    stage = (
        files_dataset()
        .map(double, on_error="skip", quarantine="q/")
        .write_jsonl("out/{shard}/data.jsonl")
        .compute_plan()
        .stages[0]
    )
    assert stage.quarantine.path(3, 4, FILES[3]) == "q/data.jsonl"


def test_a_stage_without_a_writer_uses_the_next_writers_folder_or_the_one_given():
    ds = files_dataset().filter(keep_even, on_error="skip").reshard(2).map(double)
    first, second = ds.write_jsonl("out/{shard:03d}.jsonl").compute_plan().stages
    assert first.quarantine.path(1, 4, FILES[1]) == "out/_quarantine/stage1-00001.jsonl"
    assert second.quarantine is None  # it skips nothing
    given = files_dataset().map(double, on_error="skip", quarantine="mem/q").compute_plan()
    assert given.stages[0].quarantine.path(0, 4, FILES[0]) == "mem/q/stage1-00000.jsonl"
    # a reader told to skip bad lines counts as skipping
    reader = Dataset.from_list(FILES).load_jsonl(on_error="skip").write_jsonl("o/{shard}.jsonl")
    assert reader.compute_plan().stages[0].quarantine is not None
    assert (
        files_dataset().write_jsonl("o/{shard}.jsonl").compute_plan().stages[0].quarantine is None
    )


def test_skipping_without_a_writer_needs_a_folder_named_before_anything_runs(tmp_path):
    ds = Dataset.from_list([1, 2, 3]).map(double, on_error="skip")
    with pytest.raises(
        ValueError,
        match=r"map\(double\) has on_error='skip' but stage 1 'map' "
        r"writes no files and no later stage does.*pass quarantine='<folder>'",
    ):
        ds.compute_plan()
    with pytest.raises(ValueError, match=r"several quarantine folders"):
        Dataset.from_list([1]).map(double, on_error="skip", quarantine="a").filter(
            bool, on_error="skip", quarantine="b"
        ).compute_plan()
    with pytest.raises(ValueError, match=r"not supported on an op given another backend"):
        Dataset.from_list([1]).map(
            double, backend=SyncBackend(), on_error="skip", quarantine="q"
        ).compute_plan()
    with pytest.raises(ValueError, match=r"map\(double\) has on_error='skip' but comes after "):
        Dataset.from_list([1]).write_jsonl("o.jsonl").map(double, on_error="skip").compute_plan()


def test_the_repr_of_a_plan_over_thousands_of_files_is_one_short_line(tmp_path):
    for i in range(3000):
        (tmp_path / f"part-{i:05d}.jsonl").touch()
    ds = Dataset.from_files(str(tmp_path), "*.jsonl").load_jsonl().map(double).reshard(4)
    plan = ds.compute_plan()
    for text in (repr(plan), repr(plan.stages[0]), repr(plan.source), repr(ds)):
        assert len(text) < 200, text[:300]
        assert "part-00001" not in text and "\n" not in text, text
    assert "shards 3000 -> 4" in repr(plan)
    assert "3000 shards" in repr(plan.stages[0])
