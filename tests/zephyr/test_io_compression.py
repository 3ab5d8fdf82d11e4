"""Line splitting over decompressed chunks (`iter_lines`): lines crossing many chunks come out whole
and unchanged, and a long line costs time linear in its length.

Real files in tmp_path; the chunk size is made tiny so that short data crosses many chunks.
"""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

import zephyr.io.compression as compression
from zephyr import load_jsonl
from zephyr.io.compression import iter_lines

# Lines of 0 to 500 bytes (empty ones, \r endings, a missing final newline) against 1- to 64-byte
# chunks: every way a line can start, span and end across chunk boundaries.
DATA = b"\n".join(
    [b"", b"a", b"x" * 500, b"", b"", b"tail\r", b"y" * 63, b"z" * 64, b"w" * 65, b"\r", b"end"]
)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize("ext", ["", ".gz", ".zst"])
@pytest.mark.parametrize("final_newline", [False, True], ids=["no-final-newline", "final-newline"])
def test_lines_crossing_many_chunks_come_out_whole(
    tmp_path, monkeypatch, chunk, ext, final_newline
):
    monkeypatch.setattr(compression, "CHUNK_BYTES", chunk)
    data = DATA + b"\n" if final_newline else DATA
    packed = {"": data, ".gz": gzip.compress(data), ".zst": zstandard.compress(data)}[ext]
    path = tmp_path / f"in.txt{ext}"
    path.write_bytes(packed)

    lines = list(iter_lines(str(path)))
    expected = data.split(b"\n")
    if final_newline:
        expected.pop()  # the empty string after the final newline is not a line
    assert lines == expected
    assert all(type(line) is bytes for line in lines)


def test_a_file_without_newlines_is_one_line_and_an_empty_file_none(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "CHUNK_BYTES", 3)
    (tmp_path / "one").write_bytes(b"0123456789")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "newline").write_bytes(b"\n")
    assert list(iter_lines(str(tmp_path / "one"))) == [b"0123456789"]
    assert list(iter_lines(str(tmp_path / "empty"))) == []
    assert list(iter_lines(str(tmp_path / "newline"))) == [b""]


@pytest.mark.timeout(20)
def test_a_32_mb_line_in_4_kib_chunks_reads_in_linear_time(tmp_path, monkeypatch):
    # 8192 chunks: re-joining the growing line with every chunk copies ~140 GB (minutes, so the
    # timeout fails it); linear reading copies the line about twice (well under a second).
    monkeypatch.setattr(compression, "CHUNK_BYTES", 4096)
    text = "0123456789abcdef" * (2 << 20)
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": 1, "text": text}) + "\n" + json.dumps({"id": 2}) + "\n")

    records = list(load_jsonl(str(path)))
    assert [r["id"] for r in records] == [1, 2]
    assert records[0]["text"] == text
