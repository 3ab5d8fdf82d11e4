"""The Curriculum: unlock, graduation, start thresholds, sampling, metrics and checkpoints (local
and gs://) in-process; then as the shared actor the seeds create, on the embedded cluster and
across the loss of its worker."""

from __future__ import annotations

import collections
import json
import os
import uuid

import numpy as np
import pytest

from fray_dask import DaskContext, get_default_job_ctx, set_job_ctx
from fray_dask.rl import (
    Curriculum,
    CurriculumConfig,
    LessonConfig,
    LessonDependency,
    RolloutStats,
    get_or_create_curriculum_actor,
)
from tests.imports import heavy_modules_loaded
from tests.zephyr.test_io_gcs import gcs  # noqa: F401 - the gs:// emulator fixture, reused


def arith_then_algebra(threshold: float = 0.0, **config) -> CurriculumConfig:
    """'algebra' depends on 'arith'; both decide plateaus over 10 rewards; 'arith' graduates at
    0.9 success."""
    return CurriculumConfig(
        lessons={
            "arith": LessonConfig("arith", stop_threshold=0.9, plateau_window=10),
            "algebra": LessonConfig(
                "algebra",
                dependencies=[LessonDependency("arith", reward_threshold=threshold)],
                plateau_window=10,
            ),
        },
        **config,
    )


def report(curriculum, lesson: str, rewards, mode: str = "training", step=None) -> None:
    curriculum.update_lesson_stats([RolloutStats(lesson, r) for r in rewards], mode, step)


def state(curriculum, lesson: str) -> str:
    return curriculum.get_metrics()["lessons"][lesson]["state"]


# -- unlock and graduation ------------------------------------------------------------------------
def test_a_lesson_unlocks_exactly_when_its_dependency_plateaus_above_the_threshold():
    # Success after k rewards of 1.0: 1 - 0.5 * 0.9^k; it passes 0.99 at k = 38. The window of 10
    # is flat from k = 10 on.
    curriculum = Curriculum(arith_then_algebra(threshold=0.99))
    for _ in range(37):
        report(curriculum, "arith", [1.0])
        assert state(curriculum, "algebra") == "locked"
        assert list(curriculum.compute_sampling_weights()) == ["arith"]
    report(curriculum, "arith", [1.0])
    assert state(curriculum, "algebra") == "active"
    assert list(curriculum.compute_sampling_weights()) == ["algebra", "arith"]

    plateau_only = Curriculum(arith_then_algebra(threshold=0.0))
    report(plateau_only, "arith", [1.0] * 9)  # success 0.81 but only 9 rewards: no plateau yet
    assert state(plateau_only, "algebra") == "locked"
    report(plateau_only, "arith", [1.0])
    assert state(plateau_only, "algebra") == "active"


def test_a_dependency_that_still_varies_keeps_its_dependent_locked_and_unlocking_is_final():
    curriculum = Curriculum(arith_then_algebra(threshold=0.5))
    report(curriculum, "arith", [1.0, 0.5] * 30)  # all successes (s ~ 1), but std/mean = 1/3
    assert state(curriculum, "algebra") == "locked"
    report(curriculum, "arith", [0.5] * 10)
    assert state(curriculum, "algebra") == "active"
    report(curriculum, "arith", [0.0, 1.0] * 10)  # no longer plateaued, nor above 0.5
    assert state(curriculum, "algebra") == "active"


def test_graduation_needs_eval_data():
    curriculum = Curriculum(arith_then_algebra())
    report(curriculum, "arith", [1.0] * 40)  # success 0.99 >= 0.9 and plateaued
    assert curriculum.check_graduation("arith") is False
    assert state(curriculum, "arith") == "active"
    report(curriculum, "arith", [1.0], mode="eval")
    assert curriculum.check_graduation("arith") is True
    assert state(curriculum, "arith") == "graduated"
    assert curriculum.compute_sampling_weights() == {"algebra": 1.0}
    assert {curriculum.sample_lesson(seed) for seed in range(50)} == {"algebra"}
    report(curriculum, "arith", [0.0] * 20)  # graduated stays graduated
    assert state(curriculum, "arith") == "graduated"
    with pytest.raises(ValueError, match="unknown lesson 'geometry'"):
        curriculum.check_graduation("geometry")


