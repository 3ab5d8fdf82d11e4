"""Per-stage progress on the driver: one line redrawn in place on a terminal, a log line every
`log_every` seconds elsewhere, and one summary log line per stage.

No Dask import; the driver loop in `zephyr.backends.base` feeds it. The line layout is pure.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

logger = logging.getLogger("zephyr")

LOG_EVERY = 10.0  # seconds between progress log lines while a stage runs, off a terminal
_REDRAW = 0.1  # a terminal line is redrawn at most this often (s)
_TICK = 0.5  # the ticker thread wakes this often, so elapsed time and ETA move between tasks
_MIN_NAME = 10  # a stage name shortened below this many characters is left out
_BAR_CELLS = (6, 30)  # the bar graphic's cells: fewer than 6 fit and it is left out
_CLEAR_TO_END = "\x1b[K"
# The stream a progress line is drawn on right now, if any: BarAwareHandler clears that line before
# a log record is written there, so the record starts a line of its own.
_BAR_ON: list[TextIO] = []


class BarAwareHandler(logging.StreamHandler):
    """The zephyr logger's handler: a record logged while a stage draws its progress line on the
    same stream first clears that line (the bar is drawn again at its next redraw), instead of
    being appended to it."""

    def emit(self, record: logging.LogRecord) -> None:
        if _BAR_ON and _BAR_ON[0] is self.stream:
            self.stream.write("\r" + _CLEAR_TO_END)
        super().emit(record)


def _terminal_columns() -> int:
    return shutil.get_terminal_size().columns


def compact(n: float) -> str:
    """A count in at most 5 characters: exact below 10,000 ('9,999'), else 3 significant digits
    and a suffix ('12.3k', '123M', '1.23G')."""
    n = int(n)
    if n < 10_000:
        return f"{n:,}"
    value = float(n)
    for suffix in "kMGTPE":
        value /= 1000
        if value < 999.5 or suffix == "E":
            digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
            return f"{value:.{digits}f}{suffix}"
    raise AssertionError("unreachable")


def clock_time(seconds: float) -> str:
    """'0:07', '12:34', '1:02:03'."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def shorten(name: str, width: int) -> str:
    """`name` in at most `width` characters, cut in the middle ('load_jsonl -> ... -> write')."""
    if len(name) <= width:
        return name
    head = (width - 2) // 2
    tail = width - 3 - head
    return name[:head] + "..." + (name[-tail:] if tail > 0 else "")


