"""Compression chosen from a file's extension: streaming decompression of inputs and compressing
output streams.

Reading never trusts a stream to end cleanly: a gzip, zstd, xz or bz2 file cut short raises
ValueError naming the file (python-zstandard's stream reader would silently return partial data).
gzip goes through ISA-L (python-isal) when installed: about 3x faster than zlib both ways, and its
level 1 compresses as well as zlib's. Default write levels favour throughput: gzip 1, zstd 3, xz
preset 1, bz2 9 (bz2's levels differ little in speed). A path whose extension names a compression we
do not handle (.lz4, .br, .snappy, ...) raises ValueError rather than being read or written as plain
bytes under a misleading name.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import fsspec

from zephyr.paths import compression_of

try:  # a core dependency; the stdlib's gzip and zlib (the same API) are the fallback without it
    from isal import igzip, isal_zlib
except ImportError:  # pragma: no cover - exercised only without isal
    igzip, isal_zlib = gzip, zlib

GZIP_LEVEL = 1
ZSTD_LEVEL = 3
XZ_PRESET = 1
BZ2_LEVEL = 9
CHUNK_BYTES = 1 << 20


def _zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompress concatenated zstd frames; raise EOFError if the input ends inside a frame."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj = dctx.decompressobj()
    in_frame = False
    while data := raw.read(CHUNK_BYTES):
        while data:
            in_frame = True
            out = obj.decompress(data)
            if out:
                yield out
            if not obj.eof:
                break
            in_frame = False
            data = obj.unused_data
            obj = dctx.decompressobj()
    if in_frame:
        raise EOFError("zstd stream ended in the middle of a frame")


def _stream_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_BYTES):
        yield chunk


def _decompressed_chunks(raw: BinaryIO, kind: str | None) -> Iterator[bytes]:
    if kind == "gzip":
        with igzip.GzipFile(fileobj=raw, mode="rb") as f:
            yield from _stream_chunks(f)
    elif kind == "zstd":
        yield from _zstd_chunks(raw)
    elif kind == "xz":
        with lzma.open(raw, "rb") as f:
            yield from _stream_chunks(f)
    elif kind == "bz2":
        with bz2.BZ2File(raw, "rb") as f:
            try:
                yield from _stream_chunks(f)
            except OSError as e:  # bz2 reports bad data as OSError("Invalid data stream")
                if "Invalid data stream" not in str(e):
                    raise
                raise EOFError(str(e)) from None
    else:
        yield from _stream_chunks(raw)


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (
        EOFError,
        gzip.BadGzipFile,
        zlib.error,
        isal_zlib.error,
        lzma.LZMAError,
        zstandard.ZstdError,
    )


def iter_chunks(path: str) -> Iterator[bytes]:
    """The decompressed contents of `path` (local, memory://, gs://, ...) in chunks of about 1 MiB.

    A truncated or corrupt compressed file raises ValueError naming the file; a missing file raises
    FileNotFoundError.
    """
    kind = compression_of(path)
    with fsspec.open(path, "rb") as raw:
        try:
            yield from _decompressed_chunks(raw, kind)
        except _corrupt_errors() as e:
            raise ValueError(
                f"{path}: truncated or corrupt {kind or 'compressed'} data ({e}); the file was "
                "probably cut short while being written or copied: re-create it"
            ) from None


def iter_lines(path: str) -> Iterator[bytes]:
    """The lines of a (possibly compressed) file, split on b"\\n" only and without it, read in
    chunks of CHUNK_BYTES; the last line is yielded even without a final newline.

    Time is linear in the file's size whatever its line lengths; memory is about one chunk plus the
    longest line.
    """
    # A line crossing chunks is carried in a BytesIO that grows in place (its getvalue() hands
    # the buffer over without a copy): re-joining a growing prefix with every chunk would copy a
    # line of N bytes N / CHUNK_BYTES times, and a list of pieces joined at the end would hold
    # the line twice.
    carry = io.BytesIO()
    for chunk in iter_chunks(path):
        lines = chunk.split(b"\n")
        if len(lines) == 1:  # no line ends in this chunk
            carry.write(chunk)
            continue
        if carry.tell():
            carry.write(lines[0])
            lines[0] = carry.getvalue()
            carry = io.BytesIO()
        carry.write(lines.pop())
        yield from lines
    tail = carry.getvalue()
    if tail:
        yield tail


@contextlib.contextmanager
def compressing(raw: BinaryIO, path: str) -> Iterator[BinaryIO]:
    """A stream that compresses into `raw` as `path`'s extension says (or `raw` itself)."""
    kind = compression_of(path)
    if kind == "gzip":
        with igzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as f:
            yield f
    elif kind == "zstd":
        import zstandard

        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False) as f:
            yield f
    elif kind == "xz":
        with lzma.open(raw, "wb", preset=XZ_PRESET) as f:
            yield f
    elif kind == "bz2":
        with bz2.BZ2File(raw, "wb", compresslevel=BZ2_LEVEL) as f:
            yield f
    else:
        yield raw
