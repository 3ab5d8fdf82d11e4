"""fray_dask.executor: a DAG of steps, each a function and a config run as a fray_dask job, with
output paths versioned by a hash of the config and of the steps before it, a status and a lease in
each output folder, and skipping of what already succeeded (the contract of Marin's executor).

    from fray_dask.executor import ExecutorStep, executor_main, this_output_path, versioned

Above fray_dask's core: it imports the core, nothing in the core imports it. Names load on first
use (PEP 562), so a job process that unpickles a step's config loads neither fsspec nor the
scheduler.
"""

from __future__ import annotations

from fray_dask.exports import lazy_names

_LAZY = {
    "DEP_FAILED": "fray_dask.executor.status",
    "Executor": "fray_dask.executor.dag",
    "ExecutorStep": "fray_dask.executor.steps",
    "FAILED": "fray_dask.executor.status",
    "InputName": "fray_dask.executor.steps",
    "LeaseLostError": "fray_dask.executor.status",
    "OutputName": "fray_dask.executor.steps",
    "PREFIX_VARIABLE": "fray_dask.executor.main",
    "PreviousTaskFailedError": "fray_dask.executor.errors",
    "RUNNING": "fray_dask.executor.status",
    "SUCCESS": "fray_dask.executor.status",
    "StepFailure": "fray_dask.executor.errors",
    "StepOutcome": "fray_dask.executor.jobs",
    "StepsFailedError": "fray_dask.executor.errors",
    "THIS_OUTPUT_PATH": "fray_dask.executor.steps",
    "VersionedValue": "fray_dask.executor.steps",
    "ensure_versioned": "fray_dask.executor.steps",
    "executor_main": "fray_dask.executor.main",
    "output_path_of": "fray_dask.executor.steps",
    "read_status": "fray_dask.executor.status",
    "this_output_path": "fray_dask.executor.steps",
    "unwrap_versioned_value": "fray_dask.executor.steps",
    "versioned": "fray_dask.executor.steps",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
