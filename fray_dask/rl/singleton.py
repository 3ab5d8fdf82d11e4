"""SingletonActor: a named actor every process of a run shares, created on first use the way the
seeds create their coordinators and created again when a call finds it lost.

No Dask import: it goes through the job context (fray_dask.current).
"""

from __future__ import annotations

import threading
from typing import Any

from fray_dask.actors import ActorHandle, ActorLostError
from fray_dask.context import JobContext

# Seconds a call waits for its reply by default: coordinators answer in milliseconds, so a call
# still unanswered after this means the actor's worker is stuck, which should be an error.
CALL_TIMEOUT = 120.0


class SingletonActor:
    """`cls(*args, **kwargs)` as the named actor `name`, made with `create_actor(...,
    get_if_exists=True, preemptible=False, num_cpus=0)` on `ctx` (default: this job's context).

    `call(method, ...)` runs a method and returns its value. If the actor's worker died, the call
    creates the actor again (the same way, so a constructor that restores from a checkpoint does)
    and retries once; a second loss raises ActorLostError."""

    def __init__(
        self, cls: type, *args: Any, name: str, ctx: JobContext | None = None, **kwargs: Any
    ):
        if ctx is None:
            from fray_dask.current import fray_job_ctx

            ctx = fray_job_ctx()
        self.ctx = ctx
        self.name = name
        self._cls = cls
        self._args = args
        self._kwargs = kwargs
        self._handle: ActorHandle | None = None
        self._lock = threading.Lock()

    @property
    def handle(self) -> ActorHandle:
        """The current handle (creating or finding the actor on first use)."""
        with self._lock:
            if self._handle is None:
                self._handle = self.ctx.create_actor(
                    self._cls,
                    *self._args,
                    name=self.name,
                    get_if_exists=True,
                    preemptible=False,
                    num_cpus=0,
                    **self._kwargs,
                )
            return self._handle

    def call(
        self, method: str, *args: Any, timeout: float | None = CALL_TIMEOUT, **kwargs: Any
    ) -> Any:
        """`method(*args, **kwargs)` on the actor, blocking at most `timeout` s for its reply
        (TimeoutError after; None waits as long as the actor lives); re-creates a lost actor
        once, as the class docstring says."""
        handle = self.handle
        try:
            return self.ctx.get(getattr(handle, method).remote(*args, **kwargs), timeout)
        except ActorLostError:
            with self._lock:
                if self._handle is handle:
                    self._handle = None
        return self.ctx.get(getattr(self.handle, method).remote(*args, **kwargs), timeout)
