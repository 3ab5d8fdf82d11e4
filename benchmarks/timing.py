"""Shared by the benchmark scripts: best-of-N timing of variants that write into a folder, and the
wording of target lines."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path


def best_times(
    variants: dict[str, Callable[[Path], None]],
    out_root: Path,
    repeat: int,
    inspect: Callable[[str, Path], None],
    prefix: str = "out",
) -> dict[str, float]:
    """Run every variant `repeat` times (interleaved) into a fresh folder under `out_root`; return
    each one's best wall time. `inspect(name, out)` sees each run's output before it is deleted."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for i, (name, run) in enumerate(variants.items()):
            out = out_root / f"{prefix}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            run(out)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            inspect(name, out)
            shutil.rmtree(out, ignore_errors=True)
    return best


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"
