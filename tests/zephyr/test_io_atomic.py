"""Atomic, idempotent outputs and `skip_existing`: no partial file is ever visible at a final path,
duplicate attempts leave one whole file, skipped shards open no input, and a pipeline killed mid-run
(SIGKILL of the driver and of a worker) re-runs only its missing shards.

Real files on local disk and memory://; the kill test runs the driver and a `dask worker` as real
processes.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import distributed
import fsspec
import pytest

from tests.zephyr.probes import start_dask_worker, wait_until_idle
from zephyr import Dataset, SyncBackend, ZephyrError, load_jsonl
from zephyr.io.atomic import atomic_output, existing_outputs, output_exists

REPO = Path(__file__).resolve().parents[2]


def write_inputs(folder: Path, shards: int, per_shard: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"part-{s:02d}.jsonl"
        path.write_text("".join(json.dumps({"s": s, "i": i}) + "\n" for i in range(per_shard)))
        paths.append(path)
    return paths


def read_gz_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def listing(folder: Path) -> list[str]:
    """Every entry, hidden ones included (temporaries are hidden)."""
    return sorted(os.listdir(folder))


def double(doc):
    return {**doc, "twice": doc["i"] * 2}


class Recorder:
    """A picklable loader that appends each input it opens to a log file, then reads it."""

    def __init__(self, log: Path):
        self.log = str(log)

    def __call__(self, path):
        with open(self.log, "a") as f:
            f.write(f"{os.path.basename(path)}\n")
        return load_jsonl(path)

    def opened(self) -> list[str]:
        if not os.path.exists(self.log):
            return []
        return sorted(Path(self.log).read_text().split())


# -- atomic_output ---------------------------------------------------------------------------------
def test_partial_output_is_never_visible_at_the_final_path(tmp_path):
    final = tmp_path / "out.jsonl"
    final.write_text("old complete file\n")
    with atomic_output(str(final)) as f:
        f.write(b"half of the new")
        assert final.read_text() == "old complete file\n"
        hidden = [n for n in listing(tmp_path) if n.startswith(".out.jsonl.tmp-")]
        assert len(hidden) == 1
    assert final.read_text() == "half of the new"
    assert listing(tmp_path) == ["out.jsonl"]


def test_failure_inside_the_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(str(tmp_path / "a" / "out.jsonl.gz")) as f:
        f.write(b"x" * 1000)
        raise RuntimeError("killed")
    assert listing(tmp_path / "a") == []


def test_concurrent_attempts_at_one_output_leave_one_whole_file(tmp_path):
    """Two attempts (a retry racing a slow original) write the same output at once: the path holds
    one complete copy, never a mix, and no temporaries remain."""
    final = tmp_path / "out.jsonl"
    payload = b"".join(b'{"i": %d}\n' % i for i in range(50_000))
    barrier = threading.Barrier(2)
    errors = []

    def attempt():
        try:
            with atomic_output(str(final)) as f:
                barrier.wait(timeout=10)
                for start in range(0, len(payload), 4096):
                    f.write(payload[start : start + 4096])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert final.read_bytes() == payload
    assert listing(tmp_path) == ["out.jsonl"]


def test_temporaries_of_a_killed_attempt_are_removed_when_the_output_is_committed(tmp_path):
    stale = tmp_path / ".out.jsonl.tmp-0123456789abcdef"
    stale.write_bytes(b"half a file from a SIGKILLed task")
    other = tmp_path / ".other.jsonl.tmp-0123456789abcdef"
    other.write_bytes(b"belongs to another output")
    with atomic_output(str(tmp_path / "out.jsonl")) as f:
        f.write(b"whole\n")
    assert listing(tmp_path) == [".other.jsonl.tmp-0123456789abcdef", "out.jsonl"]


def test_existing_outputs_lists_each_folder_once(tmp_path):
    for name in ("a.jsonl", "b.jsonl", ".c.jsonl.tmp-1"):
        (tmp_path / "x" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "x" / name).write_text("1\n")
    paths = [str(tmp_path / "x" / n) for n in ("a.jsonl", "b.jsonl", "c.jsonl")]
    paths.append(str(tmp_path / "missing-folder" / "d.jsonl"))
    assert existing_outputs(paths) == set(paths[:2])
    mem = fsspec.filesystem("memory")
    mem.pipe("/exist-test/one.jsonl", b"1\n")
    assert existing_outputs(["memory://exist-test/one.jsonl", "memory://exist-test/two.jsonl"]) == {
        "memory://exist-test/one.jsonl"
    }
    assert output_exists("memory://exist-test/one.jsonl")
    assert not output_exists("memory://exist-test/two.jsonl")


# -- skip_existing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["jsonl", "parquet", "binary"])
def test_skip_existing_skips_shards_without_opening_their_input(backend, tmp_path, writer):
    inputs = write_inputs(tmp_path / "in", 4)
    ext = {"jsonl": "jsonl.gz", "parquet": "parquet", "binary": "bin"}[writer]

    def pipeline(recorder):
        ds = Dataset.from_files(str(tmp_path / "in" / "*.jsonl")).flat_map(recorder)
        pattern = str(tmp_path / "out" / f"{{basename}}.{ext}")
        if writer == "binary":
            return ds.map(json.dumps).map(str.encode).write_binary(pattern, skip_existing=True)
        return getattr(ds, f"write_{writer}")(pattern, skip_existing=True)

    first = list(pipeline(Recorder(tmp_path / "run1.log")).execute(backend))
    assert len(first) == 4
    kept = Path(first[0]).stat()
    os.remove(first[2])
    for path in inputs[:2] + inputs[3:]:
        path.write_text("not JSON\n")  # reading any of these would now fail
    recorder = Recorder(tmp_path / "run2.log")
    second = list(pipeline(recorder).execute(backend))
    assert second == first
    assert recorder.opened() == ["part-02.jsonl"]
    again = Path(first[0]).stat()
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


def test_without_skip_existing_every_shard_is_rewritten(tmp_path):
    write_inputs(tmp_path / "in", 3)
    recorder = Recorder(tmp_path / "run.log")
    ds = Dataset.from_files(str(tmp_path / "in" / "*.jsonl")).flat_map(recorder)
    ds = ds.write_jsonl(str(tmp_path / "out" / "{shard:05d}.jsonl"))
    list(ds.execute(SyncBackend()))
    list(ds.execute(SyncBackend()))
    assert len(recorder.opened()) == 6


def test_skip_existing_after_a_reshard_runs_nothing_upstream_when_all_outputs_exist(tmp_path):
    inputs = write_inputs(tmp_path / "in", 4)
    recorder = Recorder(tmp_path / "run.log")
    ds = (
        Dataset.from_files(str(tmp_path / "in" / "*.jsonl"))
        .flat_map(recorder)
        .reshard(2)
        .write_jsonl(
            str(tmp_path / "out" / "{shard:05d}-of-{total:05d}.jsonl.gz"), skip_existing=True
        )
    )
    first = list(ds.execute(SyncBackend()))
    assert len(recorder.opened()) == 4
    for path in inputs:
        path.write_text("not JSON\n")
    assert list(ds.execute(SyncBackend())) == first
    assert len(recorder.opened()) == 4  # no input opened by the second run
    assert sorted(r["s"] * 10 + r["i"] for p in first for r in read_gz_jsonl(Path(p))) == sorted(
        s * 10 + i for s in range(4) for i in range(5)
    )


def test_skip_existing_after_a_reshard_recomputes_only_missing_outputs(tmp_path):
    write_inputs(tmp_path / "in", 4)
    ds = (
        Dataset.from_files(str(tmp_path / "in" / "*.jsonl"))
        .load_jsonl()
        .reshard(2)
        .map(double)
        .write_jsonl(str(tmp_path / "out" / "{shard:05d}.jsonl.gz"), skip_existing=True)
    )
    first = list(ds.execute(SyncBackend()))
    before = [read_gz_jsonl(Path(p)) for p in first]
    kept = Path(first[1]).stat()
    os.remove(first[0])
    assert list(ds.execute(SyncBackend())) == first
    assert [read_gz_jsonl(Path(p)) for p in first] == before
    again = Path(first[1]).stat()
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


def test_skipped_shards_are_reported_in_the_stage_summary(tmp_path, caplog):
    write_inputs(tmp_path / "in", 3)
    ds = (
        Dataset.from_files(str(tmp_path / "in" / "*.jsonl"))
        .load_jsonl()
        .write_jsonl(str(tmp_path / "out" / "{basename}.jsonl"), skip_existing=True)
    )
    list(ds.execute(SyncBackend()))
    os.remove(tmp_path / "out" / "part-01.jsonl")
    logger = logging.getLogger("zephyr")
    logger.addHandler(caplog.handler)
    try:
        list(ds.execute(SyncBackend()))
    finally:
        logger.removeHandler(caplog.handler)
    assert "3/3 shards (2 skipped: output exists) in " in caplog.text
    assert "records in 5 (" in caplog.text and "out 5\n" in caplog.text


def fail_on_shard_2(doc):
    if doc["s"] == 2:
        raise RuntimeError("preempted")
    return doc


def test_rerun_after_a_failure_recomputes_only_the_missing_shards(backend, tmp_path):
    write_inputs(tmp_path / "in", 4)
    out = tmp_path / "out"

    def pipeline(recorder, fn):
        return (
            Dataset.from_files(str(tmp_path / "in" / "*.jsonl"))
            .flat_map(recorder)
            .map(fn)
            .write_jsonl(str(out / "{basename}.jsonl.gz"), skip_existing=True)
        )

    with pytest.raises(ZephyrError, match="preempted"):
        list(pipeline(Recorder(tmp_path / "run1.log"), fail_on_shard_2).execute(backend))
    wait_until_idle(backend)
    survivors = {n for n in listing(out) if not n.startswith(".")}
    assert "part-02.jsonl.gz" not in survivors
    assert all(not n.startswith(".") for n in listing(out)), listing(out)
    for name in survivors:  # every file present is whole
        assert len(read_gz_jsonl(out / name)) == 5
    recorder = Recorder(tmp_path / "run2.log")
    paths = list(pipeline(recorder, double).execute(backend))
    assert len(paths) == 4
    expected_new = sorted(
        {f"part-{s:02d}.jsonl" for s in range(4)}
        - {n.replace(".jsonl.gz", ".jsonl") for n in survivors}
    )
    assert recorder.opened() == expected_new
    assert listing(out) == [f"part-{s:02d}.jsonl.gz" for s in range(4)]


# -- a run killed with SIGKILL ---------------------------------------------------------------------
DRIVER = textwrap.dedent(
    """
    import os, sys, time
    from zephyr import Dataset, DaskBackend, load_jsonl

    address, in_dir, out_dir, log = sys.argv[1:5]

    def opened(path):
        with open(log, "a") as f:
            f.write(os.path.basename(path) + "\\n")
        return load_jsonl(path)

    def slow(doc):
        time.sleep(0.05)
        return {**doc, "twice": doc["i"] * 2}

    if __name__ == "__main__":
        pipeline = (
            Dataset.from_files(in_dir + "/*.jsonl")
            .flat_map(opened)
            .map(slow)
            .write_jsonl(out_dir + "/{basename}.jsonl.gz", skip_existing=True)
        )
        for path in pipeline.execute(DaskBackend(address)):
            print(path, flush=True)
    """
)


def _run_driver(script: Path, address: str, tmp_path: Path, log: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, str(script), address, str(tmp_path / "in"), str(tmp_path / "out")]
    return subprocess.Popen(
        [*args, str(tmp_path / log)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_pipeline_killed_with_sigkill_resumes_with_only_the_missing_shards(tmp_path):
    shards = 10
    write_inputs(tmp_path / "in", shards, per_shard=10)  # ~0.5 s per shard on one thread
    script = tmp_path / "job.py"
    script.write_text(DRIVER)
    out = tmp_path / "out"
    with distributed.LocalCluster(
        n_workers=0, host="127.0.0.1", dashboard_address=":0", silence_logs=50
    ) as cluster:
        address = cluster.scheduler_address
        worker = start_dask_worker(address)
        driver = _run_driver(script, address, tmp_path, "run1.log")
        try:
            deadline = time.monotonic() + 60
            while len([n for n in listing_or_empty(out) if not n.startswith(".")]) < 3:
                assert driver.poll() is None, driver.communicate()
                assert time.monotonic() < deadline, "the first run wrote no outputs"
                time.sleep(0.02)
        finally:
            driver.send_signal(signal.SIGKILL)
            worker.send_signal(signal.SIGKILL)
            driver.communicate(timeout=10)
            worker.wait(timeout=10)

        done = {n: (out / n).stat() for n in listing(out) if not n.startswith(".")}
        assert 3 <= len(done) < shards, "the kill did not land mid-run"
        for name in done:  # whatever is at a final path is whole
            assert len(read_gz_jsonl(out / name)) == 10
        missing = {f"part-{s:02d}.jsonl" for s in range(shards)} - {
            n.replace(".jsonl.gz", ".jsonl") for n in done
        }

        worker = start_dask_worker(address)
        driver = _run_driver(script, address, tmp_path, "run2.log")
        try:
            stdout, stderr = driver.communicate(timeout=90)
        finally:
            driver.kill()
            worker.kill()
            worker.wait(timeout=10)
    assert driver.returncode == 0, stderr
    assert len(stdout.split()) == shards
    rerun_opened = sorted((tmp_path / "run2.log").read_text().split())
    assert rerun_opened == sorted(missing)
    for name, stat in done.items():  # the shards that were done were not touched again
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert listing(out) == [f"part-{s:02d}.jsonl.gz" for s in range(shards)]  # no temporaries
    for s in range(shards):
        records = read_gz_jsonl(out / f"part-{s:02d}.jsonl.gz")
        assert records == [{"s": s, "i": i, "twice": 2 * i} for i in range(10)]
    back = Dataset.from_files(str(out / "*.jsonl.gz")).load_jsonl().execute(SyncBackend())
    assert len(list(back)) == shards * 10


def listing_or_empty(folder: Path) -> list[str]:
    return listing(folder) if folder.exists() else []
