"""JobContext: how code inside a job runs tasks and actors (put, get, run, wait, create_actor),
with the in-process SyncContext and ThreadContext. Which context the code of a job gets is
`fray_dask.current.fray_job_ctx()`; DaskContext is fray_dask.dask_context.

No Dask import.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import os
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

from fray_dask.actors import ActorHandle, ActorNameNotSharedWarning, LocalActorHandle

# Actor names already warned about in this process (ActorNameNotSharedWarning, once per name).
_WARNED_NAMES: set[str] = set()
_WARNED_LOCK = threading.Lock()


class JobContext(abc.ABC):
    """Runs tasks and actors for a job. Futures come from `put`, `run` and actor
    `.method.remote()`; `get` blocks for their values; `wait` returns when some are ready."""

    @abc.abstractmethod
    def put(self, obj: Any) -> Any:
        """Stores `obj` where tasks can read it; returns a reference to pass to `run`/`get`."""

    @abc.abstractmethod
    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs `fn(*args, **kwargs)` as a task; returns its future at once."""

    @abc.abstractmethod
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
        """An instance of `cls(*args, **kwargs)` living in one place, called through the returned
        handle (`handle.method.remote(...)`).

        A `name` makes it findable: with `get_if_exists=True` every caller of the same name (on
        the same cluster) gets the same instance; without, a taken name raises ValueError.
        `preemptible=False` keeps it off workers that may be preempted; `num_cpus` is the CPU
        resource a worker must offer to host it.
        """

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        """The value of a future or reference (or a list of values for a list), blocking until it
        is ready; a failed task raises its exception."""
        if isinstance(ref, list | tuple):
            return [self.get(r, timeout) for r in ref]
        return self._result(ref, timeout)

    def _result(self, ref: Any, timeout: float | None) -> Any:
        if isinstance(ref, concurrent.futures.Future):
            return ref.result(timeout)
        raise TypeError(
            f"ctx.get takes what put(), run() or an actor's .remote() returned, got "
            f"{type(ref).__name__}"
        )

    def _done(self, ref: Any) -> bool:
        return ref.done()

    def wait(
        self, futures: Sequence[Any], num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[Any], list[Any]]:
        """Blocks until `num_returns` of `futures` are done (or `timeout` s passed); returns
        `(ready, pending)`, each in the order given."""
        futures = list(futures)
        if not 0 <= num_returns <= len(futures):
            raise ValueError(
                f"num_returns={num_returns} but {len(futures)} futures were given; "
                "ask for at most as many as you pass"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            done = [self._done(f) for f in futures]
            if sum(done) >= num_returns or (deadline is not None and time.monotonic() > deadline):
                ready = [f for f, d in zip(futures, done, strict=True) if d]
                pending = [f for f, d in zip(futures, done, strict=True) if not d]
                return ready, pending
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def cancel(self, futures: Sequence[Any]) -> None:
        """Cancels futures that have not started (best effort)."""
        for f in futures:
            with contextlib.suppress(Exception):
                f.cancel()

    def close(self) -> None:  # noqa: B027 - most contexts hold nothing to release
        """Releases threads or connections the context holds."""

    def __enter__(self) -> JobContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finished(value: Any) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return future


class _InProcessContext(JobContext):
    """Shared by SyncContext and ThreadContext: objects and actors live in this process; named
    actors in a dict of this context."""

    def __init__(self, names_local_to: str | None = None) -> None:
        self._named: dict[str, LocalActorHandle] = {}
        self._named_lock = threading.Lock()
        self._handles: list[LocalActorHandle] = []  # whose event loops close() stops
        # The cluster spec whose jobs each get a context of their own, when this context is a
        # job's on such a cluster (names then reach no other job): warned about on use.
        self._names_local_to = names_local_to

    def put(self, obj: Any) -> concurrent.futures.Future[Any]:
        return _finished(obj)

    def _actor_executor(self) -> concurrent.futures.ThreadPoolExecutor | None:
        """Where a new actor's methods run (None: in the caller)."""
        return None

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
        if name is not None and get_if_exists and self._names_local_to is not None:
            _warn_unshared(name, self._names_local_to)
        with self._named_lock:
            if name is not None and name in self._named:
                if get_if_exists:
                    return self._named[name]
                raise ValueError(
                    f"an actor named {name!r} already exists; pass get_if_exists=True to share "
                    "it, or choose another name"
                )

            def forget() -> None:
                with self._named_lock:
                    if name is not None and self._named.get(name) is handle:
                        del self._named[name]

            handle = LocalActorHandle(cls(*args, **kwargs), name, self._actor_executor(), forget)
            self._handles.append(handle)
            if name is not None:
                self._named[name] = handle
            return handle

    def close(self) -> None:
        """Stops the event loops of the actors' `async def` methods."""
        for handle in self._handles:
            handle.stop_loop()


def _warn_unshared(name: str, spec: str) -> None:
    """Warns once per name per process that `name` is shared by nobody outside this process."""
    with _WARNED_LOCK:
        if name in _WARNED_NAMES:
            return
        _WARNED_NAMES.add(name)
    warnings.warn(
        ActorNameNotSharedWarning(
            f"the actor name {name!r} is shared only within this process: on "
            f"FRAY_CLUSTER_SPEC={spec} every job (and each of its replicas) is a process of its "
            f"own, so another job's create_actor(..., name={name!r}, get_if_exists=True) makes a "
            "second instance. To share a named actor between jobs, run them on "
            "FRAY_CLUSTER_SPEC=dask (or dask?address=tcp://host:8786)"
        ),
        stacklevel=3,  # the line that called create_actor
    )


class SyncContext(_InProcessContext):
    """Everything runs at once in the calling thread: the reference semantics, and the easiest
    to debug. `run` returns an already finished future."""

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        try:
            return _finished(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_exception(e)
            return future


class ThreadContext(_InProcessContext):
    """Tasks run on a pool of `max_workers` threads in this process; each actor has a thread of
    its own, so its methods run one at a time."""

    def __init__(self, max_workers: int | None = None, *, names_local_to: str | None = None):
        """`names_local_to`: the cluster spec of the job this context serves when every job there
        is a process of its own (`local`), so named actors are shared by no other job: creating
        one with get_if_exists=True then warns (ActorNameNotSharedWarning)."""
        super().__init__(names_local_to)
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.max_workers, thread_name_prefix="fray-task"
        )
        self._actor_pools: list[concurrent.futures.ThreadPoolExecutor] = []

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)

    def _actor_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fray-actor")
        self._actor_pools.append(pool)
        return pool

    def close(self) -> None:
        """Waits for running tasks and actor calls, then stops the threads."""
        self._pool.shutdown(wait=True)
        for pool in self._actor_pools:
            pool.shutdown(wait=True)
        super().close()
