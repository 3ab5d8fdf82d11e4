"""The backend contract and the driver loop shared by every backend.

No Dask import here. A backend only says how to submit one task and how to wait; this module owns
the semantics: stage order, the submission window, in-order streaming of results, fail-fast on user
errors, and retries of tasks lost with a worker.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from zephyr.backends.errors import ClusterLost, ClusterStalled, TaskLost
from zephyr.backends.flow import (
    bind_shuffles,
    cluster_failure,
    last_readers,
    removing,
    stage_inputs,
    take_rounds,
)
from zephyr.backends.packer import Packer
from zephyr.errors import UserCodeFailure, ZephyrError
from zephyr.kernels import KeptCounts, TaskResult, existing_stage_outputs
from zephyr.plan import Plan
from zephyr.progress import StageProgress
from zephyr.quarantine import StageErrors
from zephyr.shuffle import scratch
from zephyr.stages import NestedStage, SourceItem, Stage

logger = logging.getLogger("zephyr")

# Each `execute` in this process gets the next run id ("r1", "r2", ...): logs, progress and Dask
# task names carry it, so two runs of one script stay apart.
_RUN_NUMBERS = itertools.count(1)


@dataclass(frozen=True)
class BackendConfig:
    """Settings every backend accepts. `memory` is bytes; None means no request/limit."""

    max_parallelism: int | None = None
    memory: int | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    max_retries: int = 3
    scratch: str | None = None  # where shuffles write their runs (zephyr.shuffle.scratch)


_UNSET = object()
# A result kept on the cluster is a reference: its counts come apart (`_kept_counts`).
_UNCOUNTED = TaskResult([], 0)


@dataclass
class _Pending:
    shards: list
    handle: Any
    attempt: int
    value: Any = _UNSET


class Backend(abc.ABC):
    """Executes Datasets. Subclasses implement `_submit`, `_wait_any`, `_done`, `_outcomes` and
    `_cancel`.

    `execute(dataset)` returns an iterator over the results in shard order, streamed as shards
    finish; a pipeline that ends in a writer yields the written paths.
    """

    # True: execute prints the plan and runs nothing. `zephyr --dry-run` sets this class-wide
    # (zephyr.backends.config.cli_context), so it covers every backend the script makes.
    dry_run: bool = False

    def __init__(self, config: BackendConfig | None = None):
        self.config = config or BackendConfig()
        # Per-stage progress on the driver (a bar on a terminal, a log line per stage); None for
        # none.
        self.progress: Any = StageProgress()

    # -- public API
    def execute(self, dataset: Any) -> Iterator:
        """Run `dataset` here; returns an iterator of results in shard order (nothing runs until the
        first `next`). Raises ZephyrError when user code fails, naming the stage, shard and input.
        """
        return self._execute(dataset.compute_plan(self))

    def take(self, dataset: Any, n: int) -> list:
        """The first `n` records of `dataset` in shard order (Dataset.take). The last stage's
        shards run in rounds sized by the records each gave so far (the first round one shard),
        so only about as many shards as needed are read; earlier stages run whole."""
        if n == 0:
            return []
        plan = dataset.take_per_shard(n).compute_plan(self)
        with contextlib.closing(self._execute(plan, limit=n)) as records:
            return list(itertools.islice(records, n))

    def _execute(self, plan: Plan, limit: int | None = None) -> Iterator:
        if self.dry_run:
            print(plan.describe())
            return iter(())
        run_id = f"r{next(_RUN_NUMBERS)}"
        plan, folders = bind_shuffles(plan, run_id, self._scratch_root, self._task_budget)
        run = self._start_run(plan, run_id)
        records = self._run_plan(plan, run, run_id, limit)
        return removing(records, plan, folders) if folders else records

    def run_nested(self, stage: NestedStage, records: Iterable) -> Iterator:
        """Run `stage` (a Nested step's) with each record of `records` as its own shard; stream
        the outputs in order. Called from inside a parent shard task."""
        specs = ((i, SourceItem(rec)) for i, rec in enumerate(records))
        with self._nested_run(stage) as run:
            # A nested stage streams its parent's records: one shard per task, nothing read ahead.
            tasks = Packer(specs, first=1)
            for result in self._drive(run, stage, tasks, keep=False, progress=None):
                for shard_out in result.outputs:
                    yield from shard_out

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release what this backend started (clusters, pools). Safe to call twice."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        cfg = self.config
        parts = [f"max_parallelism={cfg.max_parallelism}"] if cfg.max_parallelism else []
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- hooks for subclasses
    def _scratch_root(self, op: Any) -> str:
        """Where the runs of the shuffle `op` go: the op's `scratch`, the backend's, or the
        default (zephyr.shuffle.scratch)."""
        return op.scratch or self.config.scratch or self._default_scratch()

    def _default_scratch(self) -> str:
        """Where shuffles write when neither the op nor the backend says."""
        return scratch.default_root()

    def _task_budget(self) -> int:
        """A task's memory budget in bytes (zephyr.shuffle.scratch)."""
        threads = self.config.max_parallelism or os.cpu_count() or 1
        return scratch.local_budget(self.config.memory, threads)

    def _start_run(self, plan: Plan, run_id: str) -> Any:
        """Check the plan can run here (resources, pickling) before any task is submitted; return
        the per-execution state that `_submit` receives. `run_id` names this execution ("r3")."""
        return None

    @contextlib.contextmanager
    def _nested_run(self, stage: Stage) -> Iterator[Any]:
        """The per-execution state of a nested stage run from inside a parent task."""
        yield None

    def _window(self, run: Any) -> int:
        """How many tasks may be submitted and not yet consumed at once."""
        return 1

    def _pack_size(self, run: Any, num_shards: int) -> int:
        """How many shards the first tasks of a stage run (packing amortises task overhead over
        many tiny shards); 1 for backends whose tasks cost nothing to start."""
        return 1

    def _max_pack(self, run: Any) -> int:
        """The most shards one task may run once shard costs are known (1: never pack)."""
        return 1

    def _slots(self, run: Any) -> int:
        """How many tasks of this backend run at once."""
        return 1

    @abc.abstractmethod
    def _submit(self, run: Any, stage: Stage, shards: list, keep: bool, attempt: int) -> Any:
        """Start one task running `stage` over `shards` ((shard index, SourceItem or
        ReshardSlices) pairs); return a handle.

        `keep` (the one name for it in the driver, the backends and `run_task`): the result is
        the next stage's input (a reshard follows), not the pipeline's output. The task returns
        its outputs as one flat list, which the next stage's ReshardSlices cut, and a backend may
        keep it where it ran (Dask: on the worker) instead of fetching it to the driver."""

    def _submit_many(
        self, run: Any, stage: Stage, batches: list[list], keep: bool
    ) -> list:  # one handle per batch, in order; backends with a cheaper bulk submit override it
        return [self._submit(run, stage, shards, keep, 0) for shards in batches]

    @abc.abstractmethod
    def _wait_any(self, run: Any, handles: list) -> None:
        """Block until at least one of `handles` is done (or raise if none ever can be)."""

    @abc.abstractmethod
    def _done(self, handle: Any) -> bool:
        """Whether the task behind `handle` has finished (successfully or not)."""

    @abc.abstractmethod
    def _outcomes(self, run: Any, handles: list, keep: bool) -> list:
        """The outcomes of finished tasks, in order (fetched together where a backend can): each
        the task's value (a TaskResult, or with `keep` a reference usable as a later task's input),
        a UserCodeFailure for a failure in user code, or a TaskLost for a task that was lost."""

    def _cancel(self, handles: list) -> None:  # noqa: B027 - in-process tasks cannot be cancelled
        """Stop tasks that are no longer wanted (after a failure)."""

    def _lengths(self, run: Any, refs: list) -> list[KeptCounts]:
        """The counts of each kept intermediate result (outputs, records in and out, and its
        skipped-record counts only where `_drive` saw references, not the results)."""
        return [KeptCounts(len(r.outputs), r.records_in, r.records, None) for r in refs]

    def _kept_counts(self, run: Any, stage: Stage) -> tuple[int, int]:
        """(records in, records out) of `stage`'s tasks whose results stay on the cluster (where
        `_drive` sees references, not TaskResults), reported since the last call: the progress of
        a stage before a reshard is live. Never blocks; (0, 0) where nothing is reported."""
        return 0, 0

    def _count_kept_errors(self, stage: Stage, kept: list, progress: Any) -> None:
        """Enforce max_errors and count skipped records of a stage whose results stayed on the
        cluster: `kept` holds each result's `errors` as `_lengths` read them (all None where
        `_drive` saw the TaskResults themselves and has counted them already)."""
        errors = StageErrors.of(stage)
        if errors is None or all(e is None for e in kept):
            return
        quarantined = sum(errors.add(e) for e in kept)
        if progress is not None:
            progress.add_records(0, 0, quarantined)
        errors.finish()

    # -- the driver loop
    def _run_plan(self, plan: Plan, run: Any, run_id: str, limit: int | None = None) -> Iterator:
        progress = self.progress
        last = plan.stages[-1]
        existing = existing_stage_outputs(last) if len(plan.stages) > 1 else None
        if existing is not None:
            # The last stage's shards come from a reshard, so which upstream work feeds a missing
            # output is known only by running it; but when none is missing, nothing need run.
            logger.info(
                "[%s s%d/%d] '%s': all %d outputs exist (skip_existing); nothing to run",
                run_id,
                last.index + 1,
                len(plan.stages),
                last.name,
                len(existing),
            )
            yield from existing
            return
        done: dict[int, tuple[list, list | None]] = {}  # stage index -> (its outputs, lengths)
        readers = last_readers(plan)
        for stage in plan.stages:
            final = stage.index == len(plan.stages) - 1
            specs = stage_inputs(stage, done)
            if progress is not None:
                progress.start(stage, len(specs), run_id, len(plan.stages))
            try:
                if final and limit is not None:
                    window = max(1, self._window(run))

                    def drive(batch: list, stage: Stage = stage) -> Iterator:
                        tasks = Packer(batch, first=1)
                        return self._drive(run, stage, tasks, keep=False, progress=progress)

                    yield from take_rounds(drive, specs, limit, window)
                elif final:
                    tasks = self._packer(run, specs)
                    for result in self._drive(run, stage, tasks, keep=False, progress=progress):
                        for shard_out in result.outputs:
                            yield from shard_out
                elif stage.scatters:  # where its runs are: small, fetched to the driver
                    tasks = self._packer(run, specs)
                    results = self._drive(run, stage, tasks, keep=False, progress=progress)
                    done[stage.index] = ([out for r in results for out in r.outputs], None)
                else:
                    tasks = self._packer(run, specs)
                    refs = list(self._drive(run, stage, tasks, keep=True, progress=progress))
                    try:
                        lengths = self._lengths(run, refs)
                    except (ClusterStalled, ClusterLost) as e:
                        raise ZephyrError(cluster_failure(stage, e, len(specs), 0, True)) from None
                    self._count_kept_errors(stage, [c.errors for c in lengths], progress)
                    if progress is not None:
                        progress.set_records(
                            sum(c.records_in for c in lengths), sum(c.records_out for c in lengths)
                        )
                    done[stage.index] = (refs, lengths)
            finally:
                if progress is not None:
                    progress.finish()
            for index in [i for i, reader in readers.items() if reader == stage.index]:
                del done[index]  # no later stage reads it: its results may go

    def _packer(self, run: Any, specs: list) -> Packer:
        return Packer(
            specs,
            first=self._pack_size(run, len(specs)),
            limit=self._max_pack(run),
            slots=self._slots(run),
            total=len(specs),
        )

    def _drive(self, run: Any, stage: Stage, tasks: Packer, keep: bool, progress: Any) -> Iterator:
        """Submit `tasks` (batches of shard specs) through a bounded window; yield their values in
        order.

        Tasks are submitted and their outcomes fetched in batches (one round trip for all that
        finished, not one per task). Fails fast: a user failure in any in-flight task cancels the
        rest and raises ZephyrError; a stalled or lost cluster raises ZephyrError naming the stage
        and how many of its shards were unfinished.
        """
        window = max(1, self._window(run))
        errors = StageErrors.of(stage)  # None unless the stage may skip records
        pending: deque[_Pending] = deque()
        exhausted = False
        finished_shards = 0
        try:
            while True:
                fresh: list[list] = []
                while not exhausted and len(pending) + len(fresh) < window:
                    shards = tasks.take()
                    if shards is None:
                        exhausted = True
                        break
                    fresh.append(shards)
                if fresh:
                    handles = self._submit_many(run, stage, fresh, keep)
                    pending.extend(_Pending(s, h, 0) for s, h in zip(fresh, handles, strict=True))
                if not pending:
                    if errors is not None:
                        errors.finish()  # a fractional max_errors needs every result
                    return
                if pending[0].value is _UNSET and not self._done(pending[0].handle):
                    self._wait_any(run, [p.handle for p in pending if p.value is _UNSET])
                # Fail fast: look at every finished task, not only the head of the queue.
                ready = [p for p in pending if p.value is _UNSET and self._done(p.handle)]
                if ready:
                    outcomes = self._outcomes(run, [p.handle for p in ready], keep)
                    for p, outcome in zip(ready, outcomes, strict=True):
                        self._check(run, stage, p, keep, outcome)
                    tasks.observe(sum(len(p.shards) for p in ready if p.value is not _UNSET))
                while pending and pending[0].value is not _UNSET:
                    p = pending.popleft()
                    finished_shards += len(p.shards)
                    bad = errors.add(getattr(p.value, "errors", None)) if errors else 0
                    if progress is not None:
                        v = p.value if isinstance(p.value, TaskResult) else _UNCOUNTED
                        progress.update(len(p.shards), v.records_in, v.records, v.skipped, bad)
                    yield p.value
                if progress is not None and keep:
                    progress.add_records(*self._kept_counts(run, stage))
        except (ClusterStalled, ClusterLost) as e:
            unfinished = sum(len(p.shards) for p in pending if p.value is _UNSET)
            raise ZephyrError(
                cluster_failure(stage, e, finished_shards, unfinished, exhausted)
            ) from None
        finally:
            if pending:
                self._cancel([p.handle for p in pending])

    def _check(self, run: Any, stage: Stage, p: _Pending, keep: bool, outcome: Any) -> None:
        """Raise for a user failure; resubmit a lost task (up to max_retries)."""
        if isinstance(outcome, TaskLost):
            if p.attempt >= self.config.max_retries:
                first, last = p.shards[0][0], p.shards[-1][0]
                which = f"shard {first}" if first == last else f"shards {first}-{last}"
                raise ZephyrError(
                    f"stage '{stage.name}' {which}: the task was lost {p.attempt + 1} times "
                    f"(max_retries={self.config.max_retries}; last: {outcome}); a worker died "
                    "while running it, often from running out of memory: raise --memory or "
                    "--retries"
                ) from None
            logger.warning(
                "stage %d '%s': task lost (%s); retrying (attempt %d)",
                stage.number,
                stage.name,
                outcome,
                p.attempt + 2,
            )
            p.attempt += 1
            p.handle = self._submit(run, stage, p.shards, keep, p.attempt)
            return
        if isinstance(outcome, UserCodeFailure):
            outcome.raise_()
        p.value = outcome
