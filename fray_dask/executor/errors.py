"""What a run of the executor raises: `PreviousTaskFailedError` (a step failed before and the run
may not retry it) and `StepsFailedError` (steps failed in this run, each named with its output
path and cause). No imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


class PreviousTaskFailedError(RuntimeError):
    """Steps whose status is FAILED or DEP_FAILED, in a run with `force_run_failed=False`."""


@dataclass(frozen=True)
class StepFailure:
    """One step that failed in a run: its name, output path, job and the cause."""

    name: str
    output_path: str
    cause: str
    job_id: str | None = None

    def describe(self) -> str:
        job = f" (job {self.job_id})" if self.job_id else ""
        return f"{self.name} at {self.output_path}{job}: {self.cause}"


class StepsFailedError(RuntimeError):
    """Steps failed in this run. `failures` holds each with its output path and cause;
    `dep_failed` names the steps not run because a step they need failed. The first failure's
    exception, when the job gave one back, is the `__cause__`."""

    def __init__(self, failures: list[StepFailure], dep_failed: list[str], total: int):
        self.failures = list(failures)
        self.dep_failed = list(dep_failed)
        self.total = total
        lines = [f"{len(self.failures)} of {total} steps failed:"]
        lines += [f"  - {f.describe()}" for f in self.failures]
        if self.dep_failed:
            lines.append(
                f"not run because a step they need failed (DEP_FAILED): {', '.join(dep_failed)}"
            )
        lines.append(
            "the steps that succeeded keep their outputs; fix the cause and run again to run "
            "only what is left"
        )
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:
        return (StepsFailedError, (self.failures, self.dep_failed, self.total))
