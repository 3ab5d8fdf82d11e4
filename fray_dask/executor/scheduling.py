"""One run of an Executor: the loop that starts each step once its dependencies succeeded,
decides skip / take the lease and launch / wait for another driver, follows the jobs, renews the
leases it holds, and marks the dependants of a failed step DEP_FAILED. Jobs through the Cluster
API only; no Dask import.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from fray_dask.cluster import Cluster
from fray_dask.executor import info
from fray_dask.executor.errors import StepFailure, StepsFailedError
from fray_dask.executor.jobs import Running, RunSettings, StepOutcome, step_request
from fray_dask.executor.status import (
    DEP_FAILED,
    FAILED,
    RUNNING,
    SUCCESS,
    LeaseLostError,
    StepLease,
    read_status,
    write_status,
)
from fray_dask.executor.versions import PlannedStep, StepGraph
from fray_dask.types import JobId, JobInfo, JobStatus

logger = logging.getLogger("fray_dask.executor")

WAIT_LOG_INTERVAL = 60.0  # seconds between two "waiting for it" lines about one step


class Scheduler:
    def __init__(
        self,
        settings: RunSettings,
        graph: StepGraph,
        selected: list[PlannedStep],
        status: Any,
        force_run_failed: bool,
        max_concurrent: int | None,
    ):
        self.settings = settings
        self._cluster: Cluster | None = None
        self.graph = graph
        self.selected = selected
        self.status = status  # the statuses read while planning (read on first use)
        self.force_run_failed = force_run_failed
        self.limit = max_concurrent or len(selected) or 1
        chosen = {id(p) for p in selected}
        self.waits_for: dict[int, set[int]] = {}
        self.dependants: dict[int, list[PlannedStep]] = {id(p): [] for p in selected}
        for planned in selected:
            deps = {id(graph.of(d)) for d in planned.dependencies} & chosen
            self.waits_for[id(planned)] = deps
            for dep in deps:
                self.dependants[dep].append(planned)
        self.ready: deque[PlannedStep] = deque(p for p in selected if not self.waits_for[id(p)])
        self.running: dict[int, Running] = {}
        self.waiting: dict[int, tuple[PlannedStep, float]] = {}  # held by another driver
        self.waited: dict[int, float] = {}  # steps found held by another driver: when last said
        self.outcomes: dict[int, tuple[str, str | None]] = {}
        self.failures: list[StepFailure] = []
        self.first_exception: BaseException | None = None
        self.events: queue.Queue = queue.Queue()
        self.stop_heartbeat = threading.Event()
        self.started = info.now()

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = self.settings.cluster()
        return self._cluster

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> list[StepOutcome]:
        self._write_run("running")
        beat = threading.Thread(target=self._heartbeat, name="fray-executor-heartbeat", daemon=True)
        beat.start()
        try:
            while len(self.outcomes) < len(self.selected):
                while self.ready and len(self.running) < self.limit:
                    self._start(self.ready.popleft())
                if len(self.outcomes) == len(self.selected):
                    break
                if not (self.running or self.waiting or self.ready):
                    raise RuntimeError(
                        f"executor bug: steps neither done, running nor waiting: "
                        f"{[p.name for p in self.selected if id(p) not in self.outcomes]}"
                    )
                self._next_event()
        except BaseException:
            self._abandon_running()
            self._write_run("interrupted")
            raise
        finally:
            self.stop_heartbeat.set()
        status = "failed" if self.failures else "succeeded"
        self._write_run(status)
        outcomes = [
            StepOutcome(p.name, p.output_path, *self.outcomes[id(p)]) for p in self.selected
        ]
        if self.failures:
            dep_failed = [o.name for o in outcomes if o.action == "dep_failed"]
            raise StepsFailedError(
                self.failures, dep_failed, len(self.selected)
            ) from self.first_exception
        return outcomes

    def _next_event(self) -> None:
        timeout = None
        if self.waiting:
            soonest = min(at for _, at in self.waiting.values())
            timeout = max(0.0, soonest - time.monotonic())
        try:
            kind, key, payload = self.events.get(timeout=timeout)
        except queue.Empty:
            now = time.monotonic()
            for key, (planned, at) in list(self.waiting.items()):
                if at <= now:  # look again, when a slot is free
                    del self.waiting[key]
                    self.ready.appendleft(planned)
            return
        if key in self.running:
            if kind == "finished":
                self._finish(self.running.pop(key), payload)
            elif kind == "lease_lost":
                run = self.running.pop(key)
                with contextlib.suppress(Exception):
                    self.cluster.terminate(run.job_id)
                self._fail(run.planned, str(payload), run.job_id, payload, status=None)

    # -- one step ----------------------------------------------------------------------------
    def _start(self, planned: PlannedStep) -> None:
        """Skip, wait or run `planned`, whose dependencies all succeeded."""
        # SUCCESS is final, so the status read while planning is enough to skip; any other is
        # read again (another driver may have moved it on since).
        status = SUCCESS if self.status(planned) == SUCCESS else read_status(planned.output_path)
        if status == SUCCESS:
            self._done(planned, "waited" if id(planned) in self.waited else "skipped")
            return
        lease = self.settings.lease(planned)
        other = lease.held_elsewhere()
        if other is None and status in (FAILED, DEP_FAILED) and not self.force_run_failed:
            cause = f"{status} in another driver's run, and force_run_failed=False"
            self._fail(planned, cause, None, None, status=status)
            return
        if other is None and lease.try_acquire():
            if lease.taken_over is not None:
                logger.warning(
                    "step %s: taking over from %s, whose last heartbeat was %.1f s ago (stale "
                    "after %g s); running it again",
                    planned.name,
                    lease.taken_over.holder,
                    lease.taken_over.age(),
                    self.settings.stale_after,
                )
            if read_status(planned.output_path) == SUCCESS:  # finished between the two looks
                lease.release()
                self._done(planned, "waited")
                return
            self._launch(planned, lease)
            return
        if other is None:
            other = lease.current()
        now = time.monotonic()
        if now - self.waited.get(id(planned), -WAIT_LOG_INTERVAL) >= WAIT_LOG_INTERVAL:
            logger.info(
                "step %s is being run by %s (last heartbeat %s); waiting for it",
                planned.name,
                other.holder if other else "another driver",
                f"{other.age():.0f} s ago" if other else "unknown",
            )
            self.waited[id(planned)] = now
        self.waiting[id(planned)] = (planned, time.monotonic() + self.settings.poll_interval)

    def _launch(self, planned: PlannedStep, lease: StepLease) -> None:
        step = planned.step
        started = info.now()
        try:
            write_status(planned.output_path, RUNNING)
            info.write_step_info(
                planned, self.graph.paths, status=RUNNING, started=started, holder=lease.holder
            )
            job_id = self.cluster.launch(step_request(planned))
        except Exception as e:  # noqa: BLE001 - a step that cannot start is a failed step
            write_status(planned.output_path, FAILED)
            lease.release()
            self._fail(planned, f"{type(e).__name__}: {e}", None, e, status=FAILED)
            return
        logger.info("step %s: running as job %s -> %s", step.name, job_id, planned.output_path)
        self.running[id(planned)] = Running(planned, lease, job_id, started)
        threading.Thread(
            target=self._follow,
            args=(id(planned), job_id, step.name),
            name="fray-executor-follow",
            daemon=True,
        ).start()

    def _follow(self, key: int, job_id: JobId, step_name: str) -> None:
        """Streams the job's lines to stdout (`[step] [replica-0] ...`) until it ends."""

        def show(line: str) -> None:
            print(f"[{step_name}] {line}", flush=True)

        try:
            result: Any = self.cluster.monitor(job_id, on_line=show)
        except Exception as e:  # noqa: BLE001 - reported as the step's failure
            result = e
        self.events.put(("finished", key, result))

    def _finish(self, run: Running, result: JobInfo | Exception) -> None:
        planned, lease = run.planned, run.lease
        succeeded = isinstance(result, JobInfo) and result.status is JobStatus.SUCCEEDED
        cause, exception = (None, None) if succeeded else self._cause(run, result)
        try:
            self._confirm(lease)  # only the lease's holder may write the step's status
        except (LeaseLostError, OSError) as e:
            self._fail(planned, str(e), run.job_id, e, status=None)
            return
        status = SUCCESS if succeeded else FAILED
        write_status(planned.output_path, status)
        info.write_step_info(
            planned,
            self.graph.paths,
            status=status,
            started=run.started,
            ended=info.now(),
            job_id=run.job_id,
            holder=lease.holder,
            error=cause,
        )
        lease.release()
        if succeeded:
            logger.info("step %s succeeded", planned.name)
            self._done(planned, "ran")
        else:
            self._fail(planned, cause or "", run.job_id, exception, status=FAILED)

    def _cause(self, run: Running, result: JobInfo | Exception) -> tuple[str, Exception | None]:
        """Why a step's job failed (its error message) and, when the job gave one back, the
        exception it raised."""
        if not isinstance(result, JobInfo):  # following the job failed
            return f"{type(result).__name__}: {result}", result
        try:
            self.cluster.result(run.job_id, timeout=0)
        except Exception as e:  # noqa: BLE001 - the job's own exception, for __cause__
            return result.error_message or f"job {result.status.value}", e
        return result.error_message or f"job {result.status.value}", None

    @staticmethod
    def _confirm(lease: StepLease, attempts: int = 3) -> None:
        """Renews `lease`, retrying a storage error twice (a second apart); LeaseLostError when
        it is not ours."""
        for attempt in range(attempts):
            try:
                lease.refresh()
                return
            except OSError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0)

    def _done(self, planned: PlannedStep, action: str) -> None:
        self.outcomes[id(planned)] = (action, SUCCESS)
        for child in self.dependants[id(planned)]:
            waits = self.waits_for[id(child)]
            waits.discard(id(planned))
            if not waits and id(child) not in self.outcomes:
                self.ready.append(child)

    def _fail(
        self,
        planned: PlannedStep,
        cause: str,
        job_id: JobId | None,
        exception: BaseException | None,
        *,
        status: str | None,
    ) -> None:
        """Records a failed step (`status`: what its status file now says) and fails the steps
        after it."""
        logger.error("step %s failed: %s", planned.name, cause)
        self.failures.append(StepFailure(planned.name, planned.output_path, cause, job_id))
        if self.first_exception is None and exception is not None:
            self.first_exception = exception
        self.outcomes[id(planned)] = ("failed", status)
        self._mark_dependants(planned)

    def _mark_dependants(self, failed: PlannedStep) -> None:
        """Every step after `failed` is DEP_FAILED (written where no live lease of another driver
        says it runs, and it has not succeeded)."""
        pending = list(self.dependants[id(failed)])
        while pending:
            child = pending.pop()
            if id(child) in self.outcomes:
                continue
            written = None
            if read_status(child.output_path) != SUCCESS:
                lease = self.settings.lease(child)
                if lease.try_acquire():
                    write_status(child.output_path, DEP_FAILED)
                    lease.release()
                    written = DEP_FAILED
            self.outcomes[id(child)] = ("dep_failed", written)
            self.waiting.pop(id(child), None)
            with contextlib.suppress(ValueError):
                self.ready.remove(child)
            pending.extend(self.dependants[id(child)])

    # -- leases ------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self.stop_heartbeat.wait(self.settings.heartbeat_interval):
            for key, run in list(self.running.items()):
                try:
                    run.lease.refresh()
                except LeaseLostError as e:
                    self.events.put(("lease_lost", key, e))
                except Exception:  # noqa: BLE001 - storage hiccup: the next beat tries again
                    name = run.planned.name
                    logger.warning("could not renew the lease of %s", name, exc_info=True)

    def _abandon_running(self) -> None:
        """On the way out with steps still running (an interrupt): stop their jobs and free their
        leases, so the next driver runs them without waiting for the leases to go stale."""
        for run in self.running.values():
            with contextlib.suppress(Exception):
                self.cluster.terminate(run.job_id)
            with contextlib.suppress(Exception):
                run.lease.release()
            logger.warning("step %s was interrupted; its job was stopped", run.planned.name)
        self.running.clear()

    def _write_run(self, status: str) -> None:
        steps = []
        for planned in self.selected:
            action, step_status = self.outcomes.get(id(planned), ("pending", None))
            steps.append(
                {
                    "name": planned.name,
                    "output_path": planned.output_path,
                    "version": info.own_version(planned, self.graph.paths),
                    "dependencies": [self.graph.paths[d] for d in planned.dependencies],
                    "action": action,
                    "status": step_status,
                }
            )
        failures = [f.__dict__ for f in self.failures]
        record = info.run_record(
            self.settings.prefix,
            self.settings.description,
            self.settings.holder,
            steps,
            status=status,
            started=self.started,
            ended=None if status == "running" else info.now(),
            failures=failures,
        )
        info.write_run(self.settings.run_file or "", record)
