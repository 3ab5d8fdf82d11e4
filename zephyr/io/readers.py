"""Readers chosen by file extension (`load_file`) and zip archive members (`load_zip_members`).

Every reader streams and reads through fsspec (local, memory://, gs://, s3://).
"""

from __future__ import annotations

import fnmatch
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

from zephyr.io.jsonl import load_jsonl
from zephyr.io.provenance import check_on_error, current_position
from zephyr.paths import COMPRESSED_EXTENSIONS, compression_of

# Dolma and friends name JSON Lines files `.json.gz`, so `.json` means JSON Lines here.
_JSON_LINES = (".jsonl", ".ndjson", ".json")


def supported_extensions() -> str:
    """The extensions `load_file` reads, as text for error messages."""
    return (
        f"{', '.join(_JSON_LINES)} (each optionally + {', '.join(COMPRESSED_EXTENSIONS)}), .parquet"
    )


def _reader_for(path: str) -> Callable[[str], Iterator[Any]]:
    name = str(path).rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet"):
        from zephyr.io.parquet import load_parquet  # pyarrow loads only when Parquet is read

        return load_parquet
    base = name[: name.rfind(".")] if compression_of(name) else name
    if base.endswith(_JSON_LINES):
        return load_jsonl
    shown = name[name.find(".") :] if "." in name else "(none)"
    raise ValueError(
        f"{path}: load_file has no reader for extension {shown!r}; supported: "
        f"{supported_extensions()}; for other formats use flat_map with your own reader"
    )


def load_file(path: str, on_error: str = "raise") -> Iterator[Any]:
    """Stream the records of `path` with the reader its extension names: JSON Lines (`.jsonl`,
    `.ndjson`, `.json`, optionally `.gz`/`.zst`/`.zstd`/`.xz`/`.bz2`) or Parquet (`.parquet`).

    An unknown extension raises ValueError listing the supported ones (before the file is opened).
    `on_error="skip"` leaves out malformed JSON lines (see `load_jsonl`); Parquet has no bad
    records to skip (a row decodes or the file is corrupt), so it reads Parquet as without it. A
    corrupt or truncated file of either kind always raises.
    """
    check_on_error(on_error, "load_file")
    reader = _reader_for(path)
    if reader is load_jsonl:
        return load_jsonl(path, on_error=on_error)
    return reader(path)


load_file._zephyr_reader = "load_file"  # type: ignore[attr-defined]


def load_zip_members(path: str, pattern: str = "*") -> Iterator[dict]:
    """Yield `{"filename": name, "content": bytes}` for each file in the zip archive at `path`
    whose name matches the glob `pattern` (fnmatch, e.g. `"*.json"`, `"data/*"`), in archive order.

    One member is in memory at a time. A file that is not a zip archive raises ValueError naming it.
    """
    pos = current_position()
    with fsspec.open(path, "rb") as raw:
        try:
            archive = zipfile.ZipFile(raw)
        except zipfile.BadZipFile as e:
            raise ValueError(
                f"{path}: not a readable zip archive ({e}); check that the file is complete and "
                "really a zip"
            ) from None
        with archive:
            for info in archive.infolist():
                if info.is_dir() or not fnmatch.fnmatchcase(info.filename, pattern):
                    continue
                try:
                    content = archive.read(info)
                except (zipfile.BadZipFile, EOFError, OSError) as e:
                    raise ValueError(
                        f"{path}: member {info.filename!r} is corrupt ({e}); re-create the archive"
                    ) from None
                pos.file, pos.line = f"{path}!{info.filename}", None
                yield {"filename": info.filename, "content": content}
    pos.file = None


load_zip_members._zephyr_reader = "load_zip_members"  # type: ignore[attr-defined]
