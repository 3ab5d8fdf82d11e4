"""DaskContext: a job's tasks are Dask tasks and its actors Dask actors, on the cluster the job runs
on; named actors are shared by every client of that cluster.

A name maps to a `distributed.Variable` holding the actor's future, which keeps the actor alive
after its creator exits; a `distributed.Lock` per name makes "create unless it exists" atomic.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import distributed
import distributed.worker
from distributed import Client

from fray_dask.actors import ActorHandle, ActorLostError
from fray_dask.connect import connect
from fray_dask.connection import CONNECT_TIMEOUT
from fray_dask.context import JobContext
from fray_dask.placement import actor_hosts, fits
from fray_dask.resources import NON_PREEMPTIBLE

# Seconds an actor may take to be placed and constructed before create_actor gives up.
ACTOR_CREATE_TIMEOUT = 60.0
# While a call waits, the actor's worker is checked for liveness this often.
LIVENESS_SECONDS = 1.0


_LOCAL = threading.local()


@contextlib.contextmanager
def _off_the_thread_pool() -> Iterator[None]:
    """Inside a Dask task, leaves the worker's thread pool while blocking (as
    `distributed.worker_client` does) and rejoins after. Otherwise tasks waiting on other tasks
    (an actor being created, nested `run`s) could hold every thread the awaited work needs."""
    state = distributed.worker.thread_state
    in_task = getattr(state, "key", None) is not None and not getattr(state, "actor", False)
    if not in_task or getattr(_LOCAL, "seceded", False):
        yield
        return
    try:
        distributed.secede()
    except KeyError:  # this task has already seceded
        yield
        return
    _LOCAL.seceded = True
    try:
        yield
    finally:
        _LOCAL.seceded = False
        distributed.rejoin()


class ActorCall:
    """The future of one actor method call; `ctx.get` it. Raises ActorLostError, naming the
    actor, if the worker holding the actor dies before the call returns."""

    def __init__(self, handle: DaskActorHandle, method: str, future: Any):
        self._handle = handle
        self._method = method
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        with _off_the_thread_pool():
            return self._result(timeout)

    def _result(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = LIVENESS_SECONDS
            if deadline is not None:
                step = min(step, max(deadline - time.monotonic(), 0.0))
            try:
                return self._future.result(timeout=step)
            except (TimeoutError, distributed.TimeoutError):
                if not self._handle._worker_alive():
                    raise self._handle._lost(self._method) from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{self._handle.actor_name}.{self._method} did not return within "
                        f"{timeout:g} s; the actor is alive and busy (its worker runs one actor "
                        "call at a time): pass a larger timeout, or None to wait"
                    ) from None
            except OSError as e:  # the worker's connection is gone
                raise self._handle._lost(self._method) from e

    def __repr__(self) -> str:
        return f"ActorCall({self._handle.actor_name}.{self._method}, done={self.done()})"


class DaskActorHandle(ActorHandle):
    """A handle to a Dask actor; picklable, so it can be passed to tasks and other jobs."""

    def __init__(
        self,
        cls: type,
        name: str | None,
        actor: distributed.Actor,
        client: Client | None = None,
        future: distributed.Future | None = None,
        scheduler: str | None = None,
    ):
        super().__init__(cls, name)
        self._actor = actor
        # Where a copy unpickled in another process connects to reach the actor.
        self._scheduler = client.scheduler.address if client is not None else scheduler
        # An unnamed actor lives as long as its creator holds this future (as in Ray, where an
        # unnamed actor dies with its owner's handles); a named one is held by its Variable.
        self._future = future
        if client is not None:
            _bind(actor, client)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            DaskActorHandle,
            (self._cls, self._name, self._actor, None, None, self._scheduler),
        )

    @property
    def worker(self) -> str:
        """The address of the worker holding the actor."""
        return self._actor._address

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ActorCall:
        if self._actor._client is None and self._actor._worker is None:
            self._actor._try_bind_worker_client()  # unpickled outside the task that runs now
        if self._actor._client is None and self._actor._worker is None:
            # Unpickled in a process whose client is not Dask's default (ours never are): the
            # process's connection to the actor's scheduler, kept for the life of the process.
            if self._scheduler is None:
                raise RuntimeError(
                    f"actor {self.actor_name} has no scheduler address to reach it by; pass the "
                    "handle that create_actor returned"
                )
            _bind(self._actor, connect(self._scheduler, CONNECT_TIMEOUT).client)
        try:
            future = getattr(self._actor, method)(*args, **kwargs)
        except OSError as e:
            raise self._lost(method) from e
        return ActorCall(self, method, future)

    def _worker_alive(self) -> bool:
        """Whether the actor still sits on its worker. (A call to an actor its worker no longer
        holds gets no reply at all from distributed, so waiting calls ask the scheduler.)"""
        client = self._actor._client
        if client is None:  # inside a worker: a failed call reports the loss instead
            return True
        try:
            who_has = client.sync(client.scheduler.who_has, keys=[self._actor.key])
        except Exception:  # the scheduler is unreachable: the call itself will fail
            return True
        return self.worker in (who_has.get(self._actor.key) or ())

    def _lost(self, method: str) -> ActorLostError:
        return ActorLostError(
            f"actor {self.actor_name} ({self._cls.__name__}) is lost: its worker {self.worker} "
            f"died or left the cluster, or it was killed, while {method}() was called; its "
            "state is gone. Create "
            "it again (create_actor(..., get_if_exists=True) makes a new one); use "
            "preemptible=False to keep actors off preemptible workers"
        )

    def kill(self) -> None:
        """Destroys the actor for every holder of a handle and frees its name."""
        client = self._actor._client or distributed.get_client()
        if self._name is not None:
            # A non-future value frees the name at once (Variable.delete returns before the
            # scheduler has released it).
            distributed.Variable(_variable(self._name), client=client).set(None)
        future = self._future or distributed.Future(self._actor.key, client)
        with contextlib.suppress(Exception):
            client.cancel([future], force=True)


def _bind(actor: distributed.Actor, client: Client) -> None:
    """Points a Dask actor proxy at `client`. The proxy looks only for Dask's default client,
    and fray_dask's clients are never the default (they must not capture the user's
    dask.compute calls)."""
    if actor._client is None and actor._worker is None:
        actor._client = client


def _variable(name: str) -> str:
    return f"fray-actor-{name}"


class DaskContext(JobContext):
    """Tasks and actors on a Dask cluster: `DaskContext()` uses the embedded cluster,
    `DaskContext("tcp://host:8786")` a running scheduler, `DaskContext(client)` a client."""

    def __init__(self, address: str | Client | None = None, timeout: float | None = None):
        timeout = CONNECT_TIMEOUT if timeout is None else timeout
        self._conn = connect(address, timeout)  # shared with every other user in this process
        self.client = self._conn.client

    def __repr__(self) -> str:
        return f"DaskContext({self.client.scheduler.address!r})"

    def put(self, obj: Any) -> distributed.Future:
        # Wrapped in a list: scatter would otherwise split a dict or list into many futures.
        return self.client.scatter([obj], hash=False)[0]

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> distributed.Future:
        name = getattr(fn, "__name__", type(fn).__name__)
        key = f"fray-{name}-{uuid.uuid4().hex}"
        return self.client.submit(_call, fn, args, kwargs, key=key, pure=False)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        with _off_the_thread_pool():
            if isinstance(ref, list | tuple) and ref:
                if all(isinstance(r, distributed.Future) for r in ref):
                    if timeout is not None:
                        _, pending = self.wait(list(ref), num_returns=len(ref), timeout=timeout)
                        if pending:
                            raise TimeoutError(
                                f"{len(pending)} of {len(ref)} futures not done within "
                                f"{timeout:g} s; pass a larger timeout, or use ctx.wait() to "
                                "take the finished ones"
                            )
                    return self.client.gather(list(ref))
            return super().get(ref, timeout)

    def _result(self, ref: Any, timeout: float | None) -> Any:
        if isinstance(ref, distributed.Future | ActorCall):
            return ref.result(timeout)
        return super()._result(ref, timeout)

    def wait(
        self, futures: Sequence[Any], num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[Any], list[Any]]:
        with _off_the_thread_pool():
            return self._wait(list(futures), num_returns, timeout)

    def _wait(
        self, futures: list[Any], num_returns: int, timeout: float | None
    ) -> tuple[list[Any], list[Any]]:
        if not all(isinstance(f, distributed.Future) for f in futures):
            return super().wait(futures, num_returns, timeout)
        if not 0 <= num_returns <= len(futures):
            return super().wait(futures, num_returns, timeout)  # raises the ValueError
        deadline = None if timeout is None else time.monotonic() + timeout
        while sum(f.done() for f in futures) < num_returns:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            changed = threading.Event()
            for f in futures:
                if not f.done():
                    f.add_done_callback(lambda _, event=changed: event.set())
            changed.wait(remaining)
        ready = [f for f in futures if f.done()]
        return ready, [f for f in futures if not f.done()]

    def cancel(self, futures: Sequence[Any]) -> None:
        dask_futures = [f for f in futures if isinstance(f, distributed.Future)]
        if dask_futures:
            with contextlib.suppress(Exception):
                self.client.cancel(dask_futures)

    def create_actor(
        self,
        cls: type,
        *args: Any,
        name: str | None = None,
        get_if_exists: bool = False,
        preemptible: bool = True,
        num_cpus: float | None = None,
        **kwargs: Any,
    ) -> ActorHandle:
        with _off_the_thread_pool():
            return self._create_actor(cls, args, kwargs, name, get_if_exists, preemptible, num_cpus)

    def _create_actor(
        self,
        cls: type,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        get_if_exists: bool,
        preemptible: bool,
        num_cpus: float | None,
    ) -> ActorHandle:
        resources = self._actor_resources(cls, name, preemptible, num_cpus)
        if name is None:
            return self._new_actor(cls, args, kwargs, None, resources)[0]
        lock = distributed.Lock(
            f"fray-actor-lock-{name}", scheduler_rpc=self.client.scheduler, loop=self.client.loop
        )
        if not lock.acquire(timeout=ACTOR_CREATE_TIMEOUT):
            raise TimeoutError(
                f"could not lock the actor name {name!r} within {ACTOR_CREATE_TIMEOUT:g} s; "
                "another process is creating it and has not finished"
            )
        try:
            variable = distributed.Variable(_variable(name), client=self.client)
            existing = None
            with contextlib.suppress(distributed.TimeoutError, TimeoutError):
                existing = variable.get(timeout=0)
            if isinstance(existing, distributed.Future) and existing.status == "finished":
                if not get_if_exists:
                    raise ValueError(
                        f"an actor named {name!r} already exists on this cluster; pass "
                        "get_if_exists=True to share it, or choose another name"
                    )
                actor = existing.result(timeout=ACTOR_CREATE_TIMEOUT)
                return DaskActorHandle(cls, name, actor, self.client)
            handle, future = self._new_actor(cls, args, kwargs, name, resources)
            variable.set(future)  # keeps the actor alive after this client leaves
            return handle
        finally:
            lock.release()

    def _actor_resources(
        self, cls: type, name: str | None, preemptible: bool, num_cpus: float | None
    ) -> dict[str, float]:
        from fray_dask.resources import check_placeable

        resources: dict[str, float] = {}
        if num_cpus:
            resources["CPU"] = num_cpus
        if not preemptible:
            resources[NON_PREEMPTIBLE] = 0
        what = f"actor {name or cls.__name__!r}"
        check_placeable(what, resources, self._workers)
        return resources

    def _actor_worker(self, needed: dict[str, float]) -> str | None:
        """The worker to host an actor that needs `needed`: of those whose resources fit, the one
        with the fewest actors (None: let Dask choose). The actor is then pinned there with no
        resource restriction, so it never queues behind a replica waiting for resources."""
        if not needed:
            return None
        hosts = self.client.run_on_scheduler(actor_hosts)
        fitting = [addr for addr, (offer, _) in hosts.items() if fits(offer, needed)]
        return min(fitting, key=lambda a: (hosts[a][1], a)) if fitting else None

    def _workers(self) -> list[dict[str, Any]]:
        return list(self.client.scheduler_info(n_workers=-1).get("workers", {}).values())

    def _new_actor(
        self,
        cls: type,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        resources: dict[str, float],
    ) -> tuple[DaskActorHandle, distributed.Future]:
        key = f"fray-actor-{name or cls.__name__}-{uuid.uuid4().hex[:8]}"
        worker = self._actor_worker(resources)
        placement = {"workers": [worker], "allow_other_workers": False} if worker else {}
        future = self.client.submit(
            cls, *args, actor=True, key=key, pure=False, **placement, **kwargs
        )
        try:
            actor = future.result(timeout=ACTOR_CREATE_TIMEOUT)
        except (TimeoutError, distributed.TimeoutError):
            self.client.cancel([future])
            raise TimeoutError(
                f"actor {name or cls.__name__!r} was not created within {ACTOR_CREATE_TIMEOUT:g} "
                "s: no worker had a free thread, or its constructor is slow; free workers or "
                "make __init__ cheaper"
            ) from None
        return DaskActorHandle(cls, name, actor, self.client, future), future

    def close(self) -> None:
        self._conn.release()


def _call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)
