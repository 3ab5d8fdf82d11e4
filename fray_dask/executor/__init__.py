"""fray_dask.executor: a DAG of steps, each a function and a config run as a fray_dask job, with
output paths versioned by a hash of the config and of the steps before it, a status and a lease in
each output folder, and skipping of what already succeeded (the contract of Marin's executor).

    from fray_dask.executor import ExecutorStep, executor_main, this_output_path, versioned

Above fray_dask's core: it imports the core, nothing in the core imports it.
"""

from __future__ import annotations

from fray_dask.executor.dag import Executor, StepOutcome
from fray_dask.executor.errors import PreviousTaskFailedError, StepFailure, StepsFailedError
from fray_dask.executor.main import PREFIX_VARIABLE, executor_main
from fray_dask.executor.status import (
    DEP_FAILED,
    FAILED,
    RUNNING,
    SUCCESS,
    LeaseLostError,
    read_status,
)
from fray_dask.executor.steps import (
    THIS_OUTPUT_PATH,
    ExecutorStep,
    InputName,
    OutputName,
    VersionedValue,
    ensure_versioned,
    output_path_of,
    this_output_path,
    unwrap_versioned_value,
    versioned,
)

__all__ = [
    "DEP_FAILED",
    "FAILED",
    "PREFIX_VARIABLE",
    "RUNNING",
    "SUCCESS",
    "THIS_OUTPUT_PATH",
    "Executor",
    "ExecutorStep",
    "InputName",
    "LeaseLostError",
    "OutputName",
    "PreviousTaskFailedError",
    "StepFailure",
    "StepOutcome",
    "StepsFailedError",
    "VersionedValue",
    "ensure_versioned",
    "executor_main",
    "output_path_of",
    "read_status",
    "this_output_path",
    "unwrap_versioned_value",
    "versioned",
]
