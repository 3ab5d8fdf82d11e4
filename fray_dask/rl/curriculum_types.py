"""The plain data of fray_dask.rl.curriculum: what rollout workers report (RolloutStats) and the
curriculum's configuration, validated on construction. Picklable dataclasses (they travel as
actor-call arguments); no Dask, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fray_dask.rl.lesson_stats import MAX_REWARDS

__all__ = ["CurriculumConfig", "LessonConfig", "LessonDependency", "RolloutStats", "find_cycle"]


@dataclass
class RolloutStats:
    """What a rollout worker reports about one rollout: its lesson and its reward."""

    lesson_id: str
    reward: float
    env_example_id: str = ""
    temperature: float = 1.0
    top_k: int | None = None

    @property
    def episode_reward(self) -> float:
        """The reward (upstream's field name)."""
        return self.reward


@dataclass
class LessonDependency:
    """`dependency_id` must reach `reward_threshold` success and plateau before the lesson that
    lists it unlocks (0.0: the plateau alone)."""

    dependency_id: str
    reward_threshold: float = 0.0


@dataclass
class LessonConfig:
    """One lesson. `env_config` is carried for the rollout workers, never read here."""

    lesson_id: str
    env_config: Any = None
    dependencies: list[LessonDependency] = field(default_factory=list)
    start_threshold: float = 0.0
    stop_threshold: float = 1.0
    plateau_window: int = 50
    plateau_threshold: float = 0.01

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError (TypeError for a wrong kind of dependency) naming the lesson."""
        if not isinstance(self.lesson_id, str) or not self.lesson_id:
            raise ValueError(f"lesson_id must be a non-empty string, got {self.lesson_id!r}")
        what = f"lesson {self.lesson_id!r}"
        window = self.plateau_window
        if (
            isinstance(window, bool)
            or not isinstance(window, int)
            or not 2 <= window <= MAX_REWARDS
        ):
            raise ValueError(
                f"{what}: plateau_window must be a whole number from 2 to {MAX_REWARDS} (the "
                f"rewards kept per lesson), got {window!r}; the default is 50"
            )
        if not self.plateau_threshold > 0:
            raise ValueError(
                f"{what}: plateau_threshold must be > 0 (a relative slope), got "
                f"{self.plateau_threshold!r}; the default is 0.01"
            )
        for dep in self.dependencies:
            if not isinstance(dep, LessonDependency):
                raise TypeError(
                    f"{what}: each dependency must be a LessonDependency, got {dep!r}; write "
                    f"LessonDependency({dep!r})"
                )


@dataclass
class CurriculumConfig:
    """The lessons ({lesson_id: LessonConfig}) and how to sample them; validated on construction.
    `checkpoint_path` (an fsspec folder, local or gs://) makes the curriculum restore itself on
    creation and save itself every `checkpoint_steps` updates."""

    lessons: dict[str, LessonConfig]
    temperature: float = 1.0
    minimum_sample_probability: float = 0.1
    checkpoint_steps: int = 10
    actor_name: str = "curriculum"
    checkpoint_path: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError for a mismatched key, an unknown dependency, a dependency cycle or a
        number out of range, naming the lesson or the field."""
        if not isinstance(self.lessons, dict):
            raise TypeError(
                f"lessons must be a dict {{lesson_id: LessonConfig}}, got a "
                f"{type(self.lessons).__name__}; write {{l.lesson_id: l for l in lessons}}"
            )
        if not self.lessons:
            raise ValueError("a curriculum needs at least one lesson, got none; pass lessons=")
        for key, lesson in self.lessons.items():
            if not isinstance(lesson, LessonConfig):
                raise TypeError(f"lesson {key!r} must be a LessonConfig, got {lesson!r}")
            if key != lesson.lesson_id:
                raise ValueError(
                    f"lesson dict key {key!r} differs from its lesson_id {lesson.lesson_id!r}; "
                    "key each lesson by its lesson_id"
                )
            lesson.validate()
        for lesson_id, lesson in self.lessons.items():
            for dep in lesson.dependencies:
                if dep.dependency_id not in self.lessons:
                    raise ValueError(
                        f"lesson {lesson_id!r} depends on unknown lesson {dep.dependency_id!r}; "
                        f"the lessons are {sorted(self.lessons)}: fix the id or add the lesson"
                    )
        cycle = find_cycle(self.lessons)
        if cycle:
            raise ValueError(
                f"lessons {' -> '.join(repr(c) for c in cycle)} form a dependency cycle, so none "
                "of them could unlock; remove one of these dependencies"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}; 1.0 is neutral")
        if not 0 <= self.minimum_sample_probability < 1:
            raise ValueError(
                "minimum_sample_probability must be >= 0 and < 1, got "
                f"{self.minimum_sample_probability!r}; the default is 0.1"
            )
        steps = self.checkpoint_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(
                f"checkpoint_steps must be a whole number >= 1, got {steps!r}; the default is 10"
            )


def find_cycle(lessons: dict[str, LessonConfig]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a] (the first found in sorted order), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for dep in sorted({d.dependency_id for d in lessons[node].dependencies}):
            if dep in path:
                return [*path[path.index(dep) :], dep]
            if dep not in done and dep in lessons:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        done.add(node)
        return None

    for lesson_id in sorted(lessons):
        if lesson_id not in done:
            found = visit(lesson_id)
            if found:
                return found
    return None
