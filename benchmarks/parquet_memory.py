"""Worker memory while streaming a ~1 GB Parquet file through zephyr on one Dask worker process.

Pipeline: Dataset.from_files(<file>).load_parquet().map(add a small field).write_parquet(<out>) on
a DaskBackend over a LocalCluster of ONE single-threaded worker process (the embedded cluster's
settings and resources, CPU=1 / MEMORY / GPU, but n_workers=1). A driver thread samples the
worker's RSS with psutil every 50 ms; the kernel's high-water mark (VmHWM) is read as well, so a
spike between samples cannot hide. Each run gets a fresh cluster, so one run's peak does not carry
over into the next. Runs:
  full        load_parquet() -> map -> write_parquet: every column, every row
  projection  load_parquet(columns=["id"]) -> map -> write_parquet: one small column (projection)
  baseline    pyarrow.parquet.read_table(<file>) in a fresh subprocess: what naive reading costs
              (peak RSS from getrusage)
The input (default 10 row groups x 65,000 rows: id, text of 300-2,700 random letters and spaces,
source, score; snappy, which barely compresses such text, so the file is ~1 GB on disk) is generated
once in row-group chunks (a few hundred MB of RAM) and cached under --data (default
<repo>/bench-data/, git-ignored). Output row counts must equal the input's. Sizes are in MB (1e6
bytes). Target: worker peak RSS < 300 MB. About 30 s (plus ~10 s to generate the file once).

Run:  python benchmarks/parquet_memory.py
      python benchmarks/parquet_memory.py --row-groups 4 --rows-per-group 5000  # quick
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_throughput import REPO, SOURCES  # noqa: E402
from timing import met  # noqa: E402

MB = 1_000_000
TARGET_MB = 300
# 256 byte values -> 234 letters (a-z, 9 times) and 22 spaces: words of ~11 letters, ~4.7 bits of
# entropy per byte, which snappy cannot compress.
_ALPHABET = np.frombuffer(bytes(range(97, 123)) * 9 + b" " * 22, dtype=np.uint8)


def _row_group(rng: np.random.Generator, first_id: int, rows: int) -> pa.Table:
    """One row group: `rows` rows with ids from `first_id` and random-letter text."""
    lengths = rng.integers(300, 2_700, size=rows, dtype=np.int64)
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = _ALPHABET[np.frombuffer(rng.bytes(int(offsets[-1])), dtype=np.uint8)]
    text = pa.Array.from_buffers(
        pa.string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    ids = pa.array([f"doc-{i:010d}" for i in range(first_id, first_id + rows)])
    sources = pa.array(SOURCES).take(pa.array(rng.integers(0, len(SOURCES), size=rows)))
    return pa.table({"id": ids, "text": text, "source": sources, "score": rng.random(rows)})


def ensure_parquet(data: Path, row_groups: int, rows: int, seed: int) -> Path:
    """The cached input file, written one row group at a time (never the whole table in RAM)."""
    path = data / f"parquet-{row_groups}x{rows}-seed{seed}.parquet"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        rng = np.random.default_rng(seed)
        writer = None
        for g in range(row_groups):
            table = _row_group(rng, g * rows, rows)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=rows)
        if writer is not None:
            writer.close()
        tmp.rename(path)
    return path


def add_field(doc: dict) -> dict:
    doc["id_len"] = len(doc["id"])
    return doc


@contextlib.contextmanager
def one_worker_cluster() -> Iterator[Any]:
    """A Client on a fresh LocalCluster of one single-threaded worker process, set up like
    zephyr's embedded cluster (fray_dask.embedded.embedded) but with n_workers=1."""
    import distributed
    from distributed.system import MEMORY_LIMIT

    memory = int(MEMORY_LIMIT)
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        memory_limit=memory,
        resources={"CPU": 1, "MEMORY": memory, "GPU": 0},
        silence_logs=logging.CRITICAL,
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _vm_hwm(pid: int) -> int | None:
    """The kernel's peak-RSS mark for `pid` in bytes (Linux), or None."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def zephyr_run(label: str, path: Path, out: Path, columns: list[str] | None) -> dict[str, Any]:
    """Stream `path` through zephyr on a one-worker cluster while sampling the worker's RSS."""
    from zephyr import DaskBackend, Dataset

    shutil.rmtree(out, ignore_errors=True)
    with one_worker_cluster() as client:
        backend = DaskBackend(address=client)
        client.run(exec, "import pyarrow.parquet, msgspec, zephyr.io.parquet, zephyr.kernels")
        list(backend.execute(Dataset.from_list([{"id": "x"}] * 2).map(add_field)))  # warm-up
        (pid,) = client.run(os.getpid).values()
        proc = psutil.Process(pid)
        idle = proc.memory_info().rss
        peak, samples, stop = [idle], [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                samples[0] += 1
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        pipeline = (
            Dataset.from_files(str(path))
            .load_parquet(columns=columns)
            .map(add_field)
            .write_parquet(f"{out}/{{shard:05d}}.parquet")
        )
        written = list(backend.execute(pipeline))
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        hwm = _vm_hwm(pid)
    meta = pq.ParquetFile(written[0]).metadata
    result = {
        "label": label,
        "idle": idle,
        "peak": peak[0],
        "hwm": hwm,
        "seconds": seconds,
        "samples": samples[0],
        "rows": meta.num_rows,
        "out_bytes": os.path.getsize(written[0]),
        "out_groups": meta.num_row_groups,
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


_READ_TABLE = """
import resource, sys, time
import psutil
import pyarrow.parquet as pq
idle = psutil.Process().memory_info().rss
start = time.perf_counter()
table = pq.read_table(sys.argv[1])
seconds = time.perf_counter() - start
print(idle, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, table.num_rows,
      seconds)
"""


def read_table_baseline(path: Path) -> tuple[int, int, int, float]:
    """(RSS after import, peak RSS, rows, seconds) of pq.read_table(path) in a new process."""
    done = subprocess.run(
        [sys.executable, "-c", _READ_TABLE, str(path)], capture_output=True, text=True, check=True
    )
    idle, peak, rows, seconds = done.stdout.split()
    return int(idle), int(peak), int(rows), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "bench-data")
    parser.add_argument("--row-groups", type=int, default=10)
    parser.add_argument("--rows-per-group", type=int, default=65_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    path = ensure_parquet(args.data, args.row_groups, args.rows_per_group, args.seed)
    meta = pq.ParquetFile(path).metadata
    size = path.stat().st_size
    raw = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))  # uncompressed
    print(
        f"input: {path} ({size / MB:.0f} MB on disk, {raw / MB:.0f} MB uncompressed, "
        f"{meta.num_row_groups} row groups, {meta.num_rows} rows, columns "
        f"{pq.ParquetFile(path).schema_arrow.names}; ready in "
        f"{time.perf_counter() - start:.1f} s)"
    )
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"driver peak RSS so far (generation included): {driver_peak / MB:.0f} MB")
    busy = psutil.cpu_percent(interval=1.0)
    if busy > 15:
        print(f"WARNING: the machine is {busy:.0f}% busy before timing; results will be noisy")

    runs = [
        zephyr_run("load_parquet()", path, args.data / "parquet-out-full", None),
        zephyr_run('load_parquet(columns=["id"])', path, args.data / "parquet-out-id", ["id"]),
    ]
    for r in runs:
        hwm = f"{r['hwm'] / MB:.0f} MB" if r["hwm"] is not None else "n/a"
        print(
            f"zephyr {r['label']:<30} 1 worker: idle RSS {r['idle'] / MB:.0f} MB, "
            f"peak RSS {r['peak'] / MB:.0f} MB ({r['samples']} samples; kernel VmHWM {hwm}), "
            f"{r['seconds']:.1f} s, {r['rows']} rows written "
            f"({r['out_bytes'] / MB:.1f} MB, {r['out_groups']} row groups)"
        )
    idle, peak, rows, seconds = read_table_baseline(path)
    print(
        f"baseline pyarrow.parquet.read_table(path) (subprocess): RSS after import "
        f"{idle / MB:.0f} MB, peak RSS {peak / MB:.0f} MB, {seconds:.1f} s, {rows} rows"
    )

    bad = {r["label"]: r["rows"] for r in runs if r["rows"] != meta.num_rows}
    if bad or rows != meta.num_rows:
        raise SystemExit(f"row counts differ from the input's {meta.num_rows}: {bad}, {rows}")
    for r in runs:
        top = max(r["peak"], r["hwm"] or 0)
        print(
            f"target worker peak RSS < {TARGET_MB} MB: {met(top < TARGET_MB * MB)} "
            f"({r['label']}: {top / MB:.0f} MB, the larger of sampled peak and VmHWM)"
        )


if __name__ == "__main__":
    main()