@dataclass(frozen=True)
class Snapshot:
    """A stage's progress at one moment. `label` is '[r2 s1/3]' (run id, 1-based stage number)."""

    label: str
    name: str
    done: int
    total: int
    records_in: int
    records_out: int
    elapsed: float
    quarantined: int = 0
    skipped: int = 0  # shards skipped because their output existed

    @property
    def rate(self) -> float:
        """Records in (read) per second."""
        return self.records_in / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, from shards done/total and the time they took; None before the first."""
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed * max(self.total - self.done, 0) / self.done

    def eta_text(self) -> str:
        eta = self.eta
        return "ETA " + (clock_time(eta) if eta is not None else "?")


def bar_line(s: Snapshot, columns: int) -> str:
    """The terminal line for `s` in at most `columns - 1` characters (a full-width line wraps on
    some terminals). The counts (shards done/total, records in and out, quarantined) are always
    there (records and, if need be, shards in 3 significant digits: '1.23M'); the rest is added
    while it fits, in this order: exact shard numbers, the ETA, the run and stage label, the stage
    name (up to 24 characters, cut in the middle), the elapsed time, the rate, the rest of the
    name, the word 'shards', the bar graphic. Returns '' when even the counts do
    not fit (a terminal narrower than about 30 columns).
    """
    room = columns - 1
    done, total = f"{s.done}/{s.total}", f"{compact(s.done)}/{compact(s.total)}"
    rin, rout, rate = compact(s.records_in), compact(s.records_out), compact(s.rate)
    bad, q = (" quarantined", " bad") if s.quarantined else ("", "")
    quarantined = f" {compact(s.quarantined)}" if s.quarantined else ""
    eta = s.eta_text()
    variants = {  # longest first; '' leaves the part out
        "label": [s.label, ""],
        "shards": [f"{done} shards", done, total],
        "records": [
            f"in {rin} ({rate}/s) out {rout}{quarantined}{bad}",
            f"in {rin} out {rout}{quarantined}{bad}",
            f"in {rin} out {rout}{quarantined}{q}",
        ],
        "time": [f"{clock_time(s.elapsed)} {eta}", eta, ""],
    }
    parts = {key: options[-1] for key, options in variants.items()}
    parts["name"] = parts["bar"] = ""

    def length(**change: str) -> int:
        texts = [t for t in {**parts, **change}.values() if t]
        return sum(map(len, texts)) + len(texts) - 1

    if length() > room:
        return ""
    steps = [("shards", 1), ("time", 1), ("label", 0), ("name", 24), ("time", 0), ("records", 0)]
    for key, arg in [*steps, ("name", 0), ("shards", 0), ("bar", 0)]:
        if key == "name":  # arg: the most characters it may take at this step (0: no limit)
            width = room - length(name="x") + 1
            width = min(width, arg) if arg else width
            if width >= min(_MIN_NAME, len(s.name)):
                parts["name"] = shorten(s.name, width)
        elif key == "bar":
            cells = min(room - length(bar="[]"), _BAR_CELLS[1])
            if cells >= _BAR_CELLS[0]:
                filled = int(cells * s.done / s.total) if s.total else cells
                parts["bar"] = "[" + "#" * filled + "-" * (cells - filled) + "]"
        else:  # arg: how many of the longest variants this step may not take yet
            parts[key] = next(v for v in variants[key][arg:] if length(**{key: v}) <= room)
    order = ("label", "name", "bar", "shards", "records", "time")
    return " ".join(parts[key] for key in order if parts[key])


def log_line(s: Snapshot, running: bool) -> str:
    """A log line for `s`: while the stage runs (with its ETA), or its summary at the end."""
    state = " running" if running else ""
    skipped = f" ({s.skipped} skipped: output exists)" if s.skipped else ""
    line = (
        f"{s.label} '{s.name}'{state}: {s.done}/{s.total} shards{skipped} in {s.elapsed:.1f} s, "
        f"records in {s.records_in:,} ({s.rate:,.0f}/s), out {s.records_out:,}"
    )
    return line + (f", {s.eta_text()}" if running else "")


class StageProgress:
    """Shows one stage at a time: `start` -> (`update` | `add_records`)* -> `finish`.

    Records in are the records a stage read (its reader's output, or the records it started
    from), records out the records it wrote or produced (zephyr.kernels.Counts); the rate is
    records in per second, and the ETA comes from shards done/total and the time elapsed. On a
    terminal (`live`; by default whether `stream` is a TTY) one line is redrawn in place, fitted
    to the terminal's width each time; elsewhere a log line every `log_every` seconds while a
    stage runs, never a bar. Either way `finish` logs one summary line. A thread ("zephyr-
    progress") redraws and logs while no task finishes; with `ticker=False` only the calls (and
    `tick`) do. `clock`, `columns` (a function returning the width) and `stream` (default: the
    current sys.stderr) are injectable for tests.
    """

    def __init__(
        self,
        live: bool | None = None,
        log_every: float = LOG_EVERY,
        *,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] | None = None,
        stream: TextIO | None = None,
        ticker: bool = True,
    ):
        self._live = live
        self.log_every = log_every
        self._clock = clock
        self._columns = columns or _terminal_columns
        self._stream = stream
        self._ticker = ticker
        self._lock = threading.Lock()
        self._stage: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __getstate__(self) -> dict:
        # Backends travel inside nested stages: the copy is idle, with the same settings.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_thread", "_stop")}
        return {**state, "_stage": None, "_stream": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _thread=None, _stop=threading.Event())

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def live(self) -> bool:
        if self._live is not None:
            return self._live
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def start(self, stage: Any, total_shards: int, run_id: str = "", num_stages: int = 1) -> None:
        """Begin showing `stage` (its `index` counts from 0; shown 1-based: '[r2 s1/3]')."""
        with self._lock:
            self._stage = stage
            number = f"s{stage.number}/{num_stages}"
            self._label = f"[{run_id} {number}]" if run_id else f"[{number}]"
            self._total = total_shards
            self._done = self._in = self._out = self._skipped = self._quarantined = 0
            self._t0 = self._last_draw = self._last_log = self._clock()
            self._draw(force=True)
        if self._ticker and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick_loop, name="zephyr-progress")
            self._thread.daemon = True
            self._thread.start()

    def update(
        self,
        shards: int,
        records_in: int = 0,
        records_out: int = 0,
        skipped: int = 0,
        quarantined: int = 0,
    ) -> None:
        """`shards` more shards finished, with the records they read and wrote."""
        with self._lock:
            self._done += shards
            self._in += records_in
            self._out += records_out
            self._skipped += skipped
            self._quarantined += quarantined
            self._show()

    def add_records(self, records_in: int, records_out: int, quarantined: int = 0) -> None:
        """Records counted apart from their shards (results kept on the cluster report them as
        their tasks finish)."""
        with self._lock:
            self._in += records_in
            self._out += records_out
            self._quarantined += quarantined
            self._show()

    def set_records(self, records_in: int, records_out: int) -> None:
        """The exact totals, replacing what was counted live (which may miss or repeat a task)."""
        with self._lock:
            self._in, self._out = records_in, records_out

    def tick(self) -> None:
        """Redraw (terminal) or log if `log_every` has passed (elsewhere); the ticker calls it."""
        with self._lock:
            self._show()

    def finish(self) -> None:
        """Stop showing the stage and log its summary line."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=5)
        with self._lock:
            if self._stage is None:
                return
            self._draw(force=True)
            if self.live:
                self.stream.write("\n")
                self.stream.flush()
                _BAR_ON.clear()
            line = log_line(self._snapshot(), running=False)
            target = getattr(self._stage, "quarantine", None)
            if target is not None:
                where = target.describe(self._total, (self._stage.inputs or (None,))[0])
                noun = "record" if self._quarantined == 1 else "records"
                line += f", {self._quarantined} bad {noun} quarantined in {where}"
            self._stage = None
        logger.info("%s", line)

    # -- under the lock
    def _snapshot(self) -> Snapshot:
        return Snapshot(
            self._label,
            self._stage.title,
            self._done,
            self._total,
            self._in,
            self._out,
            self._clock() - self._t0,
            self._quarantined,
            self._skipped,
        )

    def _show(self) -> None:
        if self._stage is None:
            return
        if self.live:
            self._draw()
        elif self._clock() - self._last_log >= self.log_every:
            self._last_log = self._clock()
            logger.info("%s", log_line(self._snapshot(), running=True))

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = self._clock()
        if not force and now - self._last_draw < _REDRAW:
            return
        self._last_draw = now
        line = bar_line(self._snapshot(), self._columns())
        self.stream.write("\r" + line + _CLEAR_TO_END)
        self.stream.flush()
        _BAR_ON[:] = [self.stream]

    def _tick_loop(self) -> None:
        while not self._stop.wait(_TICK):
            self.tick()
