"""fray_dask.executor's overhead over plain fray_dask jobs, and the time to find a finished DAG
has nothing to do.

1. A DAG of N no-op steps (default 200: 10 layers of 20, each step reading 2 steps of the layer
   before through an InputName and holding one versioned value), run by `Executor.run` into a
   fresh prefix, against the same N no-op functions launched as plain fray_dask jobs
   (`cluster.launch(JobRequest(...))`, the executor's default resources) in the same dependency
   order: each as soon as the jobs it reads finished, a thread per job in `cluster.wait`, with the
   same `--max-concurrent` bound (default: none, every ready step at once).
   Target: executor / plain <= 1.3x (median of the per-round ratios).
2. Nothing to do: a new Executor on the same prefix runs the finished DAG again; every step must
   be skipped. Target: < 2 s on local disk (median over rounds). Shown too: `dry_run=True` there.

Why 10 layers of 20 and not deeper: a step's version nests the full versions of the steps it
reads (Marin's scheme, kept for its output paths), so with 2 inputs per step the version of a
step L layers down holds 2**L copies of a first-layer version. Each version's JSON is spliced
from its inputs' (built once per step), but its text still doubles per layer: with 20 layers of
10 the last layer's versions are ~97 MB each and hashing them takes ~7.5 s (16 layers: 0.3 s)
before any step runs; `--layers 20` runs that shape.

Each variant is warmed up first; each of --repeat rounds runs both back to back (alternating
which goes first) on the same cluster (`--spec`: `dask` = the embedded Dask cluster, 2 workers
with CPU=1 each; `local` = one child process per job).

Run:  python benchmarks/executor_overhead.py
      python benchmarks/executor_overhead.py --spec local --repeat 3
      python benchmarks/executor_overhead.py --steps 12 --layers 3 --repeat 1   (a smoke run)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import met  # noqa: E402

RATIO_TARGET = 1.3
NOTHING_TO_DO_TARGET = 2.0  # seconds


@dataclass(frozen=True)
class NoopConfig:
    """A step's config: the paths it reads, one versioned value, its own output path."""

    inputs: list[Any]
    seed: Any
    output_path: Any


def noop_step(config: NoopConfig) -> None:
    """The step function of every step: takes the config, does nothing."""
    return None


def dag_shape(steps: int, layers: int) -> list[list[int]]:
    """For each step (layer by layer), the indices of the steps it reads: step i of layer l reads
    steps i and i+1 (wrapping) of layer l-1; the first layer reads nothing."""
    if layers < 1 or steps < layers or steps % layers:
        raise ValueError(
            f"--steps must be a multiple of --layers (layers of equal width), got --steps {steps} "
            f"--layers {layers}; e.g. --steps 200 --layers 10"
        )
    width = steps // layers
    deps: list[list[int]] = []
    for layer in range(layers):
        for i in range(width):
            above = [] if layer == 0 else sorted({i, (i + 1) % width})
            deps.append([(layer - 1) * width + j for j in above])
    return deps


def step_name(index: int, width: int) -> str:
    return f"noop-l{index // width:02d}-s{index % width:02d}"


def executor_steps(shape: list[list[int]], width: int) -> list:
    from fray_dask.executor import ExecutorStep, output_path_of, this_output_path, versioned

    steps: list = []
    for index, deps in enumerate(shape):
        config = NoopConfig(
            inputs=[output_path_of(steps[d]) for d in deps],
            seed=versioned(index),
            output_path=this_output_path(),
        )
        steps.append(ExecutorStep(step_name(index, width), noop_step, config))
    return steps


def run_executor(cluster, prefix: str, steps: list, max_concurrent: int | None) -> float:
    from fray_dask.executor import Executor

    start = time.perf_counter()
    outcomes = Executor(prefix, cluster=cluster).run(steps, max_concurrent=max_concurrent)
    elapsed = time.perf_counter() - start
    actions = {o.action for o in outcomes}
    assert len(outcomes) == len(steps) and actions == {"ran"}, (len(outcomes), actions)
    return elapsed


def run_plain_jobs(
    cluster, shape: list[list[int]], width: int, root: str, max_concurrent: int | None
) -> float:
    """The baseline: each step's no-op as a plain job, launched once the jobs it reads finished,
    at most `max_concurrent` at once; a thread per job waits and feeds the loop's queue."""
    from fray_dask import Entrypoint, JobRequest, JobStatus, ResourceConfig

    limit = max_concurrent or len(shape)
    names = [step_name(i, width) for i in range(len(shape))]
    configs = [
        NoopConfig([f"{root}/{names[d]}" for d in deps], i, f"{root}/{names[i]}")
        for i, deps in enumerate(shape)
    ]
    waits_for = [set(deps) for deps in shape]
    dependants: list[list[int]] = [[] for _ in shape]
    for i, deps in enumerate(shape):
        for d in deps:
            dependants[d].append(i)
    events: queue.Queue = queue.Queue()

    def follow(index: int, job_id: str) -> None:
        try:
            events.put((index, cluster.wait(job_id)))
        except Exception as e:  # noqa: BLE001 - reported by the loop
            events.put((index, e))

    start = time.perf_counter()
    deadline = time.monotonic() + 600
    ready = deque(i for i, deps in enumerate(shape) if not deps)
    running = done = 0
    while done < len(shape):
        while ready and running < limit:
            i = ready.popleft()
            request = JobRequest(
                name=names[i],
                entrypoint=Entrypoint.from_callable(noop_step, args=[configs[i]]),
                resources=ResourceConfig(),
            )
            job_id = cluster.launch(request)
            threading.Thread(target=follow, args=(i, job_id), daemon=True).start()
            running += 1
        try:
            i, result = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(
                f"plain jobs: {len(shape) - done} of {len(shape)} not finished after 600 s"
            ) from None
        if isinstance(result, Exception) or result.status is not JobStatus.SUCCEEDED:
            raise RuntimeError(f"plain job {names[i]} did not succeed: {result}")
        running -= 1
        done += 1
        for child in dependants[i]:
            waits_for[child].discard(i)
            if not waits_for[child]:
                ready.append(child)
    return time.perf_counter() - start


