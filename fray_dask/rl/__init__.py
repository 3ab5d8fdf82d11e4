"""fray_dask.rl: the coordinators of RL training on fray_dask actors: a curriculum that hands out
lessons, and weight transfer from the trainer to rollout workers.

Names load on first use (PEP 562), so `import fray_dask.rl` loads neither Dask, pyarrow nor JAX.
"""

from __future__ import annotations

from fray_dask.exports import lazy_names

_LAZY: dict[str, str] = {
    "Curriculum": "fray_dask.rl.curriculum",
    "CurriculumConfig": "fray_dask.rl.curriculum_types",
    "LessonConfig": "fray_dask.rl.curriculum_types",
    "LessonDependency": "fray_dask.rl.curriculum_types",
    "RolloutStats": "fray_dask.rl.curriculum_types",
    "get_or_create_curriculum_actor": "fray_dask.rl.curriculum",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
