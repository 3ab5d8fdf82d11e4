"""DaskBackend: each stage becomes Dask tasks submitted straight to the scheduler.

The only zephyr module (with `zephyr.backends.connection`) that imports dask/distributed. Tasks are
submitted with `client.submit` so `resources` reach the scheduler (dask.bag's graph optimisation
drops annotations, dask/dask#7036). Keys read `zephyr-<stage>-<first shard>-<run token>` so the
dashboard groups a stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import distributed
from distributed import Client

from zephyr.backends.base import Backend, BackendConfig, TaskLost
from zephyr.backends.config import make_config
from zephyr.backends.connection import Connection, connect
from zephyr.errors import UserCodeFailure, ZephyrError
from zephyr.kernels import TaskResult, run_task
from zephyr.plan import Nested, Plan, Stage

logger = logging.getLogger("zephyr")

# Shards per task at most, and the number of tasks per execution slot below which shards are not
# packed.
MAX_PACK = 64
TASKS_PER_SLOT = 32
# Stages pickled smaller than this travel inside each task; larger ones are broadcast once.
INLINE_PAYLOAD_BYTES = 64 * 1024


class UserTaskError(Exception):
    """Raised by a task when user code failed (Dask never retries it); carries the description."""

    def __init__(self, failure: UserCodeFailure):
        super().__init__(failure.message)
        self.failure = failure

    def __reduce__(self) -> tuple:
        return (UserTaskError, (self.failure,))


# -- worker side
_STAGE_CACHE: OrderedDict[str, Stage] = OrderedDict()
_SEMAPHORES: dict[str, distributed.Semaphore] = {}
_CACHE_LOCK = threading.Lock()


def _load_stage(token: str, payload: bytes) -> Stage:
    """Unpickle a stage once per worker process (tasks of a stage share the scattered payload)."""
    with _CACHE_LOCK:
        stage = _STAGE_CACHE.get(token)
        if stage is None:
            stage = cloudpickle.loads(payload)
            _STAGE_CACHE[token] = stage
            while len(_STAGE_CACHE) > 32:
                _STAGE_CACHE.popitem(last=False)
        return stage


def _semaphore(name: str, leases: int) -> distributed.Semaphore:
    with _CACHE_LOCK:
        sem = _SEMAPHORES.get(name)
        if sem is None:
            sem = _SEMAPHORES[name] = distributed.Semaphore(max_leases=leases, name=name)
        return sem


@contextlib.contextmanager
def _slot(sem_name: str | None, leases: int) -> Iterator[None]:
    """Hold one lease of the backend's cluster-wide semaphore. While waiting for it the task secedes
    from the worker's thread pool, so waiting tasks never starve running ones of threads."""
    if sem_name is None:
        yield
        return
    sem = _semaphore(sem_name, leases)
    if not sem.acquire(timeout=0):
        distributed.secede()
        try:
            sem.acquire()
        finally:
            distributed.rejoin()
    try:
        yield
    finally:
        sem.release()


class _Opaque:
    """Hides a list of source items from Dask, which would otherwise walk every element looking for
    futures (items hold none; reshard specs do and are passed as they are)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def _dask_task(
    payload: bytes, token: str, shards: Any, flat: bool, sem: str | None, leases: int
) -> TaskResult:
    if isinstance(shards, _Opaque):
        shards = shards.value
    stage = _load_stage(token, payload)
    with _slot(sem, leases):
        result = run_task(stage, shards, flat)
    if isinstance(result, UserCodeFailure):
        raise UserTaskError(result)
    return result


def _result_lengths(result: TaskResult) -> tuple[int, int]:
    return len(result.outputs), result.records


def _result_errors(result: TaskResult) -> dict | None:
    return result.errors


# -- driver side
def _task_states(keys: list, dask_scheduler: Any = None) -> list[str]:
    return [dask_scheduler.tasks[k].state for k in keys if k in dask_scheduler.tasks]


@dataclass
class _Run:
    """Per-execution state: the connection to submit through and each stage's payload."""

    conn: Connection
    token: str
    resources: dict | None
    payloads: dict
    threads: int
    stalled_since: float | None = None  # when tasks were first seen that no worker can run

    @property
    def client(self) -> Client:
        return self.conn.client


