"""A finished job's return values as `Cluster.result` gives them: each replica's saved value
unpickled, or the job's failure raised (the callable's own exception, with the traceback text from
the job's process as its cause). No Dask import; reads only the driver's JobRecord.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, NoReturn

from fray_dask.secrets import mask
from fray_dask.types import JobFailedError, JobStatus

if TYPE_CHECKING:
    from fray_dask.job_record import JobRecord


class RemoteTraceback(Exception):
    """The traceback of an exception raised inside a job's process, as text: the `__cause__` of
    the exception `Cluster.result` raises again in the driver (as concurrent.futures does)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


def _load(record: JobRecord, replica: int, blob: bytes) -> Any:
    try:
        return pickle.loads(blob)  # cloudpickle's output; it needs no cloudpickle to load
    except Exception as e:
        raise RuntimeError(
            f"the result of job {record.job_id} replica {replica} cannot be unpickled in this "
            f"process ({type(e).__name__}: {e}); return plain data (numbers, str, lists, dicts, "
            "arrays) or make the classes it holds importable in the driver"
        ) from e


def values(record: JobRecord) -> list[Any]:
    """Each replica's return value, in replica order, for a job that succeeded. A replica that
    exited 0 without returning (`os._exit(0)`) saved nothing: None."""
    out = []
    for index, replica in enumerate(record.replicas):
        blob = replica.result
        out.append(None if blob is None else _load(record, index, blob)[1])
    return out


def raise_failure(record: JobRecord) -> NoReturn:
    """Raises the failure of a job that failed or was stopped.

    The exception the callable raised comes back with its own type and message when it is an
    Exception the runner could pickle and this process can unpickle, and its message holds no
    secret of the job;
    its `__cause__` is a RemoteTraceback (secrets masked) and a note names the job and replica.
    Otherwise JobFailedError (carrying the JobInfo), chained to that traceback when there is one.
    """
    info = record.info()
    index = record.failed_replica
    cause = None
    if info.status is JobStatus.FAILED and index is not None:
        blob = record.replicas[index].result
        saved = None
        if blob is not None:
            try:
                saved = _load(record, index, blob)
            except RuntimeError:
                saved = None  # its error_message still names the exception
        if saved is not None and saved[0] == "error":
            exc, text = saved[1], saved[2]
            cause = RemoteTraceback(mask(text, record.secrets))
            # SystemExit or KeyboardInterrupt raised again here would end the driver.
            if isinstance(exc, Exception) and mask(str(exc), record.secrets) == str(exc):
                exc.add_note(
                    f"raised in job {record.job_id} ({info.name}) replica {index}; the traceback "
                    "from the job's process is above"
                )
                exc.__cause__ = cause
                raise exc
    if cause is not None:
        raise JobFailedError(info) from cause
    raise JobFailedError(info)
