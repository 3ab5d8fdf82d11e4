"""The RL curriculum (upstream Marin's contract), one shared actor: lessons unlock, are sampled by
how useful they are now, and graduate. No Dask import (actors come from the job context), no scipy;
maths in fray_dask.rl.lesson_stats, configs in fray_dask.rl.curriculum_types.

The rules, for `Curriculum`:

- Success rate of a lesson: an exponential moving average (alpha 0.1, prior 0.5) of `reward > 0`
  over its TRAINING rewards, oldest first; the last 1000 rewards per lesson and mode are kept, and
  the rate is exactly that formula over the kept ones. The eval success rate is the same EMA over
  eval rewards.
- Plateau (upstream's rule): at least `plateau_window` training rewards and, over the last
  `plateau_window`: |least-squares slope| / |mean| < `plateau_threshold`, std / |mean| < 0.1 (both
  true when |mean| < 1e-6) and the slope not significant (two-sided t-test p-value > 0.1, or
  undefined).
- Unlock: lessons without dependencies start unlocked. A locked lesson unlocks when every
  dependency's success rate >= that dependency's `reward_threshold` and the dependency has
  plateaued. Once unlocked, a lesson stays unlocked.
- Graduation (`check_graduation`): the lesson has eval data, its training success rate >=
  `stop_threshold`, and it has plateaued. Graduated lessons stay graduated and are not sampled.
  Unlock and graduation are re-checked after every `update_lesson_stats`.
- Active lessons: unlocked and not graduated. One is sampled only while it has no eval data or
  its eval success rate >= `start_threshold` (default 0.0: always).
- Sampling weights over the sampled lessons: base = max(0, 4s - 4s^2) * (1 + exp(-0.01 n)), s
  the success rate and n the training samples (peaks at s = 0.5, favours fresh lessons);
  base ** (1 / temperature) (1: as upstream; higher flattens, lower sharpens); equal weights if
  every base is 0; normalised, raised to at least `minimum_sample_probability`, renormalised.
  `sample_lesson(seed)` draws with numpy.random.default_rng(seed) over lesson ids in sorted order,
  so a seed gives the same lesson on every machine.
- Step: `update_lesson_stats(..., current_step=k)` sets the step to max(step, k) (workers report
  out of order). Checkpoints: JSON through fsspec; with `checkpoint_path` set, a new Curriculum
  restores from it, and every `checkpoint_steps`-th `update_lesson_stats` call saves to it.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np

from fray_dask.rl.curriculum_types import (
    CurriculumConfig,
    LessonConfig,
    LessonDependency,
    RolloutStats,
)
from fray_dask.rl.lesson_stats import LessonStats, is_plateaued, sampling_weights

__all__ = [
    "CHECKPOINT_FILE",
    "Curriculum",
    "CurriculumConfig",
    "LessonConfig",
    "LessonDependency",
    "RolloutStats",
    "get_or_create_curriculum_actor",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "curriculum_state.json"
CHECKPOINT_VERSION = 1
MODES = ("training", "eval")


class Curriculum:
    """Hands out lessons and learns from rollout rewards, by the rules in this module's docstring.
    Meant to live in one actor that every rollout and training worker shares (see
    `get_or_create_curriculum_actor`); every method returns plain, JSON-able Python."""

    def __init__(self, config: CurriculumConfig):
        config.validate()
        self.config = config
        self.stats = {lesson_id: LessonStats() for lesson_id in config.lessons}
        self.unlocked = {i for i, lesson in config.lessons.items() if not lesson.dependencies}
        self.graduated: set[str] = set()
        self.current_step = 0
        self.updates = 0  # update_lesson_stats calls: every checkpoint_steps-th one saves
        if config.checkpoint_path:
            self.restore_checkpoint(config.checkpoint_path)

    # -- sampling ---------------------------------------------------------------------------------
    def _active(self) -> list[str]:
        return sorted(self.unlocked - self.graduated)

    def _startable(self, lesson_id: str) -> bool:
        evals = self.stats[lesson_id].eval_stats
        start = self.config.lessons[lesson_id].start_threshold
        return evals.total_samples == 0 or evals.success >= start

    def compute_sampling_weights(self) -> dict[str, float]:
        """{lesson_id: probability} over the active lessons that pass their start_threshold,
        sorted by id; empty when there are none."""
        lessons = {
            lesson_id: (
                self.stats[lesson_id].training_stats.success,
                self.stats[lesson_id].training_stats.total_samples,
            )
            for lesson_id in self._active()
            if self._startable(lesson_id)
        }
        return sampling_weights(
            lessons, self.config.temperature, self.config.minimum_sample_probability
        )

    def sample_lesson(self, seed: int | None) -> str:
        """A lesson id drawn by the sampling weights with numpy.random.default_rng(seed) (the same
        seed and state give the same lesson everywhere). Raises RuntimeError naming the locked,
        graduated and held-back lessons when no lesson can be sampled."""
        weights = self.compute_sampling_weights()
        if not weights:
            held = [i for i in self._active() if not self._startable(i)]
            raise RuntimeError(
                "no lesson can be sampled: locked (dependencies not yet plateaued above their "
                f"thresholds): {sorted(set(self.config.lessons) - self.unlocked)}; graduated: "
                f"{sorted(self.graduated)}; eval success below start_threshold: {held}. Add "
                "lessons, raise stop_threshold, or stop when get_metrics()['active_lessons'] is 0"
            )
        ids = list(weights)
        probabilities = np.array([weights[i] for i in ids])
        index = np.random.default_rng(seed).choice(len(ids), p=probabilities / probabilities.sum())
        return ids[int(index)]

    # -- learning ---------------------------------------------------------------------------------
    def update_lesson_stats(
        self,
        rollout_stats: Sequence[RolloutStats],
        mode: str = "training",
        current_step: int | None = None,
    ) -> None:
        """Adds the rewards of `rollout_stats` to their lessons' `mode` ("training" or "eval")
        record, moves the step to max(step, current_step), re-checks unlock and graduation, and
        saves a checkpoint on every `checkpoint_steps`-th call when `checkpoint_path` is set.
        Validates every item before changing anything."""
        if mode not in MODES:
            raise ValueError(f"mode must be 'training' or 'eval', got {mode!r}")
        if isinstance(rollout_stats, RolloutStats):
            raise TypeError("update_lesson_stats takes a list of RolloutStats; wrap the one in [ ]")
        rewards: dict[str, list[float]] = {}
        for item in rollout_stats:
            lesson_id, reward = _lesson_and_reward(item)
            if lesson_id not in self.stats:
                raise ValueError(
                    f"rollout stats name unknown lesson {lesson_id!r}; the curriculum's lessons "
                    f"are {sorted(self.stats)}"
                )
            if not math.isfinite(reward):
                raise ValueError(
                    f"lesson {lesson_id!r}: a reward must be a finite number, got {reward!r}; "
                    "clip or drop the rollout before reporting it"
                )
            rewards.setdefault(lesson_id, []).append(reward)
        if current_step is not None:
            self.current_step = max(self.current_step, int(current_step))
        for lesson_id, lesson_rewards in rewards.items():
            record = self.stats[lesson_id]
            stats = record.training_stats if mode == "training" else record.eval_stats
            stats.add(lesson_rewards, self.current_step)
        self._unlock_and_graduate_lessons()
        self.updates += 1
        path = self.config.checkpoint_path
        if path and self.updates % self.config.checkpoint_steps == 0:
            self.save_checkpoint(path)

    def _plateaued(self, lesson_id: str) -> bool:
        lesson = self.config.lessons[lesson_id]
        history = self.stats[lesson_id].training_stats.reward_history
        return is_plateaued(history, lesson.plateau_window, lesson.plateau_threshold)

    def _dependencies_met(self, lesson_id: str) -> bool:
        return all(
            self.stats[dep.dependency_id].training_stats.success >= dep.reward_threshold
            and self._plateaued(dep.dependency_id)
            for dep in self.config.lessons[lesson_id].dependencies
        )

    def check_graduation(self, lesson_id: str) -> bool:
        """Whether `lesson_id` meets the graduation rule now: eval data, training success >=
        stop_threshold, plateaued. (Graduating it is update_lesson_stats's job.)"""
        self._known(lesson_id)
        stats = self.stats[lesson_id]
        return (
            stats.eval_stats.total_samples > 0
            and stats.training_stats.success >= self.config.lessons[lesson_id].stop_threshold
            and self._plateaued(lesson_id)
        )

    def _unlock_and_graduate_lessons(self) -> None:
        for lesson_id in sorted(self.config.lessons):
            if lesson_id not in self.unlocked and self._dependencies_met(lesson_id):
                logger.info(
                    "curriculum: lesson %r unlocked at step %d", lesson_id, self.current_step
                )
                self.unlocked.add(lesson_id)
            if (
                lesson_id in self.unlocked
                and lesson_id not in self.graduated
                and self.check_graduation(lesson_id)
            ):
                logger.info(
                    "curriculum: lesson %r graduated at step %d", lesson_id, self.current_step
                )
                self.graduated.add(lesson_id)

    def _known(self, lesson_id: str) -> None:
        if lesson_id not in self.stats:
            raise ValueError(
                f"unknown lesson {lesson_id!r}; the curriculum's lessons are {sorted(self.stats)}"
            )

    def get_metrics(self) -> dict[str, Any]:
        """Counts, the sampling distribution (its entropy in nats and its inverse Simpson index,
        "effective_lessons"), the mean training success over active lessons, and per lesson its
        state ("locked", "active" or "graduated"), success rate and training samples."""
        weights = self.compute_sampling_weights()
        active = self._active()
        lessons = {}
        for lesson_id in sorted(self.config.lessons):
            stats = self.stats[lesson_id]
            state = "locked" if lesson_id not in self.unlocked else "active"
            lessons[lesson_id] = {
                "state": "graduated" if lesson_id in self.graduated else state,
                "success": stats.training_stats.success,
                "samples": stats.training_stats.total_samples,
                "eval_success": stats.eval_stats.success
                if stats.eval_stats.total_samples
                else None,
                "eval_samples": stats.eval_stats.total_samples,
            }
        return {
            "step": self.current_step,
            "total_lessons": len(self.config.lessons),
            "unlocked_lessons": len(self.unlocked),
            "active_lessons": len(active),
            "graduated_lessons": len(self.graduated),
            "sampling_entropy": max(0.0, -sum(w * math.log(w) for w in weights.values() if w > 0)),
            "effective_lessons": 1.0 / sum(w * w for w in weights.values()) if weights else 0.0,
            "mean_success": (
                sum(self.stats[i].training_stats.success for i in active) / len(active)
                if active
                else 0.0
            ),
            "sampling_weights": weights,
            "lessons": lessons,
        }

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint_dir: str, filename: str = CHECKPOINT_FILE) -> str:
        """Writes the state as JSON to `checkpoint_dir`/`filename` (any fsspec folder; created if
        missing) and returns that path, atomically (fray_dask.files.atomic_output): a reader
        sees the old checkpoint or the whole new one."""
        import fsspec

        from fray_dask.files import atomic_output

        state = {
            "version": CHECKPOINT_VERSION,
            "current_step": self.current_step,
            "updates": self.updates,
            "unlocked": sorted(self.unlocked),
            "graduated": sorted(self.graduated),
            "stats": {lesson_id: s.to_json() for lesson_id, s in sorted(self.stats.items())},
        }
        text = json.dumps(state, indent=1, allow_nan=False)
        fs, folder = fsspec.core.url_to_fs(checkpoint_dir)
        path = posixpath.join(folder, filename)
        with atomic_output(fs.unstrip_protocol(path)) as f:
            f.write(text.encode())
        logger.info("curriculum: saved step %d to %s", self.current_step, path)
        return fs.unstrip_protocol(path)

    def restore_checkpoint(self, checkpoint_dir: str, filename: str = CHECKPOINT_FILE) -> bool:
        """Replaces the state with the one saved at `checkpoint_dir`/`filename`; returns False
        and changes nothing if there is no such file. Lessons the config added since start fresh
        (unlocked if they have no dependencies); a saved lesson the config lacks is an error."""
        import fsspec

        fs, folder = fsspec.core.url_to_fs(checkpoint_dir)
        path = posixpath.join(folder, filename)
        fs.invalidate_cache()  # another process (the actor we replace) wrote it
        if not fs.exists(path):
            logger.info("curriculum: no checkpoint at %s; starting fresh", path)
            return False
        with fs.open(path, "r") as f:
            state = json.load(f)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"curriculum checkpoint {path} has version {state.get('version')!r}; this "
                f"fray_dask reads version {CHECKPOINT_VERSION}: start from a fresh folder"
            )
        saved = set(state["stats"]) | set(state["unlocked"]) | set(state["graduated"])
        unknown = sorted(saved - set(self.config.lessons))
        if unknown:
            raise ValueError(
                f"curriculum checkpoint {path} has lesson {unknown[0]!r}, which the config "
                f"lacks (its lessons: {sorted(self.config.lessons)}); add the lesson back or "
                "use a fresh checkpoint folder"
            )
        saved_stats = state["stats"]
        self.stats = {
            i: LessonStats.from_json(saved_stats[i]) if i in saved_stats else LessonStats()
            for i in self.config.lessons
        }
        lessons = self.config.lessons
        self.unlocked = set(state["unlocked"]) | {i for i in lessons if not lessons[i].dependencies}
        self.graduated = set(state["graduated"])
        self.current_step = int(state["current_step"])
        self.updates = int(state["updates"])
        logger.info("curriculum: restored step %d from %s", self.current_step, path)
        return True


def _lesson_and_reward(item: Any) -> tuple[str, float]:
    try:
        return item.lesson_id, float(item.episode_reward)
    except (AttributeError, TypeError, ValueError):
        raise TypeError(
            f"update_lesson_stats takes RolloutStats(lesson_id, reward) items, got {item!r}"
        ) from None


def get_or_create_curriculum_actor(config: CurriculumConfig, ctx: Any = None) -> Any:
    """The shared curriculum actor named `config.actor_name` on `ctx` (default: the current job
    context), created if it does not exist yet: exactly
    `ctx.create_actor(Curriculum, config, name=config.actor_name, get_if_exists=True,
    preemptible=False, num_cpus=0)`. Call its methods with `.remote()` and `ctx.get` the result.
    With `config.checkpoint_path` set, an actor created after the old one was lost restores it."""
    if ctx is None:
        from fray_dask.current import get_default_job_ctx

        ctx = get_default_job_ctx()
    return ctx.create_actor(
        Curriculum,
        config,
        name=config.actor_name,
        get_if_exists=True,
        preemptible=False,
        num_cpus=0,
    )