class DaskBackend(Backend):
    """Run pipelines on a Dask cluster.

    `address=None` starts (once per process, on first use) an embedded `distributed.LocalCluster` on
    127.0.0.1 with one single-threaded worker process per core, the dashboard on, and worker
    resources `CPU`, `MEMORY` and `GPU` advertised. A `tcp://host:8786` address or an existing
    `Client` uses that cluster; `"kube?name=x&workers=4&image=...&memory=8GB"` starts (or joins) a
    Dask cluster on Kubernetes whose workers advertise the same resources (zephyr.backends.kube,
    deploy/k8s/README.md). `memory`, `num_cpus` and `num_gpus` become the `MEMORY`, `CPU` and
    `GPU` resources of every task; `max_parallelism` caps how many shards of this backend run at
    once across the cluster.
    """

    def __init__(
        self,
        address: str | Client | None = None,
        config: BackendConfig | None = None,
        *,
        connect_timeout: float = 5.0,
        no_worker_timeout: float = 60.0,
        **settings: Any,
    ):
        super().__init__(config or make_config(**settings))
        self.address = address
        self.connect_timeout = connect_timeout
        self.no_worker_timeout = no_worker_timeout
        self._id = uuid.uuid4().hex[:12]
        self._conn: Connection | None = None
        self._warned: set[str] = set()

    # -- connection
    @property
    def connection(self) -> Connection:
        # Reconnect if another backend sharing this address closed the client.
        if self._conn is None or self._conn.client.status == "closed":
            self._conn = connect(self.address, self.connect_timeout)
        return self._conn

    @property
    def client(self) -> Client:
        """The driver-side distributed.Client (connecting or starting the embedded cluster if
        needed)."""
        return self.connection.client

    @property
    def dashboard_link(self) -> str | None:
        return self.connection.dashboard_link

    @property
    def semaphore_name(self) -> str | None:
        return f"zephyr-{self._id}" if self.config.max_parallelism else None

    def __getstate__(self) -> dict:
        # Backends travel inside nested stages: keep the settings, not the live connection.
        state = self.__dict__.copy()
        state["_conn"] = None
        state["progress"] = None
        if isinstance(self.address, Client):
            state["address"] = self.address.scheduler.address
        return state

    def __repr__(self) -> str:
        cfg = self.config
        parts = [f"address={self.address!r}"] if isinstance(self.address, str) else []
        for name in ("max_parallelism", "memory", "num_cpus", "num_gpus"):
            if getattr(cfg, name) is not None:
                parts.append(f"{name}={getattr(cfg, name)}")
        return f"DaskBackend({', '.join(parts)})"

    # -- checks before submitting
    def _requested_resources(self) -> dict:
        cfg = self.config
        wanted = {"MEMORY": cfg.memory, "CPU": cfg.num_cpus, "GPU": cfg.num_gpus}
        return {k: v for k, v in wanted.items() if v}

    def _check_resources(self, workers: list[dict]) -> dict | None:
        """The resources to annotate tasks with, after checking some worker can ever run them."""
        wanted = self._requested_resources()
        if not wanted:
            return None
        advertised = set().union(*(w.get("resources", {}) for w in workers))
        missing = sorted(set(wanted) - advertised)
        if missing:
            key = ",".join(missing)
            if key not in self._warned:
                self._warned.add(key)
                logger.warning(
                    "no Dask worker advertises the resource(s) %s; running without those "
                    'restrictions (start workers with --resources "CPU=..,MEMORY=.." to enforce '
                    "them)",
                    key,
                )
            wanted = {k: v for k, v in wanted.items() if k not in missing}
            if not wanted:
                return None
        problem = _unsatisfiable(wanted, workers)
        if problem:
            raise ZephyrError(problem)
        return wanted

    @staticmethod
    def _check_picklable(stage: Stage) -> bytes:
        try:
            return cloudpickle.dumps(stage)
        except Exception as e:
            culprit = "a function"
            for op in stage.ops:
                inner = op.ops if isinstance(op, Nested) else (op,)
                for o in inner:
                    try:
                        cloudpickle.dumps(o)
                    except Exception:
                        culprit = o.detail
                        break
            raise ZephyrError(
                f"stage '{stage.name}' cannot be sent to Dask workers: {culprit} cannot be pickled "
                f"({type(e).__name__}: {e}); define it at module level and do not capture locks, "
                "open files, clients or other process-local objects"
            ) from e

    def _start_run(self, plan: Plan) -> _Run:
        payloads = {id(s): self._check_picklable(s) for s in plan.stages}
        conn = self.connection
        conn.announce()
        return self._new_run(conn, payloads)

    def _new_run(self, conn: Connection, payloads: dict) -> _Run:
        workers = conn.workers()
        resources = self._check_resources(workers)
        if self.config.max_parallelism:  # register the backend's cluster-wide semaphore once
            with conn.client.as_current():
                _semaphore(self.semaphore_name, self.config.max_parallelism)
        threads = sum(w.get("nthreads", 1) for w in workers)
        return _Run(conn, uuid.uuid4().hex[:8], resources, payloads, threads)

    @contextlib.contextmanager
    def _nested_run(self, stage: Stage) -> Iterator[_Run]:
        payload = self._check_picklable(stage)
        try:
            distributed.get_worker()
            inside_worker = True
        except ValueError:
            inside_worker = False
        if not inside_worker:
            yield self._new_run(self.connection, {id(stage): payload})
            return
        # Inside a task: submit through the worker's client. worker_client secedes this task from
        # the thread pool while it waits, so nested pools cannot deadlock on one-thread workers.
        with distributed.worker_client(timeout=self.connect_timeout) as client:
            yield self._new_run(Connection(client, None, owns=False), {id(stage): payload})

    # -- the Backend hooks
    def _slots(self, run: _Run) -> int:
        """How many tasks of this backend can run at once: worker threads, capped by
        max_parallelism."""
        threads = max(1, run.threads)
        return min(self.config.max_parallelism or threads, threads)

    def _window(self, run: _Run) -> int:
        # Two tasks per thread keep workers busy while the driver consumes results; a
        # max_parallelism below the thread count is the window itself (no task would wait).
        slots = self._slots(run)
        return slots if slots < run.threads else 2 * slots

    def _pack_size(self, run: _Run, num_shards: int) -> int:
        return max(1, min(MAX_PACK, math.ceil(num_shards / (TASKS_PER_SLOT * self._slots(run)))))

    def _submit(self, run: _Run, stage: Stage, shards: list, flat: bool, attempt: int) -> Any:
        payload = run.payloads[id(stage)]
        if isinstance(payload, bytes) and len(payload) > INLINE_PAYLOAD_BYTES:
            # A large stage (a closure over a lookup table) is copied to every worker once, not
            # once per task; with every worker holding it, the scheduler may place tasks anywhere.
            payload = run.client.scatter(payload, hash=False, broadcast=True)
            run.payloads[id(stage)] = payload
        key = f"zephyr-{stage.key_name}-{shards[0][0]}-{run.token}"
        if attempt:
            key += f"-retry{attempt}"
        if all(spec[0] == "item" for _, spec in shards):
            shards = _Opaque(shards)
        # A stage that fans out to a nested pool mostly waits for its inner tasks, which carry the
        # resources: Dask keeps a seceded task's resources, so claiming them here too could leave
        # no worker able to run the inner tasks.
        resources = None if stage.has_nested else run.resources
        return run.client.submit(
            _dask_task, payload, f"{run.token}-{stage.index}", shards, flat,
            self.semaphore_name, self.config.max_parallelism or 0,
            key=key, resources=resources, pure=False,
        )  # fmt: skip

    def _wait_any(self, run: _Run, handles: list) -> None:
        # Dask keeps a task that no worker can run in state no-worker forever, silently (e.g. when
        # the only workers offering MEMORY leave). Wake up now and then to look for that.
        poll = min(5.0, max(0.2, self.no_worker_timeout / 4))
        while True:
            try:
                with run.client.as_current():
                    distributed.wait(handles, timeout=poll, return_when="FIRST_COMPLETED")
                return
            except TimeoutError:
                self._check_stalled(run, handles)

    def _check_stalled(self, run: _Run, handles: list) -> None:
        """Raise once tasks have waited `no_worker_timeout` s with no worker able to run them."""
        states = run.client.run_on_scheduler(_task_states, [h.key for h in handles])
        reason = None
        if "no-worker" in states or "queued" in states:
            try:
                workers = run.conn.workers(timeout=0)
            except ZephyrError as e:
                reason = str(e)
            else:
                reason = _unsatisfiable(run.resources or {}, workers)
        if reason is None:
            run.stalled_since = None
            return
        now = time.monotonic()
        if run.stalled_since is None:
            run.stalled_since = now
        elif now - run.stalled_since >= self.no_worker_timeout:
            raise ZephyrError(
                f"tasks have waited {now - run.stalled_since:.0f} s (no_worker_timeout="
                f"{self.no_worker_timeout:g}) with no worker able to run them: {reason}"
            )

    def _done(self, handle: Any) -> bool:
        return handle.done()

    def _outcome(self, handle: Any, keep: bool) -> Any:
        status = handle.status
        if status == "finished":
            return handle if keep else handle.result()
        if status == "error":
            exc = handle.exception()
            if isinstance(exc, UserTaskError):
                return exc.failure
            if isinstance(exc, distributed.scheduler.KilledWorker):
                raise TaskLost(f"{type(exc).__name__}: {exc}")
            raise ZephyrError(
                f"Dask task {handle.key} failed outside user code: {type(exc).__name__}: {exc}"
            ) from exc
        raise TaskLost(f"task {handle.key} is {status}")

    def _cancel(self, handles: list) -> None:
        with contextlib.suppress(Exception):
            client = handles[0].client
            client.cancel(handles, force=True)

    def _lengths(self, run: _Run, refs: list) -> list[tuple[int, int]]:
        return run.client.gather(run.client.map(_result_lengths, refs, pure=False))

    def _kept_errors(self, run: _Run, refs: list) -> list | None:
        return run.client.gather(run.client.map(_result_errors, refs, pure=False))

    def close(self) -> None:
        """Close this backend's own connection (an embedded cluster stays up for other backends;
        `zephyr.backends.connection.shutdown_embedded()` stops it)."""
        if self._conn is not None and self.address is not None and self._conn.owns:
            self._conn.close()
        self._conn = None


def _unsatisfiable(wanted: dict, workers: list[dict]) -> str | None:
    """Why no worker can run a task restricted to `wanted` resources, or None if one can."""
    offers = [w.get("resources", {}) for w in workers]
    if any(all(offer.get(k, 0) >= v for k, v in wanted.items()) for offer in offers):
        return None
    best = {k: max(offer.get(k, 0) for offer in offers) for k in wanted}
    asked = ", ".join(f"{k}={_fmt_resource(k, v)}" for k, v in wanted.items())
    has = ", ".join(f"{k}={_fmt_resource(k, v)}" for k, v in best.items())
    return (
        f"resource request {asked} cannot be satisfied by any of the {len(workers)} Dask "
        f"workers (the largest offer {has}); lower --memory/--num-cpus/--num-gpus, or add "
        'workers that advertise enough (dask worker --resources "MEMORY=...,CPU=...,GPU=...")'
    )


def _fmt_resource(name: str, value: float) -> str:
    """MEMORY in decimal units, as users write it (--memory 8GB is 8e9 bytes)."""
    if name == "MEMORY":
        for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
            if value >= size:
                return f"{value / size:.3g}{unit}"
        return f"{value:.0f}B"
    return f"{value:g}"
