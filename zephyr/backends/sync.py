"""SyncBackend: runs every task in the calling thread, one at a time. The reference semantics.

Use it for tests and for debugging with pdb: tracebacks point straight into your functions.
"""

from __future__ import annotations

from typing import Any

from zephyr.backends.base import Backend, BackendConfig
from zephyr.backends.settings import make_config
from zephyr.kernels import run_task
from zephyr.stages import Stage


class SyncBackend(Backend):
    """Run each shard in turn in this thread. Resource settings are accepted and ignored."""

    def __init__(self, config: BackendConfig | None = None, **settings: Any):
        super().__init__(config or make_config(**settings))

    def _submit(self, run: Any, stage: Stage, shards: list, keep: bool, attempt: int) -> Any:
        return run_task(stage, shards, keep)

    def _wait_any(self, run: Any, handles: list) -> None:
        return None

    def _done(self, handle: Any) -> bool:
        return True

    def _outcomes(self, run: Any, handles: list, keep: bool) -> list:
        return handles  # each handle is the task's value already
