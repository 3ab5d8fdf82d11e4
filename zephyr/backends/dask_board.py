"""The driver side of the dashboard's Zephyr page: the dashboard link logged once per connection
with the page installed on the scheduler (`announce`), then each stage's shards done of its total,
sent to the scheduler (zephyr.backends.dask_page) as a run's tasks finish.

Sending never blocks the driver: a report is one message from the client's event loop, at most
every REPORT_INTERVAL seconds and at each stage's start and end; a lost report is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any

from fray_dask.connection import Connection
from zephyr.backends import dask_page
from zephyr.backends.base import TaskLost
from zephyr.errors import UserCodeFailure
from zephyr.plan import Plan, Stage

logger = logging.getLogger("zephyr")

REPORT_INTERVAL = 0.5
PAGE_TIMEOUT = 10.0  # seconds to set up the dashboard's Zephyr page on the scheduler
# Each connection's Zephyr page URL (None: no page), once announced.
_PAGES: weakref.WeakKeyDictionary[Connection, str | None] = weakref.WeakKeyDictionary()
_PAGES_LOCK = threading.Lock()


def announce(conn: Connection) -> str | None:
    """Logs the dashboard URL once per connection, with the Zephyr page (set up on the scheduler
    here) that shows every stage's progress; returns that page's URL, or None without one."""
    with _PAGES_LOCK:
        if conn in _PAGES:
            return _PAGES[conn]
        _PAGES[conn] = None  # said once, even if setting up the page fails
    link = conn.dashboard_link
    page_link = _install_page(conn, link)
    _PAGES[conn] = page_link
    page = f"stage progress: {page_link}; " if page_link else ""
    note = f"; {conn.note}" if conn.note else ""
    logger.info("Dask dashboard: %s (%sscheduler %s%s)", link, page, conn.address, note)
    return page_link


def _install_page(conn: Connection, link: str | None) -> str | None:
    """Serve the Zephyr page from the scheduler; its URL, or None where it cannot be."""
    if link is None:
        return None
    client = conn.client
    try:
        served = client.sync(
            client._run_on_scheduler, dask_page.install, callback_timeout=PAGE_TIMEOUT
        )
    except Exception as e:  # a scheduler that cannot import zephyr, or a slow one
        logger.info(
            "the dashboard has no Zephyr stage page: the scheduler could not set it up "
            "(%s: %s); install zephyr-dask beside the scheduler to get it",
            type(e).__name__,
            e,
        )
        return None
    if not served:
        return None
    base = link[: -len("/status")] if link.endswith("/status") else link.rstrip("/")
    return f"{base}/{dask_page.PATH}"


async def _post(client: Any, run: str, report: dict) -> None:
    with contextlib.suppress(Exception):  # a closed client or a scheduler without the page
        await client.scheduler.zephyr_board(run=run, report=report)


class StageBoard:
    """Counts one run's shards per stage from its task keys (`submitted`, `settled`) and reports
    them; `end` sends the run's final state."""

    def __init__(self, client: Any, run_id: str, token: str, plan: Plan):
        self._client = client
        self._run = f"{run_id}-{token}"  # one entry per run, also across drivers
        self._report: dict = {
            "run": run_id,
            "driver": f"{socket.gethostname()} pid {os.getpid()}",
            "state": "running",
            "seq": 0,
            "stages": [
                {
                    "stage": stage.scope(run_id),
                    "group": stage.task_group(run_id),
                    "total": stage.num_shards,
                    "done": 0,
                    "in_flight": 0,
                    "started": False,
                    "finished": False,
                    "elapsed": None,
                }
                for stage in plan.stages
            ],
        }
        self._t0: dict[int, float] = {}
        self._keys: dict[str, tuple[int, int]] = {}  # task key -> (stage index, shards)
        self._last = 0.0  # the run shows on the page from its first submitted task

    def submitted(self, stage: Stage, keys: list[str], sizes: list[int]) -> None:
        """Tasks `keys` of `stage` running `sizes` shards each were submitted."""
        entry = self._report["stages"][stage.index]
        first = stage.index not in self._t0
        if first:
            self._t0[stage.index] = time.monotonic()
            entry["started"] = True
        for key, n in zip(keys, sizes, strict=True):
            self._keys[key] = (stage.index, n)
        entry["in_flight"] += len(keys)
        self._send(force=first)

    def settled(self, handles: list, outcomes: list) -> None:
        """Tasks `handles` (futures) finished with `outcomes`: their shards are done unless the
        task was lost (its retry is submitted under a new key) or failed."""
        force = False
        for handle, outcome in zip(handles, outcomes, strict=True):
            found = self._keys.pop(handle.key, None)
            if found is None:
                continue
            entry = self._report["stages"][found[0]]
            entry["in_flight"] -= 1
            if not isinstance(outcome, (TaskLost, UserCodeFailure)):
                entry["done"] += found[1]
                if entry["done"] >= entry["total"]:
                    entry["finished"] = True
                    entry["elapsed"] = time.monotonic() - self._t0[found[0]]
                    force = True
        self._send(force=force)

    def end(self, state: str) -> None:
        """The run ended: "done", "failed" or "stopped" (its results no longer wanted)."""
        self._report["state"] = state
        self._keys.clear()
        for entry in self._report["stages"]:
            entry["in_flight"] = 0
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < REPORT_INTERVAL:
            return
        self._last = now
        report = self._report
        report["seq"] += 1
        for i, t0 in self._t0.items():
            if not report["stages"][i]["finished"]:
                report["stages"][i]["elapsed"] = now - t0
        copy = {**report, "stages": [dict(s) for s in report["stages"]]}
        with contextlib.suppress(Exception):  # the client is closing
            self._client.loop.add_callback(_post, self._client, self._run, copy)
