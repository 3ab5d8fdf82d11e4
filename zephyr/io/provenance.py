"""Where the record being processed came from: the file and line a reader last produced, in one
slot per thread, plus the counter that the reader's skipped lines go to inside a pipeline.

Pure Python, no I/O. Readers set the slot (one attribute store per record); the kernels read it only
when something fails. Records stream one at a time through a shard's fused generators, so the
position a reader set last is that of the record being processed downstream. Ops that read ahead
(`window`, `map_shard`) see the last record read instead, and a `reshard` drops positions.
"""

from __future__ import annotations

import threading
from typing import Any

ON_ERROR = ("raise", "skip")


class Position:
    """The thread's slot: `file` and `line` (1-based) of the record a reader produced last (None
    when no reader is active), and `op`, the counter of the op calling a skipping reader."""

    __slots__ = ("file", "line", "op")

    def __init__(self) -> None:
        self.file: str | None = None
        self.line: int | None = None
        self.op: Any = None

    def clear(self) -> None:
        self.file = self.line = self.op = None

    def describe(self) -> str:
        """'<file> line <n>' (or just the file), '' when no reader position is known."""
        if self.file is None:
            return ""
        return f"{self.file} line {self.line}" if self.line is not None else str(self.file)


_local = threading.local()


def current_position() -> Position:
    """This thread's position slot (created on first use)."""
    try:
        return _local.position
    except AttributeError:
        pos = _local.position = Position()
        return pos


def check_on_error(on_error: object, where: str) -> bool:
    """True for on_error='skip', False for 'raise'; anything else raises ValueError."""
    if on_error not in ON_ERROR:
        raise ValueError(
            f"{where} takes on_error='raise' (fail on the first bad record, the default) or "
            f"on_error='skip' (quarantine it and go on), got {on_error!r}"
        )
    return on_error == "skip"
