"""The curriculum's configs: validated on construction with errors that name the lesson; plain
dataclasses that survive pickling (they travel as actor-call arguments)."""

from __future__ import annotations

import pickle

import pytest

from fray_dask.rl import CurriculumConfig, LessonConfig, LessonDependency, RolloutStats


def lessons(*configs: LessonConfig) -> dict[str, LessonConfig]:
    return {c.lesson_id: c for c in configs}


def test_a_dict_key_must_be_its_lessons_id():
    with pytest.raises(ValueError, match="lesson dict key 'a' differs from its lesson_id 'b'"):
        CurriculumConfig(lessons={"a": LessonConfig("b")})


def test_an_unknown_dependency_is_named_with_its_lesson():
    config = lessons(
        LessonConfig("arith"), LessonConfig("algebra", dependencies=[LessonDependency("arth")])
    )
    with pytest.raises(ValueError, match="lesson 'algebra' depends on unknown lesson 'arth'"):
        CurriculumConfig(lessons=config)


def test_a_dependency_cycle_names_the_lessons_on_it():
    config = lessons(
        LessonConfig("base"),
        LessonConfig("a", dependencies=[LessonDependency("base"), LessonDependency("c")]),
        LessonConfig("b", dependencies=[LessonDependency("a")]),
        LessonConfig("c", dependencies=[LessonDependency("b")]),
    )
    with pytest.raises(
        ValueError, match="lessons 'a' -> 'c' -> 'b' -> 'a' form a dependency cycle"
    ):
        CurriculumConfig(lessons=config)
    selfish = lessons(LessonConfig("loop", dependencies=[LessonDependency("loop")]))
    with pytest.raises(ValueError, match="lessons 'loop' -> 'loop' form a dependency cycle"):
        CurriculumConfig(lessons=selfish)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 0.0, "temperature must be > 0, got 0.0"),
        ("minimum_sample_probability", 1.0, "minimum_sample_probability must be >= 0 and < 1"),
        ("minimum_sample_probability", -0.1, r"and < 1, got -0.1; the default is 0.1"),
        ("checkpoint_steps", 0, "checkpoint_steps must be a whole number >= 1, got 0"),
    ],
)
def test_curriculum_numbers_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        CurriculumConfig(lessons=lessons(LessonConfig("a")), **{field: value})


def test_lesson_numbers_and_dependencies_are_checked_naming_the_lesson():
    with pytest.raises(
        ValueError, match="lesson 'a': plateau_window must be a whole number from 2"
    ):
        LessonConfig("a", plateau_window=1)
    with pytest.raises(ValueError, match="lesson 'a': plateau_window .* got 5000"):
        LessonConfig("a", plateau_window=5000)  # longer than the rewards kept
    with pytest.raises(
        ValueError, match=r"lesson 'a': plateau_threshold must be > 0 \(a relative slope\), got 0"
    ):
        LessonConfig("a", plateau_threshold=0)
    with pytest.raises(TypeError, match=r"lesson 'b'.*got 'a'; write LessonDependency\('a'\)"):
        LessonConfig("b", dependencies=["a"])
    with pytest.raises(ValueError, match="at least one lesson"):
        CurriculumConfig(lessons={})
    with pytest.raises(TypeError, match="lessons must be a dict"):
        CurriculumConfig(lessons=[LessonConfig("a")])


def test_configs_and_rollout_stats_survive_pickling():
    config = CurriculumConfig(
        lessons=lessons(
            LessonConfig("arith", env_config={"max": 10}),
            LessonConfig("algebra", dependencies=[LessonDependency("arith", 0.7)]),
        ),
        temperature=2.0,
        checkpoint_path="gs://bucket/curriculum",
    )
    assert pickle.loads(pickle.dumps(config)) == config
    stats = RolloutStats("arith", 1.5, env_example_id="ex-3", top_k=40)
    assert pickle.loads(pickle.dumps(stats)) == stats
    assert stats.episode_reward == 1.5
