"""Actor handles: `handle.method.remote(*args)` returns a future for `ctx.get`/`ctx.wait`, the
Ray call style, over an in-process instance (SyncContext, ThreadContext) or a Dask actor.

No Dask import here; the Dask handle lives in fray_dask.dask_context.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable
from typing import Any


class ActorLostError(RuntimeError):
    """The process holding an actor is gone (its worker died or was preempted); its state is
    lost. Create it again (`create_actor(..., get_if_exists=True)` makes a new one)."""


class ActorNameNotSharedWarning(UserWarning):
    """A named actor was created where its name reaches only the current process (a job on
    `FRAY_CLUSTER_SPEC=local`), so other jobs asking for the same name get their own instance."""


class ActorMethod:
    """A method of an actor: call `.remote(*args, **kwargs)` to run it."""

    def __init__(self, submit: Callable[..., Any], actor_name: str, method: str):
        self._submit = submit
        self._actor_name = actor_name
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the method on the actor; returns a future at once (use ctx.get / ctx.wait)."""
        return self._submit(self._method, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor methods are called with .remote(): write "
            f"{self._actor_name}.{self._method}.remote(...) and ctx.get() the result"
        )


class ActorHandle(abc.ABC):
    """The caller's side of an actor. Attribute access gives an ActorMethod; only methods are
    reachable (read state through a method). LocalActorHandle and DaskActorHandle implement it."""

    def __init__(self, cls: type, name: str | None):
        self._cls = cls
        self._name = name

    @property
    def actor_name(self) -> str:
        return self._name or f"<unnamed {self._cls.__name__}>"

    @abc.abstractmethod
    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Starts `method(*args, **kwargs)` on the actor; returns its future."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Drops the actor (and frees its name); later calls through any handle fail."""

    def __getattr__(self, attr: str) -> ActorMethod:
        if attr.startswith("_"):
            raise AttributeError(attr)
        member = getattr(self._cls, attr, None)
        if member is None:
            raise AttributeError(
                f"actor {self.actor_name} ({self._cls.__name__}) has no method {attr!r}"
            )
        if not callable(member):
            raise AttributeError(
                f"{self._cls.__name__}.{attr} is not a method: only methods of an actor are "
                "reachable; add a method that returns it"
            )
        return ActorMethod(self._call, self.actor_name, attr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.actor_name}, {self._cls.__name__})"


class LocalActorHandle(ActorHandle):
    """An actor living in this process. With an executor (ThreadContext) its methods run one at a
    time on the actor's own thread, as a Ray actor's do; without (SyncContext), in the caller.
    `async def` methods run on an event loop of the actor's own (one thread, started on the first
    such call), as a Dask actor's run on its worker's loop: a call that awaits does not hold up
    the actor's other calls."""

    def __init__(
        self,
        instance: Any,
        name: str | None,
        executor: concurrent.futures.ThreadPoolExecutor | None,
        on_kill: Callable[[], None],
    ):
        super().__init__(type(instance), name)
        self._instance = instance
        self._executor = executor
        self._on_kill = on_kill
        self._dead = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._dead.is_set():
            raise ActorLostError(f"actor {self.actor_name} was killed; create it again")
        fn = getattr(self._instance, method)
        if inspect.iscoroutinefunction(fn):
            return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self._event_loop())
        if self._executor is not None:
            return self._executor.submit(fn, *args, **kwargs)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future, as Ray does
            future.set_exception(e)
        return future

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=_run_loop, args=(self._loop,), name="fray-actor-loop", daemon=True
                ).start()
            return self._loop

    def stop_loop(self) -> None:
        """Stops the thread running `async def` methods, if one started (the context closing)."""
        with self._loop_lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None

    def kill(self) -> None:
        self._dead.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self.stop_loop()
        self._on_kill()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.close()
