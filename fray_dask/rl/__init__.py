"""fray_dask.rl: the coordinators of RL training on fray_dask actors: a curriculum that hands out
lessons, and weight transfer from the trainer to rollout workers.

Names load on first use (PEP 562), so `import fray_dask.rl` loads neither Dask, pyarrow nor JAX.
"""

from __future__ import annotations

from fray_dask.exports import lazy_names

_LAZY = {
    "Curriculum": "fray_dask.rl.curriculum",
    "CurriculumConfig": "fray_dask.rl.curriculum_types",
    "LessonConfig": "fray_dask.rl.curriculum_types",
    "LessonDependency": "fray_dask.rl.curriculum_types",
    "RolloutStats": "fray_dask.rl.curriculum_types",
    "SingletonActor": "fray_dask.rl.singleton",
    "WeightCoordinator": "fray_dask.rl.weights",
    "WeightTransferClient": "fray_dask.rl.weights",
    "WeightTransferConfig": "fray_dask.rl.weights",
    "WeightTransferServer": "fray_dask.rl.weights",
    "WeightsInfo": "fray_dask.rl.weights",
    "WeightsUnavailable": "fray_dask.rl.flight",
    "get_or_create_curriculum_actor": "fray_dask.rl.curriculum",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
