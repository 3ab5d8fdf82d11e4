"""Bad input fails with a clear error and leaves nothing half-written: after each failure, the
output folder holds only complete files from shards that succeeded (no temporaries, nothing for the
bad shard).

Each case runs a 4-shard pipeline whose shard 2 is bad, on the reference runner, threads and Dask.
Real files on local disk; the permission case drops root privileges in a forked child.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.zephyr.probes import wait_until_idle
from zephyr import Dataset, SyncBackend, ZephyrError, load_jsonl

PER_SHARD = 50


def rows(shard: int) -> list[dict]:
    return [{"shard": shard, "i": i, "text": "x" * 50} for i in range(PER_SHARD)]


def jsonl(shard: int) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows(shard))


def tag(doc):
    return {**doc, "ok": True}


def make_inputs(folder: Path, ext: str, bad: bytes | None) -> list[str]:
    """Shards 0-3 as `ext` files; shard 2's bytes replaced by `bad` (or the file left out when
    `bad` is None)."""
    folder.mkdir()
    paths = []
    for s in range(4):
        path = folder / f"part-{s}{ext}"
        if ext.endswith(".gz"):
            data = gzip.compress(jsonl(s))
        elif ext.endswith(".zst"):
            data = zstandard.ZstdCompressor().compress(jsonl(s))
        elif ext.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(rows(s)), path)
            data = path.read_bytes()
        else:
            data = jsonl(s)
        if s == 2:
            data = bad(data) if callable(bad) else bad
        if data is not None:
            path.write_bytes(data)
        paths.append(str(path))
    return paths


def run_and_check(backend, tmp_path: Path, paths: list[str], loader: str, match: str) -> None:
    out = tmp_path / "out"
    ds = getattr(Dataset.from_list(paths), loader)().map(tag)
    ds = ds.write_jsonl(str(out / "{shard:05d}.jsonl.gz"))
    with pytest.raises(ZephyrError, match=match) as info:
        list(ds.execute(backend))
    assert "shard 2" in str(info.value)
    wait_until_idle(backend)
    assert_only_complete_outputs(out, bad_shard=2)
    if isinstance(backend, SyncBackend):  # in order: the shards before the bad one committed
        assert sorted(os.listdir(out)) == ["00000.jsonl.gz", "00001.jsonl.gz"]


def assert_only_complete_outputs(out: Path, bad_shard: int) -> None:
    names = sorted(os.listdir(out)) if out.exists() else []
    assert not [n for n in names if n.startswith(".")], f"temporaries left: {names}"
    assert f"{bad_shard:05d}.jsonl.gz" not in names
    for name in names:
        shard = int(name.split(".")[0])
        with gzip.open(out / name, "rt") as f:
            got = [json.loads(line) for line in f]
        assert got == [{**r, "ok": True} for r in rows(shard)], f"{name} is not whole"


def test_malformed_json_line_names_the_file_and_line(backend, tmp_path):
    bad = jsonl(2).replace(b'"i": 7,', b'"i": 7', 1)  # line 8 loses a comma
    paths = make_inputs(tmp_path / "in", ".jsonl", bad)
    run_and_check(backend, tmp_path, paths, "load_jsonl", r"part-2.jsonl: line 8: invalid JSON")


@pytest.mark.parametrize("ext", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_compressed_input_names_the_file(backend, tmp_path, ext):
    paths = make_inputs(tmp_path / "in", ext, lambda data: data[: len(data) // 2])
    kind = "gzip" if ext.endswith(".gz") else "zstd"
    run_and_check(
        backend, tmp_path, paths, "load_jsonl", rf"part-2{ext}: truncated or corrupt {kind} data"
    )


def test_truncated_zstd_is_not_silently_short(tmp_path):
    """python-zstandard's stream reader returns the partial data of a cut-off frame without error;
    zephyr must not turn that into a silently shorter shard."""
    from zephyr import load_jsonl

    data = zstandard.ZstdCompressor().compress(jsonl(0) * 200)
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="cut.jsonl.zst: truncated or corrupt zstd data"):
        sum(1 for _ in load_jsonl(str(tmp_path / "cut.jsonl.zst")))


def test_missing_file_names_the_path(backend, tmp_path):
    paths = make_inputs(tmp_path / "in", ".jsonl", None)
    run_and_check(backend, tmp_path, paths, "load_jsonl", r"FileNotFoundError: .*part-2.jsonl")


def test_unsupported_extension_lists_the_supported_ones(backend, tmp_path):
    paths = make_inputs(tmp_path / "in", ".jsonl", jsonl(2))
    os.rename(paths[2], paths[2] + ".csv")
    paths[2] += ".csv"
    run_and_check(
        backend,
        tmp_path,
        paths,
        "load_file",
        r"part-2.jsonl.csv: load_file has no reader for extension '.jsonl.csv'; supported: "
        r".jsonl, .ndjson, .json",
    )


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"PAR1 not really parquet", id="garbage"),
        pytest.param(lambda data: data[:-12], id="footer-cut"),
    ],
)
def test_parquet_with_an_unreadable_schema_names_the_file(backend, tmp_path, damage):
    paths = make_inputs(tmp_path / "in", ".parquet", damage)
    run_and_check(
        backend, tmp_path, paths, "load_parquet", r"part-2.parquet: not a readable Parquet file"
    )


def test_write_without_permission_fails_clearly_and_writes_nothing():
    """The output folder is not writable by the process (its inputs are readable). As root, which
    ignores permission bits, the pipeline runs in a forked child that first drops to `nobody`."""
    base = Path(tempfile.mkdtemp(prefix="zephyr-perm-"))
    try:
        base.chmod(0o755)
        out = base / "locked"
        out.mkdir()
        paths = make_inputs(base / "in", ".jsonl", jsonl(2))
        ds = Dataset.from_list(paths).load_jsonl().write_jsonl(str(out / "sub" / "{shard}.jsonl"))

        # Import everything the run needs while this process may still read the Python install.
        warm = (
            Dataset.from_list(paths).load_jsonl().write_jsonl(str(base / "warm" / "{shard}.jsonl"))
        )
        list(warm.execute(SyncBackend()))

        def run():
            from zephyr import load_jsonl

            assert len(list(load_jsonl(paths[0]))) == PER_SHARD  # reading is allowed
            list(ds.execute(SyncBackend()))

        message = _run_unprivileged(out, run)
        assert message.startswith("ZephyrError"), message
        assert "cannot write output" in message and "permission denied" in message
        assert str(out / "sub" / "0.jsonl") in message
        assert os.listdir(out) == []
    finally:
        shutil.rmtree(base)


def _run_unprivileged(locked: Path, fn) -> str:
    """Run `fn` where `locked` is not writable; return 'ExceptionType: message' of what it raised
    (or 'no error')."""
    if os.geteuid() != 0:
        locked.chmod(0o555)
        try:
            fn()
            return "no error"
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        finally:
            locked.chmod(0o755)
    locked.chmod(0o755)  # owned by root: `nobody` may read but not write
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: everything it needs is imported already
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                fn()
                result = "no error"
            except Exception as e:
                result = f"{type(e).__name__}: {e}"
            os.write(write_end, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def text_of(doc):
    return doc["text"].upper()


def read_all(paths):
    for p in paths:
        yield from load_jsonl(p)


@pytest.mark.parametrize("value", [b"[1]", b"5", b'"x"'], ids=["list", "number", "string"])
@pytest.mark.parametrize("shape", ["from_files", "flat_map", "several_files_per_shard"])
def test_a_line_that_is_not_an_object_fails_later_naming_the_file_and_line(
    backend, tmp_path, value, shape
):
    """Any JSON value is a record, but when a later op fails on it the error says where it was
    read, even when the file is not the shard's input."""
    folder = tmp_path / "in"
    folder.mkdir()
    other = folder / "a.jsonl"
    other.write_bytes(b'{"text": "fine"}\n')
    path = folder / "b.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n' + value + b'\n{"text": "c"}\n')
    if shape == "from_files":
        ds = Dataset.from_files(str(folder), "*.jsonl").load_jsonl()
    elif shape == "flat_map":
        ds = Dataset.from_list([str(other), str(path)]).flat_map(load_jsonl)
    else:
        ds = Dataset.from_list([[str(other), str(path)]]).flat_map(read_all)
    with pytest.raises(ZephyrError) as info:
        list(ds.filter(lambda doc: True).map(text_of).execute(backend))
    message = str(info.value)
    assert "map(text_of) raised TypeError" in message
    assert f"record: {json.loads(value)!r} (read from {path} line 3)" in message
