"""zephyr on real gs:// storage: gcsfs speaking HTTP to gcp-storage-emulator, an in-memory GCS
server run as a subprocess (not a mock), with Dask worker processes doing the reads and writes.
Covers glob -> load_jsonl -> map -> write_jsonl, re-runs with skip_existing after an object was
deleted by another client, and that a failed shard publishes no object."""

from __future__ import annotations

import fcntl
import functools
import gc
import gzip
import json
import logging
import os
from pathlib import Path

import distributed
import fsspec
import pytest

from tests.gcs_emulator import gcsfs_on, running_emulator
from tests.zephyr.probes import wait_until_idle
from zephyr import Dataset, ZephyrError, load_jsonl
from zephyr.backends.dask import DaskBackend

pytestmark = [
    pytest.mark.dask,
    # dashboard_address=None still serves the scheduler's HTTP routes, on 8787 when it is free.
    pytest.mark.filterwarnings("ignore:Port 8787 is already in use:UserWarning"),
]

BUCKET = "bucket"
RAW = f"gs://{BUCKET}/raw"
GZIP_MAGIC = b"\x1f\x8b"

# Four input shards of different lengths; ids say which shard a record came from.
SHARDS = [
    [
        {"id": f"s{s}-{i}", "shard": s, "text": " ".join(["mot"] * (i + 1)) + " é世"}
        for i in range(3 + s)
    ]
    for s in range(4)
]
RAW_PATHS = [f"{RAW}/part-{s:04d}.jsonl.gz" for s in range(len(SHARDS))]


# -- user functions (module level so Dask workers import them by reference) ----------------------
def enrich(doc: dict) -> dict:
    return {**doc, "text": doc["text"].upper(), "n_words": len(doc["text"].split())}


def _append(log_path: str, line: str) -> None:
    # Worker processes append to one local file; the lock keeps lines whole.
    with open(log_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line + "\n")


def note_input(log_path: str, path: str) -> str:
    """Runs on a shard's input path before load_jsonl opens it."""
    _append(log_path, f"open {path}")
    return path


def note_record(log_path: str, doc: dict) -> dict:
    _append(log_path, f"record {doc['id']}")
    return enrich(doc)


def fail_on_s2_1(doc: dict) -> dict:
    if doc["id"] == "s2-1":
        raise ValueError("refusing record s2-1")
    return enrich(doc)


# -- helpers -------------------------------------------------------------------------------------
def _objects(fs, prefix: str) -> list[str]:
    """Every object under `prefix` (a fresh listing: workers in other processes wrote them)."""
    fs.invalidate_cache()
    return sorted(fs.find(prefix))


def _read_back(fs, paths: list[str]) -> list[list[dict]]:
    fs.invalidate_cache()
    return [list(load_jsonl(p)) for p in paths]


def _log_lines(log_path: Path, kind: str) -> list[str]:
    if not log_path.exists():
        return []
    return sorted(
        line.split(" ", 1)[1] for line in log_path.read_text().splitlines() if line.startswith(kind)
    )


def _gcs_token() -> object:
    """The gs:// credentials fsspec gives gcsfs in this process (from FSSPEC_GCS_TOKEN)."""
    return fsspec.config.conf.get("gcs", {}).get("token")


def _delete_elsewhere(path: str) -> None:
    """Delete an object as another program would (gsutil, a colleague): through a client that
    shares no listing cache with this process's filesystem instances."""
    import gcsfs

    gcsfs.core.GCSFileSystem(token="anon", skip_instance_cache=True).rm(path)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A gcsfs filesystem on a fresh in-memory emulator holding an empty bucket `bucket`; the
    environment (inherited by worker processes started later) points gs:// at it."""
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with running_emulator(log_path) as endpoint, gcsfs_on(endpoint, BUCKET) as fs:
        yield fs


@pytest.fixture(scope="module")
def dask_client(gcs):
    """Two single-threaded worker processes, started after `gcs` set the environment."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        seen = client.run(os.environ.get, "STORAGE_EMULATOR_HOST")
        assert set(seen.values()) == {os.environ["STORAGE_EMULATOR_HOST"]}, (
            f"workers must inherit STORAGE_EMULATOR_HOST, got {seen}"
        )
        tokens = client.run(_gcs_token)
        assert set(tokens.values()) == {"anon"}, f"workers must read FSSPEC_GCS_TOKEN, got {tokens}"
        yield client


@pytest.fixture(scope="module")
def gcs_backend(dask_client):
    backend = DaskBackend(address=dask_client)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def raw_shards(gcs):
    """The SHARDS uploaded as gzip JSON Lines objects under gs://bucket/raw/."""
    for path, records in zip(RAW_PATHS, SHARDS, strict=True):
        with gcs.open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    assert _objects(gcs, RAW) == [p.removeprefix("gs://") for p in RAW_PATHS]
    return RAW_PATHS