def test_sampling_with_no_active_lesson_names_the_locked_and_graduated_ones():
    curriculum = Curriculum(arith_then_algebra(threshold=0.999))
    report(curriculum, "arith", [1.0] * 40)
    report(curriculum, "arith", [1.0], mode="eval")
    with pytest.raises(RuntimeError, match=r"locked .*\['algebra'\]; graduated: \['arith'\]"):
        curriculum.sample_lesson(0)
    metrics = curriculum.get_metrics()
    assert (metrics["active_lessons"], metrics["sampling_weights"]) == (0, {})


def test_a_lesson_waits_while_its_eval_success_is_below_start_threshold():
    config = CurriculumConfig(
        lessons={"a": LessonConfig("a"), "b": LessonConfig("b", start_threshold=0.5)}
    )
    curriculum = Curriculum(config)
    assert list(curriculum.compute_sampling_weights()) == ["a", "b"]  # no eval data yet
    report(curriculum, "b", [0.0] * 10, mode="eval")  # eval success 0.5 * 0.9^10 = 0.17
    assert list(curriculum.compute_sampling_weights()) == ["a"]
    assert state(curriculum, "b") == "active" and curriculum.get_metrics()["active_lessons"] == 2
    report(curriculum, "b", [1.0] * 20, mode="eval")
    assert list(curriculum.compute_sampling_weights()) == ["a", "b"]


# -- sampling -------------------------------------------------------------------------------------
def three_lessons() -> Curriculum:
    lessons = {i: LessonConfig(i) for i in ("c", "a", "b")}
    curriculum = Curriculum(CurriculumConfig(lessons=lessons, minimum_sample_probability=0.05))
    report(curriculum, "a", [1.0] * 30)  # s = 0.98: little left to learn
    report(curriculum, "b", [1.0, 0.0] * 15)  # s ~ 0.5
    return curriculum  # c: no data, prior 0.5 and the full freshness bonus


def test_sample_lesson_is_deterministic_per_seed_and_follows_the_weights():
    curriculum = three_lessons()
    weights = curriculum.compute_sampling_weights()
    assert list(weights) == ["a", "b", "c"]
    assert weights["c"] > weights["b"] > weights["a"] >= 0.05 / 1.05
    ids, p = list(weights), np.array(list(weights.values()))
    draws = [curriculum.sample_lesson(seed) for seed in range(4000)]
    assert draws[:200] == [three_lessons().sample_lesson(seed) for seed in range(200)]
    assert draws[:200] == [ids[np.random.default_rng(s).choice(3, p=p)] for s in range(200)]
    counts = collections.Counter(draws)
    for lesson, weight in weights.items():
        assert counts[lesson] / 4000 == pytest.approx(weight, abs=0.03)


# -- reports and metrics --------------------------------------------------------------------------
def test_bad_reports_are_refused_whole_and_name_what_is_wrong():
    curriculum = three_lessons()
    before = curriculum.get_metrics()
    report(curriculum, "a", [1.0])
    with pytest.raises(ValueError, match=r"unknown lesson 'd'; the curriculum's lessons are \['a'"):
        curriculum.update_lesson_stats([RolloutStats("b", 1.0), RolloutStats("d", 1.0)])
    with pytest.raises(ValueError, match="mode must be 'training' or 'eval', got 'train'"):
        report(curriculum, "a", [1.0], mode="train")
    with pytest.raises(ValueError, match="lesson 'b': a reward must be a finite number, got nan"):
        report(curriculum, "b", [1.0, float("nan")])
    with pytest.raises(TypeError, match=r"takes a list of RolloutStats; wrap the one in \[ \]"):
        curriculum.update_lesson_stats(RolloutStats("a", 1.0))
    after = curriculum.get_metrics()
    assert after["lessons"]["b"] == before["lessons"]["b"]  # the valid item was not applied
    assert after["lessons"]["a"]["samples"] == before["lessons"]["a"]["samples"] + 1


def test_the_step_is_the_largest_one_reported():
    curriculum = three_lessons()
    for step, expected in [(5, 5), (3, 5), (None, 5), (9, 9)]:
        report(curriculum, "a", [1.0], step=step)
        assert curriculum.get_metrics()["step"] == expected


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return type(value) in (int, float, str, bool, type(None))