def time_nothing_to_do(cluster, prefix: str, steps: list) -> tuple[float, float]:
    """(run, dry run) seconds of new Executors on the finished DAG at `prefix`."""
    from fray_dask.executor import Executor

    start = time.perf_counter()
    outcomes = Executor(prefix, cluster=cluster).run(steps)
    run_time = time.perf_counter() - start
    actions = [o.action for o in outcomes]
    assert actions == ["skipped"] * len(steps), f"not all skipped: {set(actions)}"

    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        Executor(prefix, cluster=cluster).run(steps, dry_run=True)
    dry_time = time.perf_counter() - start
    summary = f"[dry run] 0 to run, {len(steps)} to skip"
    assert summary in printed.getvalue(), printed.getvalue()[-300:]
    return run_time, dry_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="no-op steps in the DAG")
    parser.add_argument("--layers", type=int, default=10, help="layers of equal width")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median ratio counts")
    parser.add_argument("--spec", default="dask", help="cluster spec: dask (embedded) or local")
    parser.add_argument(
        "--max-concurrent", type=int, default=None, help="steps at once (default: no bound)"
    )
    args = parser.parse_args()
    if args.max_concurrent is not None and args.max_concurrent < 1:
        parser.error(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    try:
        shape = dag_shape(args.steps, args.layers)
    except ValueError as e:
        parser.error(str(e))
    width = args.steps // args.layers

    # Jobs unpickle noop_step and NoopConfig in their own process, where this script is no module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from fray_dask import cluster_from_spec

    cluster = cluster_from_spec(args.spec)
    work = Path(tempfile.mkdtemp(prefix="executor-overhead-"))
    try:
        # Warm-up: workers import fray_dask and cloudpickle, code paths run once.
        warm = dag_shape(min(2, args.layers) * width, min(2, args.layers))
        run_executor(cluster, str(work / "warm"), executor_steps(warm, width), args.max_concurrent)
        run_plain_jobs(cluster, warm, width, str(work / "warm-plain"), args.max_concurrent)

        def executor_variant(prefix: str) -> float:
            return run_executor(cluster, prefix, executor_steps(shape, width), args.max_concurrent)

        def plain_variant(root: str) -> float:
            return run_plain_jobs(cluster, shape, width, root, args.max_concurrent)

        executor_t, plain_t, noop_t, dry_t = [], [], [], []
        variants = [("executor", executor_variant, executor_t), ("plain", plain_variant, plain_t)]
        for i in range(args.repeat):
            for name, measure, results in variants[:: -1 if i % 2 else 1]:
                results.append(measure(str(work / f"{name}-{i}")))  # fresh: every step runs
            # As a new script would: a new Executor and new step objects on the finished DAG.
            run_time, dry_time = time_nothing_to_do(
                cluster, str(work / f"executor-{i}"), executor_steps(shape, width)
            )
            noop_t.append(run_time)
            dry_t.append(dry_time)
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)

    ratios = [e / p for e, p in zip(executor_t, plain_t, strict=True)]
    ratio = statistics.median(ratios)
    bound = args.max_concurrent or "no bound"
    print(
        f"DAG: {args.steps} no-op steps, {args.layers} layers of {width}, each reading "
        f"{min(2, width)} of the layer before; spec {args.spec}; max_concurrent {bound}; "
        f"{args.repeat} rounds"
    )
    print(
        f"  Executor.run, fresh prefix        best {min(executor_t):6.2f} s"
        f"   median {statistics.median(executor_t):6.2f} s"
    )
    print(
        f"  plain fray_dask jobs, same order  best {min(plain_t):6.2f} s"
        f"   median {statistics.median(plain_t):6.2f} s   (baseline)"
    )
    print(f"  ratio per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(
        f"  median ratio executor/plain {ratio:.2f}x  target <= {RATIO_TARGET}x: "
        f"{met(ratio <= RATIO_TARGET)}"
    )
    noop = statistics.median(noop_t)
    print(f"nothing to do: a new Executor on the finished DAG, {args.repeat} rounds")
    for label, times in (
        (f"run(), all {args.steps} skipped", noop_t),
        ("run(dry_run=True)", dry_t),
    ):
        each = ", ".join(f"{t:.3f}" for t in times)
        print(f"  {label:<32} best {min(times):6.3f} s   per round: {each}")
    print(
        f"  median nothing-to-do run {noop:.3f} s  target < {NOTHING_TO_DO_TARGET:g} s: "
        f"{met(noop < NOTHING_TO_DO_TARGET)}"
    )


if __name__ == "__main__":
    main()
