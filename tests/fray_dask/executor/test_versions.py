"""Versions, output paths and configs of a DAG (pure: nothing runs), the checks on what a user
passes, and `executor_main`'s command line (dry runs only)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import pytest

from fray_dask.executor import (
    THIS_OUTPUT_PATH,
    Executor,
    ExecutorStep,
    InputName,
    executor_main,
    output_path_of,
    this_output_path,
    unwrap_versioned_value,
    versioned,
)
from fray_dask.executor.jobs import job_name
from fray_dask.executor.versions import StepGraph


def noop(config) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int
    label: str = "x"


@dataclasses.dataclass(frozen=True)
class Config:
    inner: Inner
    layers: list
    source: InputName | None = None
    output_path: str = THIS_OUTPUT_PATH


def _graph(*steps: ExecutorStep, prefix: str = "/p") -> StepGraph:
    return StepGraph(prefix, list(steps))


def test_the_version_is_marins_sorted_json_and_the_path_its_md5():
    """The same version JSON and hash as Marin's executor, so a migrated DAG finds its outputs."""
    step = ExecutorStep("tokenized/web", noop, {"tokenizer": versioned("llama3"), "n": 4})
    planned = _graph(step).of(step)
    expected = '{"config": {"tokenizer": "llama3"}, "dependencies": [], "name": "tokenized/web"}'
    digest = hashlib.md5(expected.encode()).hexdigest()
    assert planned.digest == digest
    assert planned.output_path == f"/p/tokenized/web-{digest[:6]}"


def test_versions_built_from_their_inputs_json_are_the_sorted_json_of_the_whole():
    """Each version's JSON is spliced from its inputs' (linear work); it must equal
    `json.dumps(version, sort_keys=True)` of the nested version, pseudo-dependencies included."""
    raw = ExecutorStep("raw", noop, {"n": versioned(1), "tags": versioned({"b": 1, "a": [2]})})
    left = ExecutorStep("left", noop, {"src": raw, "k": versioned("é")})
    right = ExecutorStep("right", noop, {"src": raw / "x"})
    both = ExecutorStep("both", noop, {"a": left, "b": right, "c": (raw / "y").nonblocking()})
    for planned in _graph(both).order:
        whole = json.dumps(planned.version, sort_keys=True)
        assert hashlib.md5(whole.encode()).hexdigest() == planned.digest, planned.name


def test_versioned_values_have_dotted_keys_and_only_they_change_the_path():
    def step(size: int, label: str, layer: int) -> ExecutorStep:
        config = Config(Inner(versioned(size), label), [versioned(layer), "free"])
        return ExecutorStep("train", noop, config)

    base = _graph(step(1, "a", 8)).order[0]
    assert base.version["config"] == {"inner.size": 1, "layers.[0]": 8}
    assert _graph(step(1, "b", 8)).order[0].output_path == base.output_path
    assert _graph(step(2, "a", 8)).order[0].output_path != base.output_path
    assert _graph(step(1, "a", 9)).order[0].output_path != base.output_path


def test_a_changed_dependency_changes_every_path_after_it():
    def chain(n: int) -> list[ExecutorStep]:
        first = ExecutorStep("a", noop, {"n": versioned(n)})
        second = ExecutorStep("b", noop, {"src": output_path_of(first, "part")})
        third = ExecutorStep("c", noop, {"src": second})
        return [first, second, third]

    one, two = _graph(*chain(1)), _graph(*chain(2))
    assert [p.name for p in one.order] == ["a", "b", "c"]
    for p, q in zip(one.order, two.order, strict=True):
        assert p.output_path != q.output_path
    b = one.order[1]
    assert b.version["config"] == {"src": "DEP[0]/part"}
    assert b.version["dependencies"] == [one.order[0].version]
    assert b.config == {"src": f"{one.order[0].output_path}/part"}


def test_a_nonblocking_input_enters_the_version_but_is_not_run():
    trainer = ExecutorStep("train", noop, {"steps": versioned(100)})
    evaluate = ExecutorStep("eval", noop, {"ckpt": (trainer / "checkpoints").nonblocking()})
    graph = _graph(evaluate)
    planned = graph.of(evaluate)
    assert planned.dependencies == []
    assert planned.version["pseudo_dependencies"] == [graph.of(trainer).version]
    assert graph.of(trainer).pseudo_only
    assert "pseudo_dependencies" not in graph.of(trainer).version
    # Asked for directly as well, the trainer is run.
    assert not _graph(evaluate, trainer).of(trainer).pseudo_only


