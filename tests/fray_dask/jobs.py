"""Entrypoints and actor classes that tests run as jobs. Pickled by value, so a job's child
process needs neither `tests` importable nor pytest."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def report_env(*names: str) -> None:
    """Prints `NAME=value` for each variable (`<unset>` when missing)."""
    for name in names:
        print(f"{name}={os.environ.get(name, '<unset>')}")


def write_env(path: str, name: str) -> None:
    """Writes the variable's value to `path`: proves the job received it without printing it."""
    with open(path, "w") as f:
        f.write(os.environ.get(name, "<unset>"))


def leak_secret(name: str) -> None:
    """Prints a secret and raises with it in the message (both must come out masked)."""
    value = os.environ[name]
    print(f"my token is {value}")
    raise RuntimeError(f"auth failed with {value}")


def fail_times(counter: str, failures: int, message: str = "boom") -> str:
    """Appends a line to `counter` per attempt; raises ValueError for the first `failures`."""
    with open(counter, "a") as f:
        f.write("attempt\n")
    with open(counter) as f:
        attempt = len(f.readlines())
    if attempt <= failures:
        raise ValueError(f"{message} (attempt {attempt})")
    print(f"succeeded on attempt {attempt}")
    return "ok"


def sleep_with_pid(folder: str, seconds: float) -> None:
    """Writes `pid-<replica>` with its pid, then sleeps."""
    replica = os.environ.get("FRAY_REPLICA_ID", "0")
    with open(os.path.join(folder, f"pid-{replica}.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(folder, f"pid-{replica}.tmp"), os.path.join(folder, f"pid-{replica}"))
    time.sleep(seconds)


def print_burst_then_pause(pause: float) -> None:
    """Two lines at once, a quiet spell, a last line; then a long line without a newline."""
    print("line 0", flush=True)
    print("line 1", flush=True)
    time.sleep(pause)
    print("line 2", flush=True)
    sys.stdout.write("x" * 100_000)


def hold_probe(probe, seconds: float) -> None:
    with probe.hold(seconds):
        pass


def square(x: int) -> int:
    return x * x


def square_in_probe(args) -> int:
    probe, x, seconds = args
    with probe.hold(seconds):
        return x * x


def run_nested(x: int) -> int:
    """Inside a job: runs a task on the job's own cluster through fray_job_ctx()."""
    from fray_dask import fray_job_ctx

    ctx = fray_job_ctx()
    print(f"context {type(ctx).__name__}")
    return ctx.get(ctx.run(square, x))


def nested_into_file(path: str, x: int) -> None:
    with open(path, "w") as f:
        f.write(str(run_nested(x)))


def use_package(module: str, path: str) -> None:
    """Imports a module only an isolated virtualenv has and writes its VERSION to `path`."""
    import importlib

    with open(path, "w") as f:
        f.write(importlib.import_module(module).VERSION)


class Counter:
    def __init__(self, start: int = 0):
        self.n = start

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def value(self) -> int:
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def slow(self, seconds: float) -> int:
        time.sleep(seconds)
        return self.n

    def fail(self) -> None:
        raise KeyError("no such lesson")


class Gate:
    """An actor with `async def` methods: `wait` returns True once `open` was called, False after
    `timeout` seconds; `calls` is an ordinary method."""

    def __init__(self) -> None:
        self.opened = False
        self.n = 0
        self._event = None

    async def wait(self, timeout: float) -> bool:
        import asyncio

        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass
        return self.opened

    async def open(self) -> None:
        import asyncio

        self.opened = True
        if self._event is None:
            self._event = asyncio.Event()
        self._event.set()

    def calls(self) -> int:
        self.n += 1
        return self.n


def increment_named_counter(name: str, times: int) -> None:
    """A job that finds the named Counter (creating it if needed) and increments it."""
    from fray_dask import fray_job_ctx

    ctx = fray_job_ctx()
    counter = ctx.create_actor(Counter, name=name, get_if_exists=True)
    for _ in range(times):
        ctx.get(counter.incr.remote())
    print(f"counter now {ctx.get(counter.value.remote())}")


def both_then_nested(probe, path: str, x: int) -> None:
    """Holds the probe until two jobs hold it at once, then runs a task on the job's own Dask
    cluster: with both workers' CPUs held by jobs, that task still needs a free thread."""
    probe.enter()
    try:
        deadline = time.monotonic() + 30
        while probe.read()["now"] < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the other job never ran at the same time")
            time.sleep(0.05)
        nested_into_file(path, x)
    finally:
        probe.exit()


def sleep_on_first_attempt(counter: str, folder: str) -> str:
    """Attempt 1 writes its pid and sleeps (to be preempted); later attempts return at once."""
    with open(counter, "a") as f:
        f.write("attempt\n")
    with open(counter) as f:
        attempt = len(f.readlines())
    if attempt == 1:
        sleep_with_pid(folder, 300)
    print(f"attempt {attempt} done")
    return "done"


def report_current_cluster() -> None:
    from fray_dask import current_cluster, fray_job_ctx

    cluster = current_cluster()
    print(f"cluster {type(cluster).__name__} {cluster.spec}")
    print(f"context {type(fray_job_ctx()).__name__}")


class Curriculum:
    """The RL seed's coordinator: hands out lessons and collects their stats."""

    def __init__(self, lessons: list[str]):
        self.lessons = lessons
        self.stats: dict[str, int] = {name: 0 for name in lessons}
        self.samples = 0

    def sample_lesson(self) -> str:
        self.samples += 1
        return self.lessons[self.samples % len(self.lessons)]

    def update_lesson_stats(self, lesson: str, reward: int) -> None:
        self.stats[lesson] += reward

    def total(self) -> int:
        return sum(self.stats.values())


def _curriculum():
    from fray_dask import get_default_job_ctx

    ctx = get_default_job_ctx()
    handle = ctx.create_actor(
        Curriculum,
        ["math", "code"],
        name=os.environ["CURRICULUM_NAME"],
        get_if_exists=True,
        preemptible=False,
        num_cpus=0,
    )
    return ctx, handle


def rollout_worker(steps: int) -> None:
    ctx, curriculum = _curriculum()
    for _ in range(steps):
        lesson = ctx.get(curriculum.sample_lesson.remote())
        ctx.get(curriculum.update_lesson_stats.remote(lesson, 1))
    print(f"rollout {os.environ['FRAY_JOB_NAME']} did {steps} steps")


def train_worker(expected: int) -> None:
    ctx, curriculum = _curriculum()
    deadline = time.monotonic() + 60
    while ctx.get(curriculum.total.remote()) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError("the rollouts never reported")
        time.sleep(0.05)
    print(f"trained on {expected} rollouts")


def train_lm_main(config: dict) -> None:
    """Stands in for levanter's train_lm.main(config)."""
    print(f"training {config['model']} for {config['steps']} steps on {os.environ['DATA_PATH']}")


def spawn_grandchild(folder: str) -> None:
    """Starts a process that outlives this one (holding the output pipe), records its pid, exits."""
    import subprocess

    child = subprocess.Popen(["sleep", "300"])
    with open(os.path.join(folder, "grandchild.tmp"), "w") as f:
        f.write(str(child.pid))
    os.replace(os.path.join(folder, "grandchild.tmp"), os.path.join(folder, "grandchild"))
    print("started a grandchild and left")


def replica_identity(tag: str) -> dict[str, str]:
    """Returns who ran it: the replica id (and a TPU host's worker id) with `tag`."""
    return {
        "tag": tag,
        "replica": os.environ.get("FRAY_REPLICA_ID", "<unset>"),
        "tpu_worker": os.environ.get("TPU_WORKER_ID", "<unset>"),
    }


class LessonError(ValueError):
    """An exception type of the job's own, to check it comes back as itself."""


def fail_with_lesson_error(lesson: str) -> None:
    raise LessonError(f"no such lesson: {lesson}")


def big_value(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


def create_named_actor_twice(name: str) -> None:
    """Finds (or creates) the named Counter twice, as two parts of one job would."""
    from fray_dask import fray_job_ctx

    ctx = fray_job_ctx()
    for _ in range(2):
        counter = ctx.create_actor(Counter, name=name, get_if_exists=True)
        ctx.get(counter.incr.remote())
    print(f"counter {name} at {ctx.get(counter.value.remote())}")


def pipeline_cluster() -> tuple[str, bool, list]:
    """Runs a zephyr pipeline on `DaskBackend()` (no address) inside a job: returns the scheduler
    it ran on, whether this process started an embedded cluster of its own, and the results."""
    from fray_dask.embedded import running_embedded
    from zephyr import Dataset
    from zephyr.backends.dask import DaskBackend

    backend = DaskBackend()
    doubled = list(Dataset.from_list([1, 2, 3]).map(lambda x: 2 * x).execute(backend))
    return backend.client.scheduler.address, running_embedded() is not None, doubled
