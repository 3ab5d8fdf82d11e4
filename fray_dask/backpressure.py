"""backpressure: map a function over a stream of items with at most `max_in_flight` tasks out at
a time, results streamed back in submission order.

No Dask import: it runs on whichever JobContext it is given.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from fray_dask.context import JobContext
from fray_dask.current import fray_job_ctx

T = TypeVar("T")
R = TypeVar("R")


def backpressure(
    fn: Callable[[T], R],
    items: Iterable[T],
    max_in_flight: int,
    ctx: JobContext | None = None,
) -> Iterator[R]:
    """Yields `fn(item)` for each item, in the order of `items`, running it as tasks on `ctx`
    (default `fray_job_ctx()`).

    `items` is read lazily: never more than `max_in_flight` tasks are submitted and not yet
    yielded, so neither the input nor the results pile up in memory when the consumer is slow.
    A task that raises stops the stream with its exception; leaving the loop early (break, an
    error) cancels the tasks still out.
    """
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(
            f"max_in_flight must be a whole number >= 1, got {max_in_flight!r}; it bounds how "
            "many tasks run at once"
        )
    ctx = ctx if ctx is not None else fray_job_ctx()
    window: collections.deque[Any] = collections.deque()
    try:
        for item in items:
            if len(window) >= max_in_flight:
                yield ctx.get(window.popleft())
            window.append(ctx.run(fn, item))
        while window:
            yield ctx.get(window.popleft())
    finally:
        if window:
            ctx.cancel(list(window))
