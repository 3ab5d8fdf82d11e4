"""JSON Lines in and out: compression by extension, blank and malformed lines, output templates,
writers yielding paths, atomic commits on local disk and memory://.

Files are real (tmp_path, or the process-local memory:// filesystem with in-process backends).
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import uuid
from pathlib import Path

import fsspec
import pytest
import zstandard

from zephyr import Dataset, SyncBackend, ThreadBackend, ZephyrError, load_jsonl

dask = pytest.mark.dask

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

RECORDS = [
    {"id": i, "text": f"doc {i} " + "é世" * (i % 3), "tags": ["a", "b"][: i % 3], "score": i / 4}
    for i in range(25)
]


# -- user functions (module level so Dask workers can import them) ---------------------------------
def add_length(doc):
    return {**doc, "len": len(doc["text"])}


def raise_at_700(x):
    if x == 700:
        raise RuntimeError("disk quota exceeded in user code")
    return {"x": x}


def expand(spec):
    return range(*spec)


# -- helpers ---------------------------------------------------------------------------------------
def dump_lines(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def write_input(path: Path, records, compression: str | None = None) -> Path:
    data = dump_lines(records)
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def decompress(path: str) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == GZIP_MAGIC:
        return gzip.decompress(raw)
    if raw[:4] == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return raw


def parse_lines(data: bytes) -> list:
    # split on "\n" only: str.splitlines would also split inside strings holding U+2028
    return [json.loads(line) for line in data.decode().split("\n") if line]


def run(backend, ds) -> list:
    return list(backend.execute(ds))


@pytest.fixture
def memory_root():
    """A fresh folder on the process-wide memory:// filesystem, removed afterwards."""
    name = f"zephyr-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


# -- round trips -----------------------------------------------------------------------------------
@dask
@pytest.mark.parametrize(
    "ext, magic",
    [(".jsonl", None), (".jsonl.gz", GZIP_MAGIC), (".jsonl.zst", ZSTD_MAGIC)],
    ids=["plain", "gzip", "zstd"],
)
def test_round_trip_through_a_pipeline(backend, tmp_path, ext, magic):
    write_input(tmp_path / "in" / "a.jsonl", RECORDS[:10])
    write_input(tmp_path / "in" / "b.jsonl", RECORDS[10:])
    out_dir = tmp_path / "out"
    pipeline = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .flat_map(load_jsonl)
        .map(add_length)
        .write_jsonl(f"{out_dir}/{{shard:05d}}{ext}")
    )
    written = run(backend, pipeline)

    assert written == [f"{out_dir}/00000{ext}", f"{out_dir}/00001{ext}"]
    expected = [add_length(r) for r in RECORDS]
    for path in written:
        head = Path(path).read_bytes()[:4]
        if magic is None:
            assert head[:1] == b"{"  # plain text, not compressed
        else:
            assert head.startswith(magic)
    # read back with the stdlib / zstandard, independent of zephyr
    assert parse_lines(decompress(written[0])) == expected[:10]
    assert parse_lines(decompress(written[1])) == expected[10:]
    # and with zephyr's reader, through a pipeline
    back = run(backend, Dataset.from_files(f"{out_dir}/*{ext}").load_jsonl())
    assert back == expected
    assert sorted(os.listdir(out_dir)) == [Path(p).name for p in written]  # no temp files left


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_load_jsonl_reads_compressed_inputs_made_by_other_tools(tmp_path, compression):
    ext = {"gzip": ".jsonl.gz", "zstd": ".jsonl.zst"}[compression]
    path = write_input(tmp_path / f"in{ext}", RECORDS, compression)
    assert list(load_jsonl(str(path))) == RECORDS


def test_load_jsonl_reads_multi_frame_zstd_and_xz(tmp_path):
    cctx = zstandard.ZstdCompressor()
    frames = cctx.compress(dump_lines(RECORDS[:5])) + cctx.compress(dump_lines(RECORDS[5:]))
    (tmp_path / "multi.jsonl.zstd").write_bytes(frames)
    assert list(load_jsonl(str(tmp_path / "multi.jsonl.zstd"))) == RECORDS

    (tmp_path / "in.jsonl.xz").write_bytes(lzma.compress(dump_lines(RECORDS)))
    assert list(load_jsonl(str(tmp_path / "in.jsonl.xz"))) == RECORDS


def test_load_jsonl_streams_large_files_across_read_chunks(tmp_path):
    big = [{"i": i, "pad": "x" * 300} for i in range(5000)]  # > 1 MiB: lines cross read chunks
    path = write_input(tmp_path / "big.jsonl.gz", big, "gzip")
    assert list(load_jsonl(str(path))) == big


def test_values_round_trip_exactly(tmp_path):
    records = [
        {"text": 'héllo 世界 \u2028 "quoted" \\ back', "nested": {"a": [1, None, True, 2.5]}},
        {"u64": 2**64 - 1, "i64": -(2**63), "zero": 0, "neg": -1.25e-7},
        {},
    ]
    [path] = run(
        SyncBackend(),
        Dataset.from_list([0]).flat_map(lambda _: records).write_jsonl(f"{tmp_path}/o.jsonl.zst"),
    )
    assert list(load_jsonl(path)) == records
    assert parse_lines(decompress(path)) == records


