"""Reading one very long line: zephyr's iter_lines and load_jsonl on single-line JSON files of 50 MB
and 200 MB, against the quadratic line splitter they used before (the baseline, in this process).

The old splitter re-joined the growing partial line with every 1 MiB chunk, so a line of N bytes
cost O(N^2 / chunk): 200 MB takes about 16x the time of 50 MB. Linear reading takes about 4x.
Each file is one record `{"id": 0, "text": "<N bytes of words>"}` written by zephyr's writer into a
temporary folder (plain, and with --gzip also .jsonl.gz); it is read once before timing so it comes
from the page cache. Printed per result: seconds, MB/s of decompressed JSON, peak memory traced by
tracemalloc (about one line plus one chunk when linear), then the 200 MB / 50 MB time ratios.

Run:  python benchmarks/long_lines.py                 # plain files, new and old (~1 minute)
      python benchmarks/long_lines.py --gzip --no-old  # gzip too, new code only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

import zephyr.io.jsonl as zjsonl
from zephyr.io.compression import iter_chunks, iter_lines
from zephyr.io.jsonl import load_jsonl, write_jsonl_file

WORDS = "the quick brown fox jumps over a lazy dog while zephyr reads one long line ".split()


def old_iter_lines(path: str) -> Iterator[bytes]:
    """iter_lines before the fix (verbatim): the partial line is re-joined with every chunk."""
    tail = b""
    for chunk in iter_chunks(path):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def old_load_jsonl(path: str) -> Iterator[dict]:
    """load_jsonl reading through the old splitter."""
    zjsonl.iter_lines = old_iter_lines
    try:
        yield from load_jsonl(path)
    finally:
        zjsonl.iter_lines = iter_lines


def write_line_file(folder: Path, megabytes: int, ext: str) -> tuple[str, int]:
    """A file holding one JSON record of about `megabytes` MB; returns its path and line size."""
    text = " ".join(WORDS * (megabytes * 1_000_000 // len(" ".join(WORDS)) + 1))
    text = text[: megabytes * 1_000_000 - 24]
    path = str(folder / f"line-{megabytes}mb.jsonl{ext}")
    write_jsonl_file([{"id": 0, "text": text}], path)
    size = sum(len(line) for line in iter_lines(path))  # also puts the file in the page cache
    return path, size


def read_lines(fn: Callable[[str], Iterator[bytes]], path: str, size: int) -> None:
    total = sum(len(line) for line in fn(path))
    if total != size:
        raise SystemExit(f"{fn.__name__} read {total} bytes of lines from {path}, not {size}")


def read_records(fn: Callable[[str], Iterator[dict]], path: str, size: int) -> None:
    records = list(fn(path))
    if len(records) != 1 or records[0]["id"] != 0:
        raise SystemExit(f"{fn.__name__} read {len(records)} records from {path}, not 1")


def timed(check: Callable, fn: Callable, path: str, size: int) -> tuple[float, float]:
    """(seconds, peak traced MB) of one `check(fn, path, size)`."""
    tracemalloc.start()
    t0 = time.perf_counter()
    check(fn, path, size)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[50, 200], metavar=("SMALL", "BIG"))
    parser.add_argument("--gzip", action="store_true", help="also time .jsonl.gz files")
    parser.add_argument("--no-old", action="store_true", help="skip the (slow) old baseline")
    parser.add_argument("--repeat", type=int, default=1, help="runs per result; best is kept")
    args = parser.parse_args()

    variants: dict[str, tuple[Callable, Callable]] = {
        "iter_lines": (read_lines, iter_lines),
        "load_jsonl": (read_records, load_jsonl),
    }
    if not args.no_old:
        variants["old iter_lines"] = (read_lines, old_iter_lines)
        variants["old load_jsonl"] = (read_records, old_load_jsonl)
    exts = [".jsonl.gz", ""] if args.gzip else [""]
    best: dict[tuple[str, str, int], float] = {}
    busy = psutil.cpu_percent(interval=1.0)
    if busy > 15:
        print(f"WARNING: the machine is {busy:.0f}% busy before timing; results will be noisy")
    with tempfile.TemporaryDirectory(prefix="zephyr-long-lines-") as tmp:
        for ext in exts:
            for mb in args.sizes:
                path, size = write_line_file(Path(tmp), mb, ext)
                for name, (check, fn) in variants.items():
                    runs = [timed(check, fn, path, size) for _ in range(args.repeat)]
                    seconds, peak = min(runs)
                    best[name, ext, mb] = seconds
                    print(
                        f"{name:<15} {mb:4d} MB line, {ext or 'plain':<9} {seconds:7.2f} s  "
                        f"{size / 1e6 / seconds:7.1f} MB/s  peak {peak:6.0f} MB traced",
                        flush=True,
                    )
                Path(path).unlink()
    small, big = args.sizes
    for ext in exts:
        for name in variants:
            ratio = best[name, ext, big] / best[name, ext, small]
            print(
                f"{name:<15} {ext or 'plain':<9} {big} MB / {small} MB time = {ratio:5.1f}x  "
                f"(linear {big / small:.0f}x, quadratic {(big / small) ** 2:.0f}x)"
            )
        if not args.no_old:
            for name in ("iter_lines", "load_jsonl"):
                speedup = best[f"old {name}", ext, big] / best[name, ext, big]
                print(f"{name:<15} {ext or 'plain':<9} {big} MB: old / new time = {speedup:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
