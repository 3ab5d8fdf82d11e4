"""ThreadBackend: tasks run in a thread pool in this process (good for I/O-bound shards)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from typing import Any

from zephyr.backends.base import Backend, BackendConfig, logger
from zephyr.backends.settings import make_config
from zephyr.kernels import run_task
from zephyr.stages import Stage

CANCEL_WAIT_SECONDS = 60


class ThreadBackend(Backend):
    """Run shards on `max_parallelism` threads (default: the CPU count). Resource settings are
    accepted and ignored: threads share this process's memory."""

    def __init__(self, config: BackendConfig | None = None, **settings: Any):
        super().__init__(config or make_config(**settings))
        self._pool: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def num_threads(self) -> int:
        return self.config.max_parallelism or os.cpu_count() or 1

    def _executor(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self.num_threads, thread_name_prefix="zephyr")
            return self._pool

    def _window(self, run: Any) -> int:
        return 2 * self.num_threads

    def _submit(self, run: Any, stage: Stage, shards: list, keep: bool, attempt: int) -> Any:
        return self._executor().submit(run_task, stage, shards, keep)

    def _wait_any(self, run: Any, handles: list) -> None:
        cf.wait(handles, return_when=cf.FIRST_COMPLETED)

    def _done(self, handle: Any) -> bool:
        return handle.done()

    def _outcomes(self, run: Any, handles: list, keep: bool) -> list:
        return [h.result() for h in handles]

    def _cancel(self, handles: list) -> None:
        # A thread cannot be interrupted: wait (within a deadline) for the running tasks, so that
        # when an error reaches the caller no task of the run is still writing (each commits or
        # discards its output).
        for h in handles:
            h.cancel()
        _, running = cf.wait(handles, timeout=CANCEL_WAIT_SECONDS)
        if running:
            logger.warning(
                "%d cancelled task(s) still running after %g s; not waiting longer (each commits "
                "or discards its own output when it ends)",
                len(running),
                CANCEL_WAIT_SECONDS,
            )

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
