"""`Executor`: runs a DAG of ExecutorSteps, each as a fray_dask job on `current_cluster()`, in
dependency order and at most `max_concurrent` at once, skipping steps that already succeeded and
waiting for steps another driver holds the lease of. No Dask import (jobs go through the Cluster
API); the decisions per step are in fray_dask.executor.scheduling.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

from fray_dask.cluster import Cluster
from fray_dask.current import current_cluster
from fray_dask.executor import info
from fray_dask.executor.errors import PreviousTaskFailedError
from fray_dask.executor.jobs import RunSettings, StepOutcome
from fray_dask.executor.scheduling import Scheduler
from fray_dask.executor.status import (
    DEP_FAILED,
    FAILED,
    RUNNING,
    SUCCESS,
    StepLease,
    lease_store,
    new_holder_id,
    read_status,
)
from fray_dask.executor.steps import ExecutorStep, InputName
from fray_dask.executor.versions import PlannedStep, StepGraph, join

logger = logging.getLogger("fray_dask.executor")

HEARTBEAT_INTERVAL = 30.0
STALE_AFTER = 90.0
POLL_INTERVAL = 5.0


class Executor:
    """Runs DAGs of ExecutorSteps whose outputs live under `prefix` (a local folder or gs://).

    Each step is a fray_dask job on `cluster` (default: `current_cluster()`), holding a lease on
    its output folder while it runs, renewed every `heartbeat_interval` s; a lease not renewed for
    `stale_after` s is taken over by the next driver that needs the step. A driver waiting for
    another's step checks it every `poll_interval` s. Each run writes a JSON describing its steps
    under `executor_info_base_path` (default `{prefix}/experiments`).
    """

    def __init__(
        self,
        prefix: str,
        executor_info_base_path: str | None = None,
        description: str | None = None,
        *,
        cluster: Cluster | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
        poll_interval: float = POLL_INTERVAL,
    ):
        if not isinstance(prefix, str) or not prefix.strip():
            raise ValueError(
                f"Executor needs a prefix (a local folder or gs://bucket/path) for the steps' "
                f"outputs, got {prefix!r}"
            )
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("stale_after", stale_after),
            ("poll_interval", poll_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"Executor {name} must be a number of seconds > 0, got {value!r}")
        if stale_after <= heartbeat_interval:
            raise ValueError(
                f"Executor stale_after ({stale_after:g} s) must exceed heartbeat_interval "
                f"({heartbeat_interval:g} s), or a live driver's lease looks stale between two "
                "heartbeats; the defaults are 90 and 30"
            )
        self.prefix = prefix.rstrip("/")
        lease_store(join(self.prefix, "x/.lease"))  # refuses a prefix without compare-and-swap
        self.executor_info_base_path = executor_info_base_path or join(self.prefix, "experiments")
        self.description = description
        self.cluster = cluster
        self.heartbeat_interval = float(heartbeat_interval)
        self.stale_after = float(stale_after)
        self.poll_interval = float(poll_interval)
        self.holder = new_holder_id()
        self.graph: StepGraph | None = None
        self.run_file: str | None = None

    def output_path_of(self, step: ExecutorStep) -> str:
        """The output path `step` had in the last run (or dry run) of this executor."""
        if self.graph is None or step not in self.graph.paths:
            raise KeyError(f"step {step.name!r} was not part of a run of this executor")
        return self.graph.paths[step]

    def lease(self, planned: PlannedStep) -> StepLease:
        return StepLease(planned.output_path, self.holder, self.stale_after)

    def run(
        self,
        steps: list[ExecutorStep | InputName],
        *,
        dry_run: bool = False,
        run_only: list[str] | None = None,
        force_run_failed: bool = True,
        max_concurrent: int | None = None,
    ) -> list[StepOutcome]:
        """Runs `steps` and every step they need, in dependency order.

        A step that succeeded before is skipped; one that FAILED or was DEP_FAILED runs again
        when `force_run_failed` (else PreviousTaskFailedError, before anything runs); one another
        driver is running is waited for. `run_only` (regexes searched in step names) runs the
        matching steps and those of their transitive dependencies that have not succeeded.
        `dry_run` prints what would happen to each step (run, skip, wait) and its output path, and
        writes nothing. When steps fail, their dependants are marked DEP_FAILED, the independent
        steps still run, and StepsFailedError names every failed step, its output path and cause.
        """
        if max_concurrent is not None and (
            isinstance(max_concurrent, bool)
            or not isinstance(max_concurrent, int)
            or max_concurrent < 1
        ):
            raise ValueError(f"max_concurrent must be a whole number >= 1, got {max_concurrent!r}")
        if isinstance(run_only, str):
            run_only = [run_only]
        started = time.monotonic()
        self.graph = graph = StepGraph(self.prefix, list(steps))
        statuses: dict[str, str | None] = {}

        def status(planned: PlannedStep) -> str | None:
            if planned.output_path not in statuses:
                statuses[planned.output_path] = read_status(planned.output_path)
            return statuses[planned.output_path]

        if run_only is not None:
            selected = self._run_only(graph, run_only, status)
        else:
            selected = [p for p in graph.order if not p.pseudo_only]
        logger.info(
            "%d steps under %s (%d selected); versions and statuses in %.2f s",
            len(graph.order),
            self.prefix,
            len(selected),
            time.monotonic() - started,
        )
        if not force_run_failed:
            failed = [p for p in selected if status(p) in (FAILED, DEP_FAILED)]
            failed = [p for p in failed if self.lease(p).held_elsewhere() is None]
            if failed:
                listed = ", ".join(f"{p.name} ({status(p)} at {p.output_path})" for p in failed)
                raise PreviousTaskFailedError(
                    f"steps failed in an earlier run and force_run_failed=False: {listed}; run "
                    "with force_run_failed=True (the default) to run them again"
                )
        if dry_run:
            return self._dry_run(selected, status)
        self.run_file = info.run_file_path(self.executor_info_base_path, selected)
        settings = RunSettings(
            cluster=(lambda: self.cluster) if self.cluster is not None else current_cluster,
            prefix=self.prefix,
            description=self.description,
            holder=self.holder,
            heartbeat_interval=self.heartbeat_interval,
            stale_after=self.stale_after,
            poll_interval=self.poll_interval,
            run_file=self.run_file,
        )
        scheduler = Scheduler(settings, graph, selected, status, force_run_failed, max_concurrent)
        return scheduler.run()

    def _run_only(self, graph: StepGraph, patterns: list[str], status: Any) -> list[PlannedStep]:
        """The steps matching `patterns` and, transitively, the dependencies that have not
        succeeded, in dependency order."""
        try:
            regexes = [re.compile(p) for p in patterns]
        except re.error as e:
            raise ValueError(f"run_only pattern is not a regular expression: {e}") from e
        candidates = graph.order
        unmatched = [r.pattern for r in regexes if not any(r.search(p.name) for p in candidates)]
        if unmatched:
            names = ", ".join(sorted({p.name for p in candidates}))
            raise ValueError(
                f"run_only pattern(s) {unmatched} match no step; the steps are: {names}"
            )
        chosen: set[int] = set()

        def pull(planned: PlannedStep) -> None:
            if id(planned) in chosen:
                return
            chosen.add(id(planned))
            for dep in planned.dependencies:
                dep_planned = graph.of(dep)
                if status(dep_planned) != SUCCESS:
                    pull(dep_planned)

        for planned in candidates:
            if any(r.search(planned.name) for r in regexes):
                pull(planned)
        return [p for p in graph.order if id(p) in chosen]

    def _dry_run(self, selected: list[PlannedStep], status: Any) -> list[StepOutcome]:
        outcomes = []
        for planned in selected:
            current = status(planned)
            holder = self.lease(planned).held_elsewhere()
            if current == SUCCESS:
                action, why = "skip", "succeeded before"
            elif holder is not None:
                action = "wait"
                why = f"{current or 'starting'}, lease held by {holder.holder}"
            elif current is None:
                action, why = "run", "never run"
            else:
                what = "the last run failed" if current != RUNNING else "its driver is gone"
                action, why = "run", f"{current}, {what}"
            outcomes.append(StepOutcome(planned.name, planned.output_path, action, current))
            print(f"[dry run] {action:<4} {planned.name} -> {planned.output_path} ({why})")
        counts = {a: sum(o.action == a for o in outcomes) for a in ("run", "skip", "wait")}
        print(
            f"[dry run] {counts['run']} to run, {counts['skip']} to skip, {counts['wait']} "
            "running elsewhere; nothing was run or written",
            file=sys.stdout,
            flush=True,
        )
        return outcomes
