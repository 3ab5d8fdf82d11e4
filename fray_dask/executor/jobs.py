"""What a run hands its steps' jobs and keeps about them: the JobRequest of a step (a valid job
name, its resources, its extras), the settings a run takes from its Executor, and what the run
reports per step. No Dask import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fray_dask.cluster import Cluster
from fray_dask.executor.status import StepLease
from fray_dask.executor.versions import PlannedStep
from fray_dask.types import (
    Entrypoint,
    EnvironmentConfig,
    JobId,
    JobRequest,
    ResourceConfig,
)


def job_name(step_name: str) -> str:
    """A job name fray_dask accepts (letters, digits, `.`, `_`, `-`; at most 63) for a step."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", step_name).strip("-._")[:63].rstrip("-._")
    return name or "step"


@dataclass(frozen=True)
class StepOutcome:
    """What a run did with one step: `action` is "ran", "skipped" (it had succeeded before),
    "waited" (another driver ran it), "failed" or "dep_failed"; for a dry run "run", "skip" or
    "wait". `status` is the step's status file afterwards."""

    name: str
    output_path: str
    action: str
    status: str | None


@dataclass(frozen=True)
class RunSettings:
    """What one run needs from its Executor."""

    cluster: Callable[[], Cluster]  # called at the first launch: a run with nothing to do starts
    # no cluster
    prefix: str
    description: str | None
    holder: str
    heartbeat_interval: float
    stale_after: float
    poll_interval: float
    run_file: str

    def lease(self, planned: PlannedStep) -> StepLease:
        return StepLease(planned.output_path, self.holder, self.stale_after)


@dataclass
class Running:
    """A step this driver holds the lease of and runs as a job."""

    planned: PlannedStep
    lease: StepLease
    job_id: JobId
    started: str


def step_request(planned: PlannedStep) -> JobRequest:
    """`fn(config)` as a job: the step's resources (default `ResourceConfig()`: 1 CPU), its
    `pip_dependency_groups` as extras of this project."""
    step = planned.step
    environment = None
    if step.pip_dependency_groups:
        environment = EnvironmentConfig.create(extras=list(step.pip_dependency_groups))
    return JobRequest(
        name=job_name(step.name),
        entrypoint=Entrypoint.from_callable(step.fn, args=[planned.config]),
        resources=step.resources if step.resources is not None else ResourceConfig(),
        environment=environment,
    )
