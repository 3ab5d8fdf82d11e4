"""Output path templates: the planner refuses a template that cannot name each shard, before
anything runs.

Pure: no Dask cluster and no I/O.
"""

from __future__ import annotations

import pytest

from tests.zephyr.planning import files_dataset
from zephyr import Dataset, SyncBackend


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
