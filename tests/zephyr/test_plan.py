"""The planner: fusion into stages, nested backends, descriptions, where skipped records go, and
the import boundary of planning.

Pure: no Dask cluster and no I/O (only the import-boundary checks spawn a plain Python subprocess).
"""

from __future__ import annotations

import pytest

from tests.imports import heavy_modules_loaded
from tests.zephyr.planning import FILES, double, explode, files_dataset, keep_even, passthrough
from zephyr import Dataset, Plan, SyncBackend, ThreadBackend
from zephyr.ops import FilterOp, FlatMapOp, MapOp, MapShardOp, TakePerShardOp, WindowOp, WriteOp
from zephyr.plan import compute_plan
from zephyr.stages import Nested


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


# `import zephyr.plan` first runs the package's __init__, which loads the public API (backends
# included): to see what planning itself needs, the probe imports it under an empty `zephyr`.
PLAN_ALONE = """
import sys
from zephyr.ops import MapOp, ReshardOp, SourceOp, WriteOp
from zephyr.plan import compute_plan
source = SourceOp(("raw/a.jsonl.gz", "raw/b.jsonl.gz"), "files", "'raw/*'")
ops = (MapOp(str, on_error="skip"), ReshardOp(1), WriteOp("jsonl", "out/{shard}.jsonl.gz"))
assert "out/_quarantine/" in compute_plan(source, ops).describe()
backends = sorted(m for m in sys.modules if m.startswith("zephyr.backends"))
assert not backends, f"zephyr.plan imported {backends}"
"""


def test_planning_loads_no_filesystem_codec_or_backend():
    heavy = heavy_modules_loaded(
        PLAN_ALONE,
        ("fsspec", "msgspec", "zstandard", "isal", "dask", "distributed", "pyarrow"),
    )
    assert heavy == [], f"zephyr.plan imported {heavy}"


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
