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
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from zephyr.errors import UserCodeFailure, ZephyrError
from zephyr.kernels import existing_stage_outputs
from zephyr.plan import Plan, Stage
from zephyr.progress import StageProgress
from zephyr.quarantine import StageErrors

logger = logging.getLogger("zephyr")


@dataclass(frozen=True)
class BackendConfig:
    """Settings every backend accepts. `memory` is bytes; None means no request/limit."""

    max_parallelism: int | None = None
    memory: int | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    max_retries: int = 3


class TaskLost(Exception):
    """Internal: a task was lost (its worker died); the driver may resubmit it."""


_UNSET = object()


@dataclass
class _Pending:
    shards: list
    handle: Any
    attempt: int
    value: Any = _UNSET


def reshard_slices(lengths: list[int], num_shards: int) -> list[list[tuple[int, int, int]]]:
    """Split the concatenation of upstream outputs (with `lengths`) into `num_shards` contiguous
    ranges.

    Returns, per output shard, (upstream_index, start, stop) slices. Shard sizes differ by at most
    one.
    """
    total = sum(lengths)
    bounds = [total * j // num_shards for j in range(num_shards + 1)]
    offsets = list(itertools.accumulate(lengths, initial=0))
    out: list[list[tuple[int, int, int]]] = []
    for j in range(num_shards):
        lo, hi = bounds[j], bounds[j + 1]
        slices = []
        for u, length in enumerate(lengths):
            start, stop = max(lo, offsets[u]), min(hi, offsets[u] + length)
            if start < stop:
                slices.append((u, start - offsets[u], stop - offsets[u]))
        out.append(slices)
    return out


class Backend(abc.ABC):
    """Executes Datasets. Subclasses implement `_submit`, `_wait_any`, `_outcome` and `_cancel`.

    `execute(dataset)` returns an iterator over the results in shard order, streamed as shards
    finish; a pipeline that ends in a writer yields the written paths.
    """

    def __init__(self, config: BackendConfig | None = None):
        self.config = config or BackendConfig()
        # Per-stage progress on the driver (a bar on a terminal, a log line per stage); None for
        # none.
        self.progress: Any = StageProgress()
        # Set by `zephyr --dry-run`: execute prints the plan and runs nothing.
        self.dry_run = False

    # -- public API
    def execute(self, dataset: Any) -> Iterator:
        """Run `dataset` here; returns an iterator of results in shard order (nothing runs until the
        first `next`). Raises ZephyrError when user code fails, naming the stage, shard and input.
        """
        plan = dataset.compute_plan(self)
        if self.dry_run:
            print(plan.describe())
            return iter(())
        run = self._start_run(plan)
        return self._run_plan(plan, run)

    def run_nested(self, ops: tuple, records: Iterable, name: str) -> Iterator:
        """Run `ops` with each record of `records` as its own shard (a nested stage); stream the
        outputs in order. Called from inside a parent shard task."""
        stage = Stage(index=0, ops=ops, num_shards=-1, inputs=None, label=name)
        tasks = ([(i, ("item", rec))] for i, rec in enumerate(records))
        with self._nested_run(stage) as run:
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
    def _start_run(self, plan: Plan) -> Any:
        """Check the plan can run here (resources, pickling) before any task is submitted; return
        the per-execution state that `_submit` receives."""
        return None

    @contextlib.contextmanager
    def _nested_run(self, stage: Stage) -> Iterator[Any]:
        """The per-execution state of a nested stage run from inside a parent task."""
        yield None

    def _window(self, run: Any) -> int:
        """How many tasks may be submitted and not yet consumed at once."""
        return 1

    def _pack_size(self, run: Any, num_shards: int) -> int:
        """How many shards one task runs (packing amortises task overhead over many tiny shards)."""
        return 1

    @abc.abstractmethod
    def _submit(self, run: Any, stage: Stage, shards: list, flat: bool, attempt: int) -> Any:
        """Start one task running `stage` over `shards`; return a handle."""

    @abc.abstractmethod
    def _wait_any(self, run: Any, handles: list) -> None:
        """Block until at least one of `handles` is done (or raise if none ever can be)."""

    @abc.abstractmethod
    def _done(self, handle: Any) -> bool:
        """Whether the task behind `handle` has finished (successfully or not)."""

    @abc.abstractmethod
    def _outcome(self, handle: Any, keep: bool) -> Any:
        """The task's value (a TaskResult, or with `keep` a reference usable as a later task's
        input).

        Returns a UserCodeFailure for a failure in user code; raises TaskLost if the task was lost.
        """

    def _cancel(self, handles: list) -> None:  # noqa: B027 - in-process tasks cannot be cancelled
        """Stop tasks that are no longer wanted (after a failure)."""

    def _lengths(self, run: Any, refs: list) -> list[tuple[int, int]]:
        """(number of output records, records counted) of each kept intermediate result."""
        return [(len(r.outputs), r.records) for r in refs]

    def _kept_errors(self, run: Any, refs: list) -> list | None:
        """The `errors` of kept results that `_drive` saw only as references (None when it saw
        the TaskResults themselves and has counted them already)."""
        return None

    def _count_kept_errors(self, run: Any, stage: Stage, refs: list, progress: Any) -> None:
        """Enforce max_errors and count skipped records of a stage whose results stayed on the
        cluster (they are fetched only when the stage may skip records)."""
        errors = StageErrors.of(stage)
        kept = self._kept_errors(run, refs) if errors is not None else None
        if kept is None:
            return
        quarantined = sum(errors.add(e) for e in kept)
        if progress is not None:
            progress.add_records(0, quarantined)
        errors.finish()

    # -- the driver loop
    def _run_plan(self, plan: Plan, run: Any) -> Iterator:
        progress = self.progress
        refs: list = []
        lengths: list[tuple[int, int]] = []  # (records, records counted) of each kept result
        last = plan.stages[-1]
        existing = existing_stage_outputs(last) if len(plan.stages) > 1 else None
        if existing is not None:
            # The last stage's shards come from a reshard, so which upstream work feeds a missing
            # output is known only by running it; but when none is missing, nothing need run.
            logger.info(
                "stage %d '%s': all %d outputs exist (skip_existing); nothing to run",
                last.index,
                last.name,
                len(existing),
            )
            yield from existing
            return
        for stage in plan.stages:
            final = stage.index == len(plan.stages) - 1
            if stage.reshard_from is None:
                specs = [(i, ("item", item)) for i, item in enumerate(stage.inputs)]
            else:
                slices = reshard_slices([n for n, _ in lengths], stage.num_shards)
                specs = [
                    (j, ("slices", [(refs[u], a, b) for u, a, b in sl]))
                    for j, sl in enumerate(slices)
                ]
            pack = self._pack_size(run, len(specs))
            tasks = (specs[i : i + pack] for i in range(0, len(specs), pack))
            if progress is not None:
                progress.start(stage, len(specs))
            try:
                if final:
                    for result in self._drive(run, stage, tasks, keep=False, progress=progress):
                        for shard_out in result.outputs:
                            yield from shard_out
                else:
                    refs = list(self._drive(run, stage, tasks, keep=True, progress=progress))
                    lengths = self._lengths(run, refs)
                    self._count_kept_errors(run, stage, refs, progress)
                    if progress is not None:
                        progress.add_records(sum(counted for _, counted in lengths))
            finally:
                if progress is not None:
                    progress.finish()

    def _drive(
        self, run: Any, stage: Stage, tasks: Iterator[list], keep: bool, progress: Any
    ) -> Iterator:
        """Submit `tasks` (lists of shard specs) through a bounded window; yield their values in
        order.

        Fails fast: a user failure in any in-flight task cancels the rest and raises ZephyrError.
        """
        window = max(1, self._window(run))
        errors = StageErrors.of(stage)  # None unless the stage may skip records
        pending: deque[_Pending] = deque()
        tasks = iter(tasks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    shards = next(tasks, None)
                    if shards is None:
                        exhausted = True
                        break
                    handle = self._submit(run, stage, shards, keep, 0)
                    pending.append(_Pending(shards, handle, 0))
                if not pending:
                    if errors is not None:
                        errors.finish()  # a fractional max_errors needs every result
                    return
                if pending[0].value is _UNSET and not self._done(pending[0].handle):
                    self._wait_any(run, [p.handle for p in pending if p.value is _UNSET])
                # Fail fast: look at every finished task, not only the head of the queue.
                for p in list(pending):
                    if p.value is _UNSET and self._done(p.handle):
                        self._check(run, stage, p, keep)
                while pending and pending[0].value is not _UNSET:
                    p = pending.popleft()
                    bad = errors.add(getattr(p.value, "errors", None)) if errors else 0
                    if progress is not None:
                        if keep:
                            progress.update(len(p.shards), 0, quarantined=bad)
                        else:
                            progress.update(len(p.shards), p.value.records, p.value.skipped, bad)
                    yield p.value
        finally:
            if pending:
                self._cancel([p.handle for p in pending])

    def _check(self, run: Any, stage: Stage, p: _Pending, keep: bool) -> None:
        """Raise for a user failure; resubmit a lost task (up to max_retries)."""
        try:
            value = self._outcome(p.handle, keep)
        except TaskLost as lost:
            if p.attempt >= self.config.max_retries:
                first, last = p.shards[0][0], p.shards[-1][0]
                which = f"shard {first}" if first == last else f"shards {first}-{last}"
                raise ZephyrError(
                    f"stage '{stage.name}' {which}: the task was lost {p.attempt + 1} times "
                    f"(max_retries={self.config.max_retries}; last: {lost}); a worker died while "
                    "running it, often from running out of memory: raise --memory or --retries"
                ) from None
            logger.warning(
                "stage '%s': task lost (%s); retrying (attempt %d)", stage.name, lost, p.attempt + 2
            )
            p.attempt += 1
            p.handle = self._submit(run, stage, p.shards, keep, p.attempt)
            return
        if isinstance(value, UserCodeFailure):
            value.raise_()
        p.value = value
