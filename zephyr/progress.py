"""Per-stage progress: a live bar on a terminal (shards done/total, records/s) and a summary log
line.

No Dask import; the driver loop in `zephyr.backends.base` calls it. Writes to stderr only when it is
a TTY.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger("zephyr")

_BAR_WIDTH = 24
_MIN_INTERVAL = 0.1


class StageProgress:
    """Tracks one stage at a time. `start` -> `update`* -> `finish`."""

    def __init__(self, live: bool | None = None):
        self._live = live
        self._stage: Any = None

    @property
    def live(self) -> bool:
        if self._live is not None:
            return self._live
        return bool(getattr(sys.stderr, "isatty", lambda: False)())

    def start(self, stage: Any, total_shards: int) -> None:
        self._stage = stage
        self._total = total_shards
        self._done = 0
        self._records = 0
        self._skipped = 0
        self._quarantined = 0
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._draw(force=True)

    def update(self, shards: int, records: int, skipped: int = 0, quarantined: int = 0) -> None:
        self._done += shards
        self._records += records
        self._skipped += skipped
        self._quarantined += quarantined
        self._draw()

    def add_records(self, records: int, quarantined: int = 0) -> None:
        """Records counted after the fact (stages whose outputs stay on the cluster)."""
        self._records += records
        self._quarantined += quarantined

    def finish(self) -> None:
        if self._stage is None:
            return
        elapsed = time.monotonic() - self._t0
        self._draw(force=True)
        if self.live:
            sys.stderr.write("\n")
            sys.stderr.flush()
        skipped = f" ({self._skipped} skipped: output exists)" if self._skipped else ""
        target = getattr(self._stage, "quarantine", None)
        quarantined = ""
        if target is not None:
            where = target.describe(self._total, (self._stage.inputs or (None,))[0])
            noun = "record" if self._quarantined == 1 else "records"
            quarantined = f", {self._quarantined} bad {noun} quarantined in {where}"
        logger.info(
            "stage %d '%s': %d/%d shards%s, %d records in %.1f s (%.0f records/s)%s",
            self._stage.index,
            self._stage.name,
            self._done,
            self._total,
            skipped,
            self._records,
            elapsed,
            self._records / elapsed if elapsed > 0 else 0.0,
            quarantined,
        )
        self._stage = None

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < _MIN_INTERVAL:
            return
        self._last_draw = now
        elapsed = max(now - self._t0, 1e-9)
        frac = self._done / self._total if self._total else 1.0
        filled = int(frac * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        line = (
            f"\r[{bar}] stage {self._stage.index} {self._stage.name[:40]}: "
            f"{self._done}/{self._total} shards, {self._records / elapsed:,.0f} records/s"
        )
        if self._quarantined:
            line += f", {self._quarantined:,} quarantined"
        sys.stderr.write(line)
        sys.stderr.flush()