def test_the_config_gets_real_paths_everywhere(tmp_path):
    raw = ExecutorStep("raw", noop, {})
    step = ExecutorStep(
        "clean",
        noop,
        Config(
            Inner(versioned(3)),
            [raw / "a" / "b", InputName.hardcoded("gs://other/x"), InputName.hardcoded("rel")],
            source=output_path_of(raw),
            output_path=this_output_path("out"),
        ),
    )
    graph = _graph(step)
    raw_path, own = graph.paths[raw], graph.paths[step]
    assert graph.of(step).config == Config(
        Inner(3), [f"{raw_path}/a/b", "gs://other/x", "/p/rel"], raw_path, f"{own}/out"
    )


def test_same_version_is_one_step_and_override_paths_win(caplog):
    a = ExecutorStep("x", noop, {"v": versioned(1)})
    b = ExecutorStep("x", noop, {"v": versioned(1)})
    graph = _graph(a, b)
    assert len(graph.order) == 1 and graph.paths[a] == graph.paths[b]
    moved = ExecutorStep("y", noop, {}, override_output_path="fixed/y")
    with caplog.at_level(logging.WARNING, logger="fray_dask.executor"):
        assert _graph(moved).paths[moved] == "/p/fixed/y"
    assert "override_output_path /p/fixed/y differs from its computed path /p/y-" in caplog.text
    assert _graph(moved.with_output_path("gs://b/y")).order[0].output_path == "gs://b/y"
    clash = ExecutorStep("z", noop, {}, override_output_path="fixed/y")
    with pytest.raises(ValueError, match="'y' and 'z' have different versions but the same"):
        _graph(moved, clash)


def test_mistakes_are_named():
    with pytest.raises(ValueError, match="already versioned"):
        versioned(versioned(1))
    with pytest.raises(ValueError, match="inputs and output paths are always part"):
        versioned(InputName.hardcoded("x"))
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ExecutorStep(" spaced ", noop, {})
    with pytest.raises(ValueError, match="fn must be a function"):
        ExecutorStep("x", "noop", {})
    with pytest.raises(TypeError, match=r"at 'opt' is a object .*no stable JSON form"):
        _graph(ExecutorStep("x", noop, {"opt": versioned(object())}))
    with pytest.raises(ValueError, match="dict keys must be strings"):
        _graph(ExecutorStep("x", noop, {1: versioned(2)}))
    with pytest.raises(ValueError, match="stale_after .* must exceed heartbeat_interval"):
        Executor("/tmp/p", heartbeat_interval=30, stale_after=30)
    with pytest.raises(ValueError, match="max_concurrent must be a whole number >= 1, got 0"):
        Executor("/tmp/p").run([], max_concurrent=0)
    with pytest.raises(ValueError, match="needs a prefix"):
        Executor("")


def test_versioned_values_unwrap_and_job_names_are_valid():
    assert unwrap_versioned_value(Inner(versioned(2))) == Inner(2)
    assert unwrap_versioned_value({"a": [versioned(1)]}) == {"a": [1]}
    assert job_name("documents/fineweb edu (v2)") == "documents-fineweb-edu-v2"
    assert len(job_name("x" * 100)) == 63


def test_executor_main_reads_the_prefix_from_the_environment(tmp_path, monkeypatch, capsys):
    step = ExecutorStep("hello", noop, {"v": versioned(1)})
    monkeypatch.delenv("FRAY_EXECUTOR_PREFIX", raising=False)
    with pytest.raises(SystemExit, match="--prefix PATH.*or set FRAY_EXECUTOR_PREFIX"):
        executor_main([step], args=[])
    monkeypatch.setenv("FRAY_EXECUTOR_PREFIX", str(tmp_path / "env"))
    (outcome,) = executor_main([step], args=["--dry-run"])
    assert outcome.output_path.startswith(f"{tmp_path}/env/hello-")
    assert f"run  hello -> {outcome.output_path}" in capsys.readouterr().out
    (outcome,) = executor_main([step], prefix="ignored", args=["--dry-run", "--prefix", "/x"])
    assert outcome.output_path.startswith("/x/hello-")
    with pytest.raises(SystemExit, match="--max-concurrent must be >= 1"):
        executor_main([step], args=["--max-concurrent", "0"])
    assert not (tmp_path / "env").exists()
