"""`load_file` picks a reader from the extension; `load_zip_members` streams archive members; the
binary writer; every reader and writer is public from `zephyr` itself.

Real files on local disk and memory://.
"""

from __future__ import annotations

import gzip
import json
import zipfile

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import zephyr
from zephyr import Dataset, SyncBackend, ZephyrError, load_file, load_zip_members

ROWS = [{"id": i, "text": f"t{i}"} for i in range(5)]


def jsonl_bytes(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_readers_are_exported_from_zephyr():
    from zephyr import load_file, load_jsonl, load_parquet, load_zip_members  # noqa: F401

    assert {"load_file", "load_jsonl", "load_parquet", "load_zip_members"} <= set(zephyr.__all__)


@pytest.mark.parametrize(
    "name", ["a.jsonl", "a.ndjson", "a.json.gz", "a.jsonl.gz", "a.jsonl.zst", "a.jsonl.zstd"]
)
def test_load_file_reads_json_lines_by_extension(tmp_path, name):
    data = jsonl_bytes(ROWS)
    if name.endswith(".gz"):
        data = gzip.compress(data)
    elif name.endswith((".zst", ".zstd")):
        data = zstandard.ZstdCompressor().compress(data)
    (tmp_path / name).write_bytes(data)
    assert list(load_file(str(tmp_path / name))) == ROWS


def test_load_file_reads_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    assert list(load_file(str(tmp_path / "a.parquet"))) == ROWS


def test_dataset_load_file_mixes_formats_in_one_pipeline(backend, tmp_path):
    (tmp_path / "0.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(ROWS[:2])))
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), tmp_path / "1.parquet")
    ds = Dataset.from_files(str(tmp_path / "*")).load_file().map(lambda r: r["id"])
    assert list(ds.execute(backend)) == [0, 1, 2, 3, 4]
    assert ds.compute_plan().stages[0].name == "load_file -> map"


def test_load_file_unknown_extension_lists_the_supported_ones(tmp_path):
    (tmp_path / "a.csv.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no reader for extension '.csv.gz'; supported: .jsonl, "):
        load_file(str(tmp_path / "a.csv.gz"))


def make_zip(path, members: dict) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("data/", "")  # a directory entry
        for name, content in members.items():
            z.writestr(name, content)


def test_load_zip_members_yields_matching_members_in_archive_order(tmp_path):
    members = {"data/b.json": b'{"b": 1}', "data/a.json": b'{"a": 2}', "README.txt": b"hello"}
    make_zip(tmp_path / "x.zip", members)
    assert list(load_zip_members(str(tmp_path / "x.zip"))) == [
        {"filename": n, "content": c} for n, c in members.items()
    ]
    assert [m["filename"] for m in load_zip_members(str(tmp_path / "x.zip"), "*.json")] == [
        "data/b.json",
        "data/a.json",
    ]


def test_dataset_load_zip_members_like_the_seed(tmp_path):
    """Seed: `Dataset.from_list(zips).flat_map(load_zip_members).flat_map(...).write_jsonl(...)`."""
    make_zip(tmp_path / "x.zip", {"q1.json": b'{"q": 1}', "q2.json": b'{"q": 2}', "n.txt": b"x"})
    make_zip(tmp_path / "y.zip", {"q3.json": b'{"q": 3}'})
    ds = (
        Dataset.from_list([str(tmp_path / "x.zip"), str(tmp_path / "y.zip")])
        .load_zip_members("*.json")
        .map(lambda m: {"file": m["filename"], **json.loads(m["content"])})
        .write_jsonl(str(tmp_path / "out" / "{shard}.jsonl"))
    )
    paths = list(ds.execute(SyncBackend()))
    assert [json.loads(line) for p in paths for line in open(p)] == [
        {"file": "q1.json", "q": 1},
        {"file": "q2.json", "q": 2},
        {"file": "q3.json", "q": 3},
    ]


def test_load_zip_members_reads_from_memory_filesystem():
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m.txt", b"payload")
    fsspec.filesystem("memory").pipe("/zip-test/a.zip", buf.getvalue())
    assert list(load_zip_members("memory://zip-test/a.zip")) == [
        {"filename": "m.txt", "content": b"payload"}
    ]


def test_not_a_zip_archive_names_the_file(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"this is not a zip archive at all")
    with pytest.raises(ValueError, match=r"bad.zip: not a readable zip archive"):
        list(load_zip_members(str(tmp_path / "bad.zip")))


@pytest.mark.parametrize("ext", [".bin", ".bin.gz", ".bin.zst"])
def test_write_binary_concatenates_bytes_records(backend, tmp_path, ext):
    ds = Dataset.from_list([[b"ab", b"cd"], [bytearray(b"ef")]]).flat_map(lambda r: r)
    paths = list(ds.write_binary(str(tmp_path / f"{{shard}}{ext}")).execute(backend))
    raw = [open(p, "rb").read() for p in paths]
    if ext == ".bin.gz":
        raw = [gzip.decompress(r) for r in raw]
    elif ext == ".bin.zst":
        raw = [zstandard.ZstdDecompressor().decompressobj().decompress(r) for r in raw]
    assert raw == [b"abcd", b"ef"]


def test_write_binary_refuses_text_records(tmp_path):
    ds = Dataset.from_list(["text"]).write_binary(str(tmp_path / "x.bin"))
    with pytest.raises(ZephyrError, match=r"write_binary takes bytes records; record 0 is str"):
        list(ds.execute(SyncBackend()))
    assert list(tmp_path.iterdir()) == []


def test_skip_existing_must_be_a_bool():
    with pytest.raises(TypeError, match="skip_existing takes True or False, got 'yes'"):
        Dataset.from_list([1]).write_jsonl("x.jsonl", skip_existing="yes")
