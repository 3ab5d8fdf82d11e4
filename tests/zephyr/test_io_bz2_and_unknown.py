"""Compression by extension beyond gzip/zstd/xz: `.bz2` outputs are bz2 (the stdlib's) and read
back; extensions of compressions we cannot write or read (`.lz4`, `.br`, ...) are refused, outputs
before any work runs.

Real files in tmp_path, SyncBackend (the semantics are the backend's, not Dask's).
"""

from __future__ import annotations

import bz2

import pytest

from zephyr import Dataset, SyncBackend, ZephyrError, load_jsonl

RECORDS = [{"id": i, "text": "word " * i} for i in range(50)]


def test_a_bz2_output_is_bz2_and_reads_back(tmp_path):
    pattern = str(tmp_path / "out" / "{shard:05d}.jsonl.bz2")
    paths = list(Dataset.from_list([RECORDS]).flat_map(lambda rs: rs).write_jsonl(pattern)
                 .execute(SyncBackend()))  # fmt: skip
    assert paths == [str(tmp_path / "out" / "00000.jsonl.bz2")]
    raw = open(paths[0], "rb").read()
    assert raw.startswith(b"BZh")  # a bz2 stream, not plain JSON under a .bz2 name
    assert bz2.decompress(raw).count(b"\n") == len(RECORDS)
    back = list(Dataset.from_files(str(tmp_path / "out"), "*.bz2").load_jsonl()
                .execute(SyncBackend()))  # fmt: skip
    assert back == RECORDS


def test_a_truncated_bz2_input_names_the_file(tmp_path):
    path = tmp_path / "cut.jsonl.bz2"
    data = b"".join(b'{"a": %d}\n' % (i * 7919 % 100_003) for i in range(10_000))
    packed = bz2.compress(data)
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.bz2: truncated or corrupt bz2 data"):
        list(load_jsonl(str(path)))


def test_corrupt_bz2_data_names_the_file(tmp_path):
    path = tmp_path / "bad.jsonl.bz2"
    path.write_bytes(b"BZh9" + b"\x00" * 100)
    with pytest.raises(ValueError, match=r"bad\.jsonl\.bz2: truncated or corrupt bz2 data"):
        list(load_jsonl(str(path)))


@pytest.mark.parametrize("ext", [".lz4", ".br", ".snappy", ".zip"])
def test_an_output_with_an_unknown_compression_is_refused_before_any_work(tmp_path, ext):
    calls = []
    ds = Dataset.from_list([1, 2]).map(lambda x: calls.append(x) or {"x": x})
    with pytest.raises(ValueError, match=rf"'\{ext}' compression is not supported; name the file"):
        ds.write_jsonl(str(tmp_path / f"{{shard:05d}}.jsonl{ext}")).execute(SyncBackend())
    assert calls == []
    assert list(tmp_path.iterdir()) == []


def test_a_callable_output_path_with_an_unknown_compression_fails_without_a_file(tmp_path):
    ds = Dataset.from_list([1]).map(lambda x: {"x": x})
    out = ds.write_jsonl(lambda shard, total: str(tmp_path / f"{shard}.jsonl.lz4"))
    with pytest.raises(ZephyrError, match=r"'\.lz4' compression is not supported"):
        list(out.execute(SyncBackend()))
    assert list(tmp_path.iterdir()) == []


def test_a_parquet_output_with_a_compression_extension_is_refused(tmp_path):
    ds = Dataset.from_list([1]).map(lambda x: {"x": x})
    with pytest.raises(ValueError, match=r"Parquet files are compressed inside"):
        ds.write_parquet(str(tmp_path / "{shard}.parquet.gz")).execute(SyncBackend())


def test_reading_an_unknown_compression_is_refused_not_parsed_as_text(tmp_path):
    path = tmp_path / "data.jsonl.lz4"
    path.write_bytes(b'{"a": 1}\n')
    with pytest.raises(ValueError, match=r"data\.jsonl\.lz4: '\.lz4' compression is not supported"):
        list(load_jsonl(str(path)))