def test_metrics_summarise_the_lessons_in_plain_python():
    fresh = Curriculum(arith_then_algebra()).get_metrics()
    assert fresh == {
        "step": 0,
        "total_lessons": 2,
        "unlocked_lessons": 1,
        "active_lessons": 1,
        "graduated_lessons": 0,
        "sampling_entropy": 0.0,
        "effective_lessons": 1.0,
        "mean_success": 0.5,
        "sampling_weights": {"arith": 1.0},
        "lessons": {
            "algebra": {
                "state": "locked",
                "success": 0.5,
                "samples": 0,
                "eval_success": None,
                "eval_samples": 0,
            },
            "arith": {
                "state": "active",
                "success": 0.5,
                "samples": 0,
                "eval_success": None,
                "eval_samples": 0,
            },
        },
    }
    metrics = three_lessons().get_metrics()
    weights = list(metrics["sampling_weights"].values())
    assert metrics["sampling_entropy"] == pytest.approx(-sum(w * np.log(w) for w in weights))
    assert metrics["effective_lessons"] == pytest.approx(1 / sum(w * w for w in weights))
    assert 1 < metrics["effective_lessons"] < 3
    success = [metrics["lessons"][i]["success"] for i in "abc"]
    assert metrics["mean_success"] == pytest.approx(sum(success) / 3)
    assert _plain(metrics) and json.loads(json.dumps(metrics, allow_nan=False)) == metrics


# -- checkpoints ----------------------------------------------------------------------------------
def test_a_checkpoint_restores_the_whole_state_on_local_disk(tmp_path):
    original = three_lessons()
    report(original, "c", [0.0], mode="eval", step=12)
    folder = str(tmp_path / "ckpt")
    assert original.save_checkpoint(folder) == f"file://{folder}/curriculum_state.json"
    assert os.listdir(folder) == ["curriculum_state.json"]  # no temporary file left beside it
    copy = Curriculum(original.config)
    assert copy.restore_checkpoint(folder) is True
    assert copy.get_metrics() == original.get_metrics()
    busy = three_lessons()
    report(busy, "c", [1.0] * 50, step=99)
    busy.restore_checkpoint(folder)  # replaces the state, merges nothing
    assert busy.get_metrics() == original.get_metrics()
    for c in (original, copy):  # the reward histories came back, not only the summaries
        report(c, "b", [1.0] * 5)
    assert copy.get_metrics() == original.get_metrics()
    assert [copy.sample_lesson(s) for s in range(50)] == [
        original.sample_lesson(s) for s in range(50)
    ]


def test_restoring_from_a_folder_without_a_checkpoint_changes_nothing(tmp_path):
    curriculum = three_lessons()
    before = curriculum.get_metrics()
    assert curriculum.restore_checkpoint(str(tmp_path / "nothing-here")) is False
    assert curriculum.get_metrics() == before


def test_a_checkpoint_restores_into_a_grown_config_but_not_a_shrunk_one(tmp_path):
    three_lessons().save_checkpoint(str(tmp_path))
    smaller = Curriculum(CurriculumConfig(lessons={"a": LessonConfig("a"), "b": LessonConfig("b")}))
    with pytest.raises(ValueError, match=r"has lesson 'c', which the config lacks"):
        smaller.restore_checkpoint(str(tmp_path))
    lessons = {i: LessonConfig(i) for i in "abcd"}
    grown = Curriculum(CurriculumConfig(lessons=lessons, checkpoint_path=str(tmp_path)))
    metrics = grown.get_metrics()["lessons"]
    assert metrics["a"]["samples"] == 30 and metrics["d"]["samples"] == 0
    assert metrics["d"]["state"] == "active"  # new, without dependencies: unlocked


def test_the_curriculum_checkpoints_itself_every_checkpoint_steps_updates(tmp_path):
    folder = tmp_path / "auto"
    config = arith_then_algebra(checkpoint_path=str(folder), checkpoint_steps=3)
    curriculum = Curriculum(config)
    saved = folder / "curriculum_state.json"
    for n in (1, 2):
        report(curriculum, "arith", [1.0])
        assert not saved.exists(), f"saved after update {n}"
    report(curriculum, "arith", [1.0])
    assert saved.exists()
    assert Curriculum(config).get_metrics()["lessons"]["arith"]["samples"] == 3  # restored

    def saved_samples() -> int:
        return json.loads(saved.read_text())["stats"]["arith"]["training_stats"]["total_samples"]

    report(curriculum, "arith", [1.0, 1.0])
    report(curriculum, "arith", [1.0])
    assert saved_samples() == 3  # updates 4 and 5 are not saved
    report(curriculum, "arith", [1.0])
    assert saved_samples() == 7  # 3 + 2 + 1 + 1 rewards
    assert Curriculum(config).get_metrics() == curriculum.get_metrics()


