"""How the stages of a run feed each other: each stage's shard inputs from the outputs of the
stages it reads, when those outputs may go, the run's shuffle scratch folders (created when it
starts, removed when it ends), and the message of a run the cluster stopped. No Dask import."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

from zephyr.backends.errors import ClusterLost
from zephyr.plan import Plan
from zephyr.shuffle import scratch
from zephyr.shuffle.runs import filesystem
from zephyr.shuffle.steps import Join, JoinInput, ShuffleStep
from zephyr.stages import Stage

logger = logging.getLogger("zephyr")


def bind_shuffles(
    plan: Plan, run_id: str, root_of: Callable[[Any], str], budget: Callable[[], int]
) -> tuple[Plan, list[str]]:
    """`plan` with its shuffles given this run's scratch folders (under `root_of(op)`) and a
    task's memory budget (`budget()`, asked only of a plan that shuffles: zephyr.shuffle.scratch),
    and the run's folders (`removing` creates and removes them)."""
    if not plan.shuffles:
        return plan, []
    folders: dict[str, str] = {}

    def folder_of(op: Any) -> str:
        root = root_of(op)
        if root not in folders:
            folders[root] = scratch.run_folder(root, run_id)
        return folders[root]

    return plan.bind_shuffles(folder_of, budget()), list(folders.values())


def step_folders(plan: Plan) -> set[str]:
    """The scratch folders the shuffle steps of a bound `plan` write in."""
    stages = [*plan.stages]
    stages += [step.side for stage in plan.stages for step in stage.steps if isinstance(step, Join)]
    steps = [step for stage in stages for step in stage.steps]
    return {step.folder for step in steps if isinstance(step, ShuffleStep)}


def take_rounds(
    drive: Callable[[list], Iterator], specs: list, limit: int, window: int
) -> Iterator:
    """The records of the last stage's shards (`specs`), in order, until `limit`: `drive(batch)`
    runs a batch of shards and yields their results. Shards run in rounds, the first of one
    shard, each later one as many as the records per shard so far say are still needed (twice
    the last round while none came), at most `window` (Dataset.take)."""
    got = finished = at = size = 0
    while at < len(specs) and got < limit:
        if got:
            size = math.ceil((limit - got) * finished / got)
        else:
            size = 2 * size or 1
        size = max(1, min(size, len(specs) - at, window))
        batch, at = specs[at : at + size], at + size
        with contextlib.closing(drive(batch)) as results:
            for result in results:
                for shard_out in result.outputs:
                    finished += 1
                    for record in shard_out:
                        yield record
                        got += 1
                        if got >= limit:
                            return


def stage_inputs(stage: Stage, done: dict) -> list:
    """(shard index, input) of each shard of `stage`, from the outputs of the stages it reads."""
    refs, lengths = done[stage.upstream] if stage.upstream is not None else ([], None)
    specs = stage.shard_inputs(refs, [c.outputs for c in lengths or ()])
    joins = [step for step in stage.steps if isinstance(step, Join)]
    if not joins:
        return specs
    sides = [stage_inputs(join.side, done) for join in joins]
    return [(i, JoinInput(spec, tuple(side[i][1] for side in sides))) for i, spec in specs]


def last_readers(plan: Plan) -> dict[int, int]:
    """For each stage whose outputs another reads, the index of the last stage reading them."""
    readers: dict[int, int] = {}
    for stage in plan.stages:
        sides = [step.side for step in stage.steps if isinstance(step, Join)]
        for reader in [stage, *sides]:
            if reader.upstream is not None:
                readers[reader.upstream] = stage.index
    return readers


def removing(records: Iterator, plan: Plan, folders: list[str]) -> Iterator:
    """`records`, with the run's scratch folders created when the run starts (its first result is
    asked for) and removed however it ends (the caller stopping early included)."""
    try:
        for folder in step_folders(plan):
            fs, path = filesystem(folder)
            fs.makedirs(path, exist_ok=True)
        yield from records
    finally:
        remove_folders(folders)


def remove_folders(folders: list[str]) -> None:
    """Remove a run's scratch folders; a failure is logged, never raised over the run's own
    outcome."""
    for folder in folders:
        try:
            scratch.remove(folder)
        except Exception as e:
            logger.warning("could not remove the shuffle scratch folder %s: %s", folder, e)


def cluster_failure(
    stage: Stage, error: Exception, finished: int, unfinished: int, all_submitted: bool
) -> str:
    """The message for a run that cannot go on because of the cluster (not the user's code)."""
    total = stage.num_shards if stage.num_shards >= 0 else None
    left = total - finished if total is not None else unfinished
    queued = "" if all_submitted or total is None else f", {left - unfinished} not yet submitted"
    where = f"stage {stage.number} '{stage.name}'"
    done = f"{finished}/{total}" if total is not None else f"{finished}"
    if isinstance(error, ClusterLost):
        return (
            f"{where}: {error}; {done} shards had finished and {left} had not ({unfinished} "
            f"running{queued}). Outputs already committed are complete files and nothing partial "
            "was left at a final path: restart the scheduler and its workers and run again with "
            "skip_existing=True on the writer to compute only the missing shards"
        )
    if left == 0:  # every shard finished, but their outputs (kept for the next stage) are gone
        return (
            f"{where}: the outputs of its {done} finished shards, kept on the workers for the "
            f"next stage, cannot be read or recomputed: {error}; check why the workers died (out "
            "of memory, preempted) and run again (skip_existing=True on the writer keeps the "
            "outputs already committed)"
        )
    return (
        f"{where}: {left} unfinished shard(s) ({unfinished} submitted{queued}, {done} finished) "
        f"cannot run: {error}"
    )
