"""Zephyr's exception types and the wrapping of user-code failures.

Pure Python: no Dask import. A failure inside user code is wrapped once, where it happens, with the
stage, shard and input; the wrapper crosses process boundaries by pickle and is re-raised on the
driver.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from fray_dask.connection import ClusterError, ClusterStartError, ClusterUnreachable

_REPR_LIMIT = 200


class ZephyrError(RuntimeError):
    """A pipeline failed: the message names the stage, the shard and the input, and the cause."""


class _RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in another process (shown as its cause)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def short_repr(value: object, limit: int = _REPR_LIMIT) -> str:
    """repr() of a value cut to `limit` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class UserCodeFailure:
    """A picklable record of an exception raised by user code inside a shard task.

    Tasks return this instead of raising so that the scheduler does not retry it: user errors fail
    fast, only infrastructure failures (a lost worker) are retried.
    """

    message: str
    exception: BaseException
    traceback_text: str

    @classmethod
    def capture(cls, message: str, exc: BaseException) -> UserCodeFailure:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            import cloudpickle

            cloudpickle.loads(cloudpickle.dumps(exc))
            kept: BaseException = exc
        except Exception:  # an exception that cannot cross processes is replaced by its text
            kept = RuntimeError(f"{type(exc).__name__}: {exc}")
        kept.__traceback__ = None
        return cls(message=message, exception=kept, traceback_text=tb)

    @classmethod
    def from_nested(cls, where: str, error: ZephyrError) -> UserCodeFailure:
        """Describe a nested stage's failure from its parent shard, keeping the original cause."""
        cause = error.__cause__ if error.__cause__ is not None else error
        remote = cause.__cause__
        tb = (
            remote.tb
            if isinstance(remote, _RemoteTraceback)
            else "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        )
        return cls(message=f"{where}: in nested {error}", exception=cause, traceback_text=tb)

    def raise_(self) -> None:
        """Raise a ZephyrError chained to the original exception (whose cause shows the remote
        traceback)."""
        exc = self.exception
        if exc.__cause__ is None:
            exc.__cause__ = _RemoteTraceback("\n" + self.traceback_text)
        raise ZephyrError(self.message) from exc


class WrappedUserError(Exception):
    """Internal: raised inside a kernel chain once a user failure has been described, so that outer
    generators in the same chain pass it through instead of describing it again."""

    def __init__(self, failure: UserCodeFailure):
        super().__init__(failure.message)
        self.failure = failure


class ClusterUnreachableError(ZephyrError, ClusterUnreachable):
    """fray_dask's ClusterUnreachable raised through zephyr: the same error (a ConnectionError,
    with the same message), and a ZephyrError like every failure of a pipeline."""


class ClusterStartFailed(ZephyrError, ClusterStartError):
    """fray_dask's ClusterStartError raised through zephyr (a kube? cluster did not come up)."""


def as_zephyr_error(error: ClusterError) -> ZephyrError:
    """`error`, from connecting to a Dask cluster, as the same error that is also a ZephyrError."""
    kind = ClusterUnreachableError if isinstance(error, ClusterUnreachable) else ClusterStartFailed
    return kind(str(error))
