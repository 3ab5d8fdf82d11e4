"""The Zephyr page of the Dask dashboard: every stage of the last runs, shards done of its total.

Runs inside the scheduler process (installed by `install` through `Client.run_on_scheduler`); the
driver sends each run's counts (zephyr.backends.dask_board). Imports tornado and distributed only.
"""

from __future__ import annotations

import html
import json
import time
from collections import OrderedDict
from typing import Any

from tornado import web

PATH = "zephyr"  # served at <dashboard>/zephyr, JSON at <dashboard>/zephyr.json
KEEP_RUNS = 20  # the page shows the runs that reported last, newest first
REFRESH_SECONDS = 1


class Board:
    """The runs' latest reports, at most KEEP_RUNS of them (a scheduler extension)."""

    def __init__(self) -> None:
        self.runs: OrderedDict[str, dict] = OrderedDict()
        self.served = False  # whether the page is on the scheduler's HTTP server

    def update(self, run: str, report: dict) -> None:
        """The scheduler handler `zephyr_board`: store `report` as run `run`'s latest (reports
        travel on several connections: an older one arriving late is ignored)."""
        old = self.runs.get(run)
        if old is not None and old["seq"] >= report["seq"]:
            return
        report["received"] = time.time()
        self.runs[run] = report
        self.runs.move_to_end(run)
        while len(self.runs) > KEEP_RUNS:
            self.runs.popitem(last=False)

    def newest_first(self) -> list[dict]:
        return list(reversed(self.runs.values()))


def install(dask_scheduler: Any = None) -> bool:
    """On the scheduler (via `run_on_scheduler`): add the Board, its handler and the page (once);
    add "Zephyr" to the dashboard's menu bar when the Bokeh dashboard runs. Returns whether the
    page is served (False when the scheduler has no HTTP server)."""
    if "zephyr" in dask_scheduler.extensions:  # set up by an earlier driver
        return getattr(dask_scheduler.extensions["zephyr"], "served", False)
    board = Board()
    dask_scheduler.extensions["zephyr"] = board
    dask_scheduler.handlers["zephyr_board"] = board.update
    app = getattr(dask_scheduler, "http_application", None)
    if app is None:
        return False
    app.add_handlers(
        r".*$",
        [
            (rf"/{PATH}", _Page, {"board": board}),
            (rf"/{PATH}\.json", _Json, {"board": board}),
        ],
    )
    board.served = True
    try:  # the menu bar of the Bokeh pages lists `pages`; shared by every page rendered later
        from distributed.dashboard.scheduler import template_variables

        pages = template_variables(dask_scheduler)["pages"]
        if PATH not in pages:
            pages.append(PATH)
    except Exception:  # no Bokeh, or another layout: the page is still served, only not listed
        pass
    return True


class _Json(web.RequestHandler):
    def initialize(self, board: Board) -> None:
        self.board = board

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"runs": self.board.newest_first()}))


class _Page(web.RequestHandler):
    def initialize(self, board: Board) -> None:
        self.board = board

    def get(self) -> None:
        self.write(render(self.board.newest_first()))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _stage_row(stage: dict, running: bool) -> str:
    done, total = stage["done"], stage["total"]
    frac = done / total if total else 1.0
    elapsed = stage.get("elapsed")
    rate = eta = ""
    if elapsed and done:
        rate = f"{done / elapsed:,.1f}/s"
        if running and done < total:
            eta = _duration(elapsed / done * (total - done))
    state = "done" if stage.get("finished") else ("running" if stage.get("started") else "")
    if state == "running" and not running:
        state = "stopped"
    cells = [
        html.escape(stage["stage"].rpartition(".")[2]),
        f"<code>{html.escape(stage['group'])}</code>",
        f'<div class="bar"><div style="width:{100 * frac:.1f}%"></div></div>',
        f"{done:,} / {total:,}",
        f"{stage['in_flight']:,}",
        state,
        _duration(elapsed),
        rate,
        eta,
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_HEAD = ["stage", "Dask task group", "", "shards done / total", "tasks in flight", "state",
         "elapsed", "shards/s", "ETA"]  # fmt: skip

_STYLE = """
.content { box-sizing: border-box; height: auto; padding: 8px 10px; }
table { border-collapse: collapse; margin-bottom: 18px; }
td, th { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; font-size: 14px; }
.bar { width: 220px; height: 12px; background: #eee; }
.bar div { height: 12px; background: #1f77b4; }
h2 { font-size: 16px; margin: 14px 0 6px; }
.muted { color: #777; font-size: 13px; }
"""

_NAV = ["status", "workers", "tasks", "system", "profile", "graph", "groups", "info", PATH]


def render(runs: list[dict]) -> str:
    """The page: one table per run (newest first), one row per stage."""
    now = time.time()
    parts = []
    for run in runs:
        running = run["state"] == "running"
        ago = _duration(now - run["received"])
        parts.append(
            f"<h2>{html.escape(run['run'])}: {html.escape(run['state'])}</h2>"
            f'<p class="muted">driver {html.escape(run["driver"])}, last report {ago} ago</p>'
            "<table><tr>"
            + "".join(f"<th>{h}</th>" for h in _HEAD)
            + "</tr>"
            + "".join(_stage_row(s, running) for s in run["stages"])
            + "</table>"
        )
    if not parts:
        parts.append("<p>No zephyr run has reported to this scheduler yet.</p>")
    nav = '<li id="dask-logo"><a href="https://dask.org/"><img src="statics/images/dask-logo.svg">'
    nav += "</a></li>" + "".join(
        f'<li{" class=active" if p == PATH else ""}><a href="{p}">{p.title()}</a></li>'
        for p in _NAV
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        "<title>Zephyr stages</title>"
        '<link rel="stylesheet" href="statics/css/base.css">'
        f"<style>{_STYLE}</style></head><body>"
        f'<div class="navbar"><ul>{nav}</ul></div><div class="content">'
        '<p class="muted">Each zephyr stage with all its shards (Dask\'s Progress panel counts '
        "only the tasks submitted so far). Refreshes every second.</p>"
        + "".join(parts)
        + "</div></body></html>"
    )