def test_a_checkpoint_round_trips_through_gcs(gcs):  # noqa: F811 - the imported fixture
    folder = f"gs://bucket/curriculum-{uuid.uuid4().hex[:8]}"
    config = arith_then_algebra(checkpoint_path=folder, checkpoint_steps=2)
    curriculum = Curriculum(config)  # nothing there yet: starts fresh
    report(curriculum, "arith", [1.0] * 10)
    report(curriculum, "algebra", [0.0, 1.0], step=4)
    gcs.invalidate_cache()
    assert gcs.find(folder) == [f"{folder.removeprefix('gs://')}/curriculum_state.json"]
    restored = Curriculum(config)
    assert restored.get_metrics() == curriculum.get_metrics()
    assert restored.get_metrics()["lessons"]["algebra"]["state"] == "active"


def test_importing_the_curriculum_loads_no_dask_pyarrow_jax_or_scipy():
    heavy = ("dask", "distributed", "pyarrow", "jax", "scipy", "fsspec")
    code = "import fray_dask.rl\nfray_dask.rl.Curriculum\nfray_dask.rl.CurriculumConfig"
    assert heavy_modules_loaded(code, heavy) == []


# -- the shared actor -----------------------------------------------------------------------------
@pytest.mark.dask
def test_the_seeds_create_actor_call_shares_one_curriculum(monkeypatch, dask_backend):
    monkeypatch.delenv("FRAY_CLUSTER_SPEC", raising=False)
    name = f"curriculum-{uuid.uuid4().hex[:8]}"
    config = arith_then_algebra(actor_name=name)
    local = Curriculum(config)
    ctx = get_default_job_ctx()
    curriculum = ctx.create_actor(
        Curriculum, config, name=name, get_if_exists=True, preemptible=False, num_cpus=0
    )
    try:
        rollouts = [RolloutStats("arith", 1.0)] * 10
        ctx.get(curriculum.update_lesson_stats.remote(rollouts, "training", 7))
        report(local, "arith", [1.0] * 10, step=7)
        assert ctx.get(curriculum.get_metrics.remote()) == local.get_metrics()
        assert ctx.get(curriculum.sample_lesson.remote(3)) == local.sample_lesson(3)
        again = ctx.create_actor(
            Curriculum, config, name=name, get_if_exists=True, preemptible=False, num_cpus=0
        )
        ctx.get(again.update_lesson_stats.remote([RolloutStats("algebra", 0.0)], mode="eval"))
        found = get_or_create_curriculum_actor(config)
        metrics = ctx.get(found.get_metrics.remote())
        assert metrics["lessons"]["algebra"] == {
            "state": "active",
            "success": 0.5,
            "samples": 0,
            "eval_success": 0.45,
            "eval_samples": 1,
        }
        assert metrics["lessons"]["arith"]["samples"] == 10  # one actor, one state
    finally:
        curriculum.kill()


@pytest.mark.dask
def test_a_curriculum_created_after_its_actor_was_lost_restores_its_checkpoint(
    private_dask, tmp_path
):
    private_dask.add_worker("CPU=1,MEMORY=2e9,NON_PREEMPTIBLE=1")
    config = arith_then_algebra(checkpoint_path=str(tmp_path / "ckpt"), checkpoint_steps=2)
    ctx = DaskContext(private_dask.address)
    try:
        with set_job_ctx(ctx):
            curriculum = get_default_job_ctx().create_actor(
                Curriculum, config, name="curriculum", get_if_exists=True, preemptible=False,
                num_cpus=0,
            )  # fmt: skip
            for step in range(1, 7):  # 6 updates: checkpoints after the 2nd, 4th and 6th
                rollouts = [RolloutStats("arith", 1.0)] * 2
                ctx.get(curriculum.update_lesson_stats.remote(rollouts, current_step=step))
            before = ctx.get(curriculum.get_metrics.remote())
            assert before["lessons"]["algebra"]["state"] == "active"
            private_dask.kill_worker(curriculum.worker)
            private_dask.add_worker("CPU=1,MEMORY=2e9,NON_PREEMPTIBLE=1")
            again = get_default_job_ctx().create_actor(
                Curriculum, config, name="curriculum", get_if_exists=True, preemptible=False,
                num_cpus=0,
            )  # fmt: skip
            assert again.worker != curriculum.worker
            after = ctx.get(again.get_metrics.remote())
        assert after == before
        assert (after["step"], after["lessons"]["arith"]["samples"]) == (6, 12)
        assert after["unlocked_lessons"] == 2
    finally:
        ctx.close()
