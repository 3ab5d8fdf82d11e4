"""DaskBackend: each stage becomes Dask tasks submitted straight to the scheduler. The backend's
settings, connection, packing and submitting; a run's waits and fetches are dask_run.py, its
checks dask_checks.py, what the workers run dask_tasks.py.

With the other zephyr.backends.dask_* modules, the only zephyr code that imports dask/distributed.
Tasks are submitted with `client.map` so `resources` reach the scheduler (dask.bag's graph
optimisation drops annotations, dask/dask#7036). Keys read `<task group>-<first shard>-<run
token>`, groups like `r2.s1.load_jsonl.map(clean)` (Stage.task_group): the dashboard shows each
stage of each run apart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

import distributed
from distributed import Client

from fray_dask.connect import connect
from fray_dask.connection import ClusterError, Connection
from zephyr.backends import dask_counts
from zephyr.backends.base import Backend, BackendConfig
from zephyr.backends.dask_board import StageBoard, announce
from zephyr.backends.dask_checks import (
    remote_workers,
    requested_resources,
    task_resources,
    wait_for_workers,
)
from zephyr.backends.dask_limits import close_idle
from zephyr.backends.dask_run import DaskRun
from zephyr.backends.dask_tasks import (
    dask_task,
    parent_scope,
    pickle_stage,
    task_shards,
)
from zephyr.backends.settings import make_config
from zephyr.errors import ZephyrError, as_zephyr_error
from zephyr.kernels import KeptCounts
from zephyr.plan import Plan, Stage
from zephyr.shuffle import scratch
from zephyr.stages import Nested

logger = logging.getLogger("zephyr")

# Shards per task: at most FIRST_PACK in a stage's first tasks, packed only beyond TASKS_PER_SLOT
# tasks per execution slot; later tasks are sized by the shards' measured cost, up to MAX_PACK
# (zephyr.backends.packer.Packer).
FIRST_PACK = 64
TASKS_PER_SLOT = 32
MAX_PACK = 4096
# Stages pickled smaller than this travel inside each task; larger ones are broadcast once.
INLINE_PAYLOAD_BYTES = 64 * 1024


def _limited(backend: Backend, plan: Plan) -> bool:
    """Whether `backend` or a backend nested in `plan` caps its parallelism (holds a semaphore)."""
    backends = [backend] + [
        step.backend for stage in plan.stages for step in stage.steps if isinstance(step, Nested)
    ]
    return any(getattr(b.config, "max_parallelism", None) for b in backends)


class DaskBackend(Backend):
    """Run pipelines on a Dask cluster.

    `address=None` starts (once per process, on first use) an embedded `distributed.LocalCluster` on
    127.0.0.1 with one single-threaded worker process per core, the dashboard on, and worker
    resources `CPU`, `MEMORY` and `GPU` advertised. A `tcp://host:8786` address or an existing
    `Client` uses that cluster; `"kube?name=x&workers=4&image=...&memory=8GB"` starts (or joins) a
    Dask cluster on Kubernetes whose workers advertise the same resources (fray_dask.kube,
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
        if self._conn is None or not self._conn.running:
            if self._conn is not None:
                self._conn.release()
            try:
                self._conn = connect(self.address, self.connect_timeout)
            except ClusterError as e:
                raise as_zephyr_error(e) from None
            announce(self._conn)  # the dashboard link as soon as the cluster is up
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
    def page_link(self) -> str | None:
        """The URL of the dashboard's Zephyr page (each stage's progress), or None without one."""
        return announce(self.connection)

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

    # -- shuffles (zephyr.shuffle.scratch)
    def _default_scratch(self) -> str:
        """The local default, on a cluster whose workers all run on this machine; else an error:
        workers on other machines would not see each other's runs."""
        remote = remote_workers(self._workers(self.connection))
        if remote and not os.environ.get(scratch.SCRATCH_ENV):
            raise ZephyrError(
                f"a shuffle (group_by, deduplicate) writes sorted runs that every worker reads, "
                f"and this cluster has workers on other machines ({', '.join(remote[:3])}) that "
                "cannot read this machine's temporary folder; pass scratch='gs://bucket/tmp' "
                f"(any fsspec URL all workers reach) to DaskBackend or the op, or set "
                f"${scratch.SCRATCH_ENV}"
            )
        return scratch.default_root()

    def _task_budget(self) -> int:
        budget = scratch.worker_budget(self.config.memory, self._workers(self.connection))
        return budget or super()._task_budget()

    # -- checks before submitting (zephyr.backends.dask_checks)
    def _requested_resources(self) -> dict:
        cfg = self.config
        return requested_resources(cfg.memory, cfg.num_cpus, cfg.num_gpus)

    def _start_run(self, plan: Plan, run_id: str) -> DaskRun:
        payloads = {id(s): pickle_stage(s) for s in plan.stages}
        conn = self.connection
        run = self._new_run(conn, payloads, run_id)
        run.counts = dask_counts.listen(run.client, run.token)
        if announce(conn):
            run.board = StageBoard(conn.client, run_id, run.token, plan)
        return run

    def _run_plan(
        self, plan: Plan, run: DaskRun, run_id: str, limit: int | None = None
    ) -> Iterator:
        state = "stopped"  # the caller stopped reading the results
        try:
            yield from super()._run_plan(plan, run, run_id, limit)
            state = "done"
        except Exception:
            state = "failed"
            raise
        finally:
            if run.board is not None:
                run.board.end(state)
            # The semaphores of finished runs (this one's, its nested backends') leave the
            # scheduler; a later run registers its own again. A run without a limit has none.
            if _limited(self, plan):
                with contextlib.suppress(Exception):
                    run.client.run_on_scheduler(close_idle)

    def _workers(self, conn: Connection) -> list[dict]:
        """The cluster's workers' info; a cluster whose workers are still starting gets as long
        as the stall rule allows (a shuffle's scratch and budget are decided on them)."""
        rule = f"the rule: no_worker_timeout={self.no_worker_timeout:g} s"
        address = conn.address or str(self.address)
        return wait_for_workers(conn.workers, address, self.no_worker_timeout, rule)

    def _new_run(self, conn: Connection, payloads: dict, scope: str) -> DaskRun:
        workers = self._workers(conn)
        resources = task_resources(self._requested_resources(), workers, self._warned)
        threads = sum(w.get("nthreads", 1) for w in workers)
        return DaskRun(
            conn, uuid.uuid4().hex[:8], resources, payloads, threads, self.no_worker_timeout, scope
        )

    @contextlib.contextmanager
    def _nested_run(self, stage: Stage) -> Iterator[DaskRun]:
        payload = pickle_stage(stage)
        try:
            distributed.get_worker()
            inside_worker = True
        except ValueError:
            inside_worker = False
        if not inside_worker:
            yield self._new_run(self.connection, {id(stage): payload}, "")
            return
        # Inside a task: submit through the worker's client. worker_client secedes this task from
        # the thread pool while it waits, so nested pools cannot deadlock on one-thread workers.
        scope = parent_scope()
        with distributed.worker_client(timeout=self.connect_timeout) as client:
            yield self._new_run(Connection(client, owns=False), {id(stage): payload}, scope)

    # -- the Backend hooks
    def _slots(self, run: DaskRun) -> int:
        """How many tasks of this backend can run at once: worker threads, capped by
        max_parallelism."""
        threads = max(1, run.threads)
        return min(self.config.max_parallelism or threads, threads)

    def _window(self, run: DaskRun) -> int:
        # Two tasks per thread keep workers busy while the driver consumes results; a
        # max_parallelism below the thread count is the window itself (no task would wait).
        slots = self._slots(run)
        return slots if slots < run.threads else 2 * slots

    def _pack_size(self, run: DaskRun, num_shards: int) -> int:
        return max(1, min(FIRST_PACK, math.ceil(num_shards / (TASKS_PER_SLOT * self._slots(run)))))

    def _max_pack(self, run: DaskRun) -> int:
        return MAX_PACK

    def _payload(self, run: DaskRun, stage: Stage) -> Any:
        payload = run.payloads[id(stage)]
        if isinstance(payload, bytes) and len(payload) > INLINE_PAYLOAD_BYTES:
            # A large stage (a closure over a lookup table) is copied to every worker once, not
            # once per task; with every worker holding it, the scheduler may place tasks anywhere.
            payload = run.call(run.client.scatter, payload, hash=False, broadcast=True)
            run.payloads[id(stage)] = payload
        return payload

    def _submit(self, run: DaskRun, stage: Stage, shards: list, keep: bool, attempt: int) -> Any:
        return self._submit_tasks(run, stage, [shards], keep, attempt)[0]

    def _submit_many(self, run: DaskRun, stage: Stage, batches: list[list], keep: bool) -> list:
        return self._submit_tasks(run, stage, batches, keep, 0)

    def _submit_tasks(
        self, run: DaskRun, stage: Stage, batches: list[list], keep: bool, attempt: int
    ) -> list:
        """Submit one task per batch of shards in a single message to the scheduler."""
        payload = self._payload(run, stage)
        group = stage.task_group(run.scope)
        keys, args = [], []
        for shards in batches:
            key = f"{group}-{shards[0][0]}-{run.token}"
            keys.append(f"{key}-retry{attempt}" if attempt else key)
            args.append(task_shards(shards))
        # A stage that fans out to a nested pool mostly waits for its inner tasks, which carry the
        # resources: Dask keeps a seceded task's resources, so claiming them here too could leave
        # no worker able to run the inner tasks.
        resources = None if stage.has_nested else run.resources
        n = len(batches)
        futures = run.call(
            run.client.map, dask_task, [payload] * n, [f"{run.token}-{stage.index}"] * n,
            args, [keep] * n, [self.semaphore_name] * n, [self.config.max_parallelism or 0] * n,
            key=keys, resources=resources, pure=False,
        )  # fmt: skip
        if run.board is not None:
            run.board.submitted(stage, keys, [len(shards) for shards in batches])
        return futures

    # -- waiting and reading results: the run's calls to the cluster (zephyr.backends.dask_run)
    def _wait_any(self, run: DaskRun, handles: list) -> None:
        run.wait_any(handles)

    def _done(self, handle: Any) -> bool:
        return handle.done()

    def _outcomes(self, run: DaskRun, handles: list, keep: bool) -> list:
        return run.outcomes(handles, keep)

    def _cancel(self, handles: list) -> None:
        with contextlib.suppress(Exception):
            client = handles[0].client
            if client.status == "running":
                client.cancel(handles, force=True)

    def _kept_counts(self, run: DaskRun, stage: Stage) -> tuple[int, int]:
        return dask_counts.drain(run.counts, stage.index)

    def _lengths(self, run: DaskRun, refs: list) -> list[KeptCounts]:
        return run.lengths(refs)

    def close(self) -> None:
        """Release this backend's connection: the last user of an address's client closes it; the
        embedded cluster stays up for the process (`fray_dask.embedded.shutdown_embedded()` stops
        it)."""
        if self._conn is not None:
            self._conn.release()
        self._conn = None