def test_integers_beyond_64_bits_round_trip_exactly(tmp_path):
    # The writer encodes them exactly (stdlib fallback); the reader must not turn them into floats.
    records = [{"id": 2**64 + 1}, {"id": -(2**63) - 1}, {"id": 10**30}]
    [path] = run(
        SyncBackend(),
        Dataset.from_list([0]).flat_map(lambda _: records).write_jsonl(f"{tmp_path}/o.jsonl"),
    )
    assert parse_lines(decompress(path)) == records  # the file itself is exact
    back = list(load_jsonl(path))
    assert back == records
    assert all(type(r["id"]) is int for r in back)


# -- blank and malformed lines ---------------------------------------------------------------------
def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "blanks.jsonl"
    path.write_bytes(b'\n{"a": 1}\n\n   \n\t\n{"a": 2}\r\n\r\n{"a": 3}')  # no final newline
    assert list(load_jsonl(str(path))) == [{"a": 1}, {"a": 2}, {"a": 3}]

    gz = tmp_path / "blanks.jsonl.gz"
    gz.write_bytes(gzip.compress(b'\n\n{"a": 1}\n\n'))
    assert list(load_jsonl(str(gz))) == [{"a": 1}]

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert list(load_jsonl(str(empty))) == []


def test_malformed_line_names_the_file_and_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": oops}\n{"a": 4}\n')
    reader = load_jsonl(str(path))
    assert next(reader) == {"a": 1}
    assert next(reader) == {"a": 2}
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 4: invalid JSON") as info:
        next(reader)
    assert str(path) in str(info.value)


def test_malformed_compressed_line_in_a_pipeline(tmp_path):
    path = tmp_path / "in" / "part-3.jsonl.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 1,}\n'))
    ds = Dataset.from_files(str(tmp_path / "in"), "*.jsonl.gz").load_jsonl()

    with pytest.raises(ZephyrError, match=r"stage 'load_jsonl' shard 0") as info:
        run(SyncBackend(), ds)
    assert f"{path}: line 2: invalid JSON" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    assert "line 2" in str(info.value.__cause__)


# -- output path templates -------------------------------------------------------------------------
def test_shard_and_total_fields(tmp_path):
    ds = Dataset.from_list([(0, 2), (2, 3), (3, 3)]).flat_map(expand).map(lambda x: {"x": x})

    plain = run(SyncBackend(), ds.write_jsonl(f"{tmp_path}/a/{{shard}}-of-{{total}}.jsonl"))
    assert plain == [f"{tmp_path}/a/{i}-of-3.jsonl" for i in range(3)]

    padded = run(SyncBackend(), ds.write_jsonl(f"{tmp_path}/b/part-{{shard:05d}}.jsonl"))
    assert padded == [f"{tmp_path}/b/part-{i:05d}.jsonl" for i in range(3)]

    contents = [parse_lines(Path(p).read_bytes()) for p in padded]
    assert contents == [[{"x": 0}, {"x": 1}], [{"x": 2}], []]  # an empty shard writes an empty file


def test_total_after_reshard_is_the_new_shard_count(tmp_path):
    ds = Dataset.from_list(range(10)).map(lambda x: {"x": x}).reshard(4)
    written = run(SyncBackend(), ds.write_jsonl(f"{tmp_path}/{{shard:03d}}-of-{{total:03d}}.jsonl"))
    assert [Path(p).name for p in written] == [f"{i:03d}-of-004.jsonl" for i in range(4)]
    assert [r for p in written for r in load_jsonl(p)] == [{"x": x} for x in range(10)]


@dask
def test_basename_field_strips_data_and_compression_extensions(backend, tmp_path):
    write_input(tmp_path / "raw" / "part-0001.jsonl.gz", RECORDS[:3], "gzip")
    write_input(tmp_path / "raw" / "part-0002.jsonl.gz", RECORDS[3:5], "gzip")
    ds = Dataset.from_files(str(tmp_path / "raw"), "*.jsonl.gz").load_jsonl()

    written = run(backend, ds.write_jsonl(f"{tmp_path}/clean/{{basename}}.jsonl.zst"))
    assert written == [
        f"{tmp_path}/clean/part-0001.jsonl.zst",
        f"{tmp_path}/clean/part-0002.jsonl.zst",
    ]
    assert list(load_jsonl(written[0])) == RECORDS[:3]
    assert list(load_jsonl(written[1])) == RECORDS[3:5]
    assert Path(written[0]).read_bytes().startswith(ZSTD_MAGIC)


@dask
def test_callable_pattern(backend, tmp_path):
    out = str(tmp_path / "cb")

    def name(shard_idx, total):
        return f"{out}/shard={shard_idx}/total={total}/data.jsonl.gz"

    ds = Dataset.from_list([(0, 3), (3, 5)]).flat_map(expand).map(lambda x: {"x": x})
    written = run(backend, ds.write_jsonl(name))
    assert written == [name(0, 2), name(1, 2)]
    assert [r["x"] for r in load_jsonl(written[0])] == [0, 1, 2]
    assert [r["x"] for r in load_jsonl(written[1])] == [3, 4]
    assert Path(written[1]).read_bytes().startswith(GZIP_MAGIC)


