"""Live record counts of Dask tasks whose results stay on the cluster, for the driver's progress.

A kept result is a reference: the driver learns its counts only by asking. Instead, each such task
logs a Dask event (topic COUNTS_TOPIC) as it finishes, and the driver's client receives it: no extra
task, no round trip. Progress only: the exact counts are read once the stage ends.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque
from typing import Any

import distributed

COUNTS_TOPIC = "zephyr-counts"

# run token -> that run's deque of (stage index, records in, records out); an entry goes with its
# run. The client's event handler appends on the client's event-loop thread; the driver drains.
_SINKS: weakref.WeakValueDictionary[str, deque] = weakref.WeakValueDictionary()
_SUBSCRIBED: weakref.WeakSet = weakref.WeakSet()  # clients with the handler installed


def report(stage_token: str, records_in: int, records_out: int) -> None:
    """On a worker, inside a task: send the counts of a kept result (stage token
    '<run token>-<stage index>')."""
    with contextlib.suppress(Exception):  # progress only: never fail the task over it
        distributed.get_worker().log_event(COUNTS_TOPIC, [stage_token, records_in, records_out])


def _on_event(event: tuple) -> None:
    _, (stage_token, records_in, records_out) = event
    run_token, _, index = stage_token.rpartition("-")
    sink = _SINKS.get(run_token)
    if sink is not None:
        sink.append((int(index), records_in, records_out))


def listen(client: Any, run_token: str) -> deque:
    """On the driver: the deque that receives the counts reported by the run `run_token`'s tasks
    (keep it referenced as long as the run lives)."""
    sink: deque = deque()
    _SINKS[run_token] = sink
    if client not in _SUBSCRIBED:
        client.subscribe_topic(COUNTS_TOPIC, _on_event)
        _SUBSCRIBED.add(client)
    return sink


def drain(sink: deque, stage_index: int) -> tuple[int, int]:
    """(records in, records out) that arrived in `sink` for the stage since the last call; late
    reports of an earlier stage are dropped. Never blocks."""
    records_in = records_out = 0
    while sink:
        index, n_in, n_out = sink.popleft()
        if index == stage_index:
            records_in, records_out = records_in + n_in, records_out + n_out
    return records_in, records_out