# -- tests ---------------------------------------------------------------------------------------
def test_pipeline_reads_and_writes_gs_objects_on_dask_workers(gcs, gcs_backend, raw_shards):
    out = f"gs://{BUCKET}/out"
    pipeline = (
        Dataset.from_files(f"{RAW}/*.jsonl.gz")
        .load_jsonl()
        .map(enrich)
        .write_jsonl(out + "/{shard:05d}.jsonl.gz")
    )

    paths = list(pipeline.execute(gcs_backend))

    expected_paths = [f"{out}/{s:05d}.jsonl.gz" for s in range(len(SHARDS))]
    assert paths == expected_paths
    assert _read_back(gcs, paths) == [[enrich(r) for r in shard] for shard in SHARDS]
    assert all(gcs.cat(p)[:2] == GZIP_MAGIC for p in paths), ".gz outputs must be gzip"
    # Only the final objects: no temporary or partial uploads left beside them.
    assert _objects(gcs, out) == [p.removeprefix("gs://") for p in expected_paths]


def test_skip_existing_recomputes_only_the_missing_object(gcs, gcs_backend, raw_shards, tmp_path):
    out = f"gs://{BUCKET}/out-skip"
    pattern = out + "/{shard:05d}.jsonl.gz"
    expected_paths = [f"{out}/{s:05d}.jsonl.gz" for s in range(len(SHARDS))]

    def pipeline(log: Path, **write_options):
        return (
            Dataset.from_files(f"{RAW}/*.jsonl.gz")
            .map(functools.partial(note_input, str(log)))
            .load_jsonl()
            .map(functools.partial(note_record, str(log)))
            .write_jsonl(pattern, **write_options)
        )

    first_log = tmp_path / "first.log"
    assert list(pipeline(first_log).execute(gcs_backend)) == expected_paths
    # The probe sees work done in both worker processes.
    assert _log_lines(first_log, "open") == RAW_PATHS
    assert _log_lines(first_log, "record") == sorted(r["id"] for shard in SHARDS for r in shard)

    gcs.invalidate_cache()
    before = {p: gcs.info(p) for p in expected_paths}
    _delete_elsewhere(expected_paths[2])
    assert _objects(gcs, out) == [
        p.removeprefix("gs://") for i, p in enumerate(expected_paths) if i != 2
    ]

    second_log = tmp_path / "second.log"
    paths = list(pipeline(second_log, skip_existing=True).execute(gcs_backend))

    assert paths == expected_paths, "skipped shards still yield their output paths"
    assert _log_lines(second_log, "open") == [RAW_PATHS[2]], "only the missing shard reads input"
    assert _log_lines(second_log, "record") == sorted(r["id"] for r in SHARDS[2])
    gcs.invalidate_cache()
    for i, path in enumerate(expected_paths):
        if i != 2:
            after = gcs.info(path)
            assert (after["generation"], after["md5Hash"]) == (
                before[path]["generation"],
                before[path]["md5Hash"],
            ), f"{path} was rewritten although it existed"
    assert _read_back(gcs, paths) == [[enrich(r) for r in shard] for shard in SHARDS]
    assert _objects(gcs, out) == [p.removeprefix("gs://") for p in expected_paths]


def test_a_failed_shard_publishes_no_object(gcs, gcs_backend, dask_client, raw_shards):
    out = f"gs://{BUCKET}/out-fail"
    pipeline = (
        Dataset.from_files(f"{RAW}/*.jsonl.gz")
        .load_jsonl()
        .map(fail_on_s2_1)
        .write_jsonl(out + "/{shard:05d}.jsonl.gz")
    )

    with pytest.raises(
        ZephyrError,
        match=r"shard 2 \(input 'gs://bucket/raw/part-0002\.jsonl\.gz'\): "
        r"map\(fail_on_s2_1\) raised ValueError: refusing record s2-1",
    ):
        list(pipeline.execute(gcs_backend))

    # Shards cancelled after the failure may still be finishing; an abandoned upload could also be
    # published late, when its file object is garbage-collected on the worker: let both happen.
    wait_until_idle(gcs_backend)
    dask_client.run(gc.collect)

    written = _objects(gcs, out)
    failed = f"{out}/00002.jsonl.gz".removeprefix("gs://")
    assert failed not in written, f"the failed shard left an object: {gcs.cat(failed)!r}"
    for obj in written:
        shard = int(Path(obj).name.split(".")[0])
        assert obj == f"{out}/{shard:05d}.jsonl.gz".removeprefix("gs://"), obj
        assert list(load_jsonl("gs://" + obj)) == [enrich(r) for r in SHARDS[shard]], obj


