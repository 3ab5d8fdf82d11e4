"""The physical plan's nouns: typed stages and steps, stage titles and Dask task-group names, and
the typed inputs of shards.

Pure: no Dask cluster and no I/O.
"""

from __future__ import annotations

import functools

import pytest
from dask.utils import key_split
from distributed.utils import key_split_group

from tests.zephyr.planning import (
    FILES,
    Tokenizer,
    double,
    explode,
    files_dataset,
    keep_even,
    passthrough,
)
from zephyr import Dataset, SyncBackend, ThreadBackend, load_jsonl
from zephyr.kernels import run_task
from zephyr.stages import (
    Map,
    MapStage,
    Nested,
    NestedStage,
    ReshardSlices,
    SourceItem,
    Write,
    WriteStage,
)


# -- names -----------------------------------------------------------------------------------------
def test_stage_title_and_task_group_name_the_users_functions():
    ds = files_dataset().map(double).filter(keep_even).write_jsonl("clean/{shard:05d}.jsonl.gz")
    (stage,) = ds.compute_plan().stages

    assert stage.name == "load_jsonl -> map -> filter -> write_jsonl"
    assert stage.title == "load_jsonl -> map(double) -> filter(keep_even) -> write_jsonl"
    assert stage.task_group("r2") == "r2.s1.load_jsonl.map(double).filter(keep_even).write_jsonl"


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


# -- typed stages and steps ------------------------------------------------------------------------
def test_a_typical_pipeline_plans_into_typed_stages_of_steps():
    executor, other = SyncBackend(), ThreadBackend(max_parallelism=2)
    ds = (
        files_dataset()
        .map(double, backend=other)
        .filter(keep_even)
        .reshard(2)
        .map(double)
        .write_jsonl("clean/{shard:05d}.jsonl.gz")
    )
    first, second = ds.compute_plan(executor).stages

    # records kept for the reshard, then a stage whose shards commit files
    assert type(first) is MapStage and type(second) is WriteStage
    assert not first.writes and second.writes
    assert [type(step) for step in first.steps] == [Map, Nested, Map]
    load, nested, keep = first.steps
    assert [op.title for op in load.ops] == ["load_jsonl"]
    assert nested.backend is other and [op.fn for op in nested.ops] == [double]
    assert [op.pred for op in keep.ops] == [keep_even]
    # the write shares the task of the map before it: one stage, two steps
    assert [type(step) for step in second.steps] == [Map, Write]
    assert second.steps[1].op is second.writer
    assert second.writer.pattern == "clean/{shard:05d}.jsonl.gz"
    assert second.reshard_from == 4 and second.inputs is None
    # a stage's ops are its steps' entries, in order: what plans list and errors count
    assert [op.title for op in first.ops] == [
        "load_jsonl",
        "nested[map(double)]",
        "filter(keep_even)",
    ]

    # the nested step is a stage of its own for the other backend, named after its parent
    inner = nested.stage
    assert type(inner) is NestedStage and inner.num_shards == -1
    assert [type(step) for step in inner.steps] == [Map]
    assert inner.name == "nested[map]" and inner.ops == nested.ops


def test_a_writer_in_the_middle_of_a_stage_keeps_its_task():
    (stage,) = (
        Dataset.from_list(range(2)).write_jsonl("o/{shard}.jsonl").map(str.upper).compute_plan()
    ).stages
    assert type(stage) is WriteStage
    assert [type(step) for step in stage.steps] == [Write, Map]


# -- typed shard inputs ----------------------------------------------------------------------------
def test_shards_get_source_items_then_slices_of_the_kept_upstream_outputs():
    first, second = (
        Dataset.from_list(["a", "b", "c"]).map(str.upper).reshard(2).compute_plan().stages
    )

    sources = first.shard_inputs([], [])
    assert sources == [(0, SourceItem("a")), (1, SourceItem("b")), (2, SourceItem("c"))]
    assert [type(spec) for _, spec in sources] == [SourceItem] * 3
    assert sources[1][1].input == "b"
    kept = [run_task(first, [shard], keep=True) for shard in sources]
    assert [result.outputs for result in kept] == [["A"], ["B"], ["C"]]  # flat: one list per task

    slices = second.shard_inputs(kept, [len(result.outputs) for result in kept])
    assert [type(spec) for _, spec in slices] == [ReshardSlices, ReshardSlices]
    assert [spec.input for _, spec in slices] == [None, None]  # no source item after a reshard
    assert [list(spec.records()) for _, spec in slices] == [["A"], ["B", "C"]]
    assert run_task(second, slices, keep=False).outputs == [["A"], ["B", "C"]]