@dask
def test_a_pipeline_ending_in_a_writer_yields_the_paths_not_the_records(backend, tmp_path):
    ds = Dataset.from_list([(0, 100), (100, 150)]).flat_map(expand).map(lambda x: {"x": x})
    written = run(backend, ds.write_jsonl(f"{tmp_path}/{{shard}}.jsonl"))

    assert written == [f"{tmp_path}/0.jsonl", f"{tmp_path}/1.jsonl"]
    assert [len(parse_lines(Path(p).read_bytes())) for p in written] == [100, 50]
    # ops after a writer see the paths
    sizes = run(backend, ds.write_jsonl(f"{tmp_path}/{{shard}}.jsonl").map(os.path.getsize))
    assert sizes == [os.path.getsize(p) for p in written]


def test_single_shard_writes_a_fixed_path_and_replaces_an_old_file(tmp_path):
    target = tmp_path / "all.jsonl"
    target.write_text('{"old": true}\n' * 50)
    ds = Dataset.from_list(range(3)).map(lambda x: {"x": x}).reshard(1).write_jsonl(str(target))
    assert run(SyncBackend(), ds) == [str(target)]
    assert parse_lines(target.read_bytes()) == [{"x": 0}, {"x": 1}, {"x": 2}]


# -- atomic writes ---------------------------------------------------------------------------------
@dask
def test_failed_shard_leaves_no_file_and_no_temp_file(backend, tmp_path):
    out_dir = tmp_path / "out"
    # shard 1 fails after more than one write batch has been flushed
    ds = Dataset.from_list([(0, 10), (10, 1000), (1000, 1010)]).flat_map(expand).map(raise_at_700)
    with pytest.raises(ZephyrError, match=r"shard 1 .*disk quota exceeded") as info:
        run(backend, ds.write_jsonl(f"{out_dir}/{{shard:05d}}.jsonl"))
    assert isinstance(info.value.__cause__, RuntimeError)

    names = os.listdir(out_dir) if out_dir.exists() else []
    assert "00001.jsonl" not in names
    assert not [n for n in names if "00001" in n], f"leftover files for the failed shard: {names}"
    complete = {"00000.jsonl": range(0, 10), "00002.jsonl": range(1000, 1010)}
    for name in names:
        if name in complete:  # other shards' files, when present, are complete
            assert parse_lines((out_dir / name).read_bytes()) == [{"x": x} for x in complete[name]]
    if isinstance(
        backend, SyncBackend
    ):  # in-order reference runner: shard 0 ran, shard 2 never did
        assert names == ["00000.jsonl"]


def test_failed_shard_keeps_an_existing_file_intact(tmp_path):
    target = tmp_path / "00000.jsonl.gz"
    old = gzip.compress(b'{"old": 1}\n')
    target.write_bytes(old)
    ds = Dataset.from_list([(690, 710)]).flat_map(expand).map(raise_at_700)
    with pytest.raises(ZephyrError):
        run(SyncBackend(), ds.write_jsonl(f"{tmp_path}/{{shard:05d}}.jsonl.gz"))
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["00000.jsonl.gz"]


# -- memory:// -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_write_into_memory_filesystem(memory_root, ext):
    ds = Dataset.from_list([(0, 3), (3, 7)]).flat_map(expand).map(lambda x: {"x": x})
    with ThreadBackend(max_parallelism=2) as threads:
        written = run(threads, ds.write_jsonl(f"{memory_root}/out/{{shard:05d}}{ext}"))

    assert [p.rsplit("/", 1)[-1] for p in written] == [f"00000{ext}", f"00001{ext}"]
    assert all(p.startswith("memory://") for p in written)
    assert [r["x"] for p in written for r in load_jsonl(p)] == list(range(7))
    with fsspec.open(written[0], "rb", compression="infer") as f:
        assert parse_lines(f.read()) == [{"x": 0}, {"x": 1}, {"x": 2}]
    back = run(SyncBackend(), Dataset.from_files(f"{memory_root}/out", f"*{ext}").load_jsonl())
    assert [r["x"] for r in back] == list(range(7))


def test_failed_shard_leaves_no_file_in_memory_filesystem(memory_root):
    ds = Dataset.from_list([(0, 10), (10, 1000)]).flat_map(expand).map(raise_at_700)
    with pytest.raises(ZephyrError, match="shard 1"):
        run(SyncBackend(), ds.write_jsonl(f"{memory_root}/out/{{shard:05d}}.jsonl"))

    fs = fsspec.filesystem("memory")
    assert fs.exists(f"{memory_root}/out/00000.jsonl")
    failed = f"{memory_root}/out/00001.jsonl"
    leftover = fs.cat(failed) if fs.exists(failed) else None
    assert leftover is None, f"a failed shard left {len(leftover)} bytes at its final path"