def test_skip_existing_after_a_reshard_restores_an_object_deleted_elsewhere(
    gcs, gcs_backend, raw_shards, tmp_path
):
    """With a reshard, which input feeds a missing output is unknown, so a re-run recomputes
    everything upstream; when nothing is missing it reads no input at all."""
    out = f"gs://{BUCKET}/out-reshard"
    expected_paths = [f"{out}/{s:05d}.jsonl.gz" for s in range(2)]
    records = [enrich(r) for shard in SHARDS for r in shard]
    expected = [records[:9], records[9:]]  # 18 records in order, two contiguous shards

    def run(log: Path) -> list[str]:
        pipeline = (
            Dataset.from_files(f"{RAW}/*.jsonl.gz")
            .map(functools.partial(note_input, str(log)))
            .load_jsonl()
            .map(enrich)
            .reshard(2)
            .write_jsonl(out + "/{shard:05d}.jsonl.gz", skip_existing=True)
        )
        return list(pipeline.execute(gcs_backend))

    assert run(tmp_path / "first.log") == expected_paths
    assert _log_lines(tmp_path / "first.log", "open") == RAW_PATHS
    assert run(tmp_path / "complete.log") == expected_paths
    assert _log_lines(tmp_path / "complete.log", "open") == [], "every output existed"

    _delete_elsewhere(expected_paths[1])
    assert run(tmp_path / "rerun.log") == expected_paths
    assert _log_lines(tmp_path / "rerun.log", "open") == RAW_PATHS
    assert _read_back(gcs, expected_paths) == expected
    assert _objects(gcs, out) == [p.removeprefix("gs://") for p in expected_paths]


def widening_records(shard: int) -> list[dict]:
    """Shard 1 gains a field after 4,500 records: past zephyr's first conversion batch, so the
    Parquet writer widens its schema mid-file (its spill-and-rewrite path for object stores)."""
    return [
        {"id": i, "shard": shard, **({"late": f"v{i}"} if shard == 1 and i >= 4_500 else {})}
        for i in range(5_000)
    ]


def test_parquet_round_trip_on_gs_with_a_widened_schema(gcs, gcs_backend):
    from zephyr import load_parquet

    out = f"gs://{BUCKET}/parquet"
    pipeline = (
        Dataset.from_list([0, 1])
        .flat_map(widening_records)
        .write_parquet(out + "/{shard:05d}.parquet")
    )
    paths = list(pipeline.execute(gcs_backend))
    assert paths == [f"{out}/00000.parquet", f"{out}/00001.parquet"]
    gcs.invalidate_cache()
    assert list(load_parquet(paths[0])) == widening_records(0)
    assert list(load_parquet(paths[1])) == [
        {**r, "late": r.get("late")} for r in widening_records(1)
    ]
    assert _objects(gcs, out) == [p.removeprefix("gs://") for p in paths]
    ids = Dataset.from_files(out + "/*.parquet").load_parquet(columns=["id"]).map(lambda r: r["id"])
    assert sum(ids.execute(gcs_backend)) == 2 * sum(range(5_000))


def shard_of(doc: dict) -> int:
    return doc["shard"]


def ids_of(shard: int, docs) -> dict:
    return {"shard": shard, "ids": [d["id"] for d in docs]}


def test_a_shuffle_with_gs_scratch_runs_on_dask_workers_and_leaves_nothing(
    gcs, gcs_backend, raw_shards
):
    """The runs go to gs:// (what a cluster whose workers share no disk uses), written and read
    by the worker processes; the run's scratch objects are gone afterwards."""
    scratch = f"gs://{BUCKET}/scratch"
    pipeline = (
        Dataset.from_files(f"{RAW}/*.jsonl.gz")
        .load_jsonl()
        .group_by(shard_of, reducer=ids_of, sort_by=lambda d: d["id"], scratch=scratch)
    )
    got = sorted(pipeline.execute(gcs_backend), key=lambda g: g["shard"])
    assert got == [
        {"shard": s, "ids": sorted(d["id"] for d in docs)} for s, docs in enumerate(SHARDS)
    ]
    assert _objects(gcs, scratch) == []
