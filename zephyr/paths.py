"""Output path templates (`{shard}`, `{shard:05d}`, `{total}`, `{basename}`, or a callable), the
compression a file's extension names, and the quarantine files named after outputs.

Pure: no I/O, no fsspec, no Dask: the planner validates templates with it before any work starts,
and zephyr.io names and opens files by it.
"""

from __future__ import annotations

import os
import posixpath
import string
from collections.abc import Callable
from dataclasses import dataclass

TEMPLATE_FIELDS = ("shard", "total", "basename")
_GZIP = (".gz", ".gzip")
_ZSTD = (".zst", ".zstd")
_XZ = (".xz",)
_BZ2 = (".bz2",)
COMPRESSED_EXTENSIONS = _GZIP + _ZSTD + _XZ + _BZ2
# Extensions of compressions and archives that are not handled here: a file named so is refused
# instead of being read or written as plain bytes (an `out.jsonl.lz4` that holds plain JSON).
UNSUPPORTED_EXTENSIONS = (
    ".lz4", ".br", ".snappy", ".sz", ".lzo", ".lz", ".lzma", ".z", ".zip", ".7z", ".rar",
    ".tar", ".tgz",
)  # fmt: skip


def compression_of(path: str) -> str | None:
    """'gzip', 'zstd', 'xz', 'bz2' or None, from the path's extension; ValueError for an extension
    of a compression that is not supported (see UNSUPPORTED_EXTENSIONS)."""
    lower = str(path).lower()
    if lower.endswith(_GZIP):
        return "gzip"
    if lower.endswith(_ZSTD):
        return "zstd"
    if lower.endswith(_XZ):
        return "xz"
    if lower.endswith(_BZ2):
        return "bz2"
    if lower.endswith(UNSUPPORTED_EXTENSIONS):
        ext = lower[lower.rfind(".") :]
        raise ValueError(
            f"{path}: {ext!r} compression is not supported; name the file with one of "
            f"{', '.join(COMPRESSED_EXTENSIONS)} or no compression extension"
            + (" (read .zip archives with load_zip_members)" if ext == ".zip" else "")
        )
    return None


def check_output_compression(pattern: str | Callable, fmt: str) -> None:
    """Raise ValueError (before any work runs) if a string output pattern names a compression the
    writer cannot produce: an unsupported one for any writer, or any for Parquet, which compresses
    inside the file."""
    if callable(pattern):
        return  # checked when each path is opened
    kind = compression_of(pattern)
    if kind is not None and fmt == "parquet":
        raise ValueError(
            f"output pattern {pattern!r} ends in a {kind} extension, but Parquet files are "
            "compressed inside (zstd per column); end the pattern in '.parquet'"
        )


_KNOWN_EXTENSIONS = COMPRESSED_EXTENSIONS + (
    ".jsonl", ".json", ".ndjson", ".parquet", ".txt", ".csv", ".tsv", ".bin",
)  # fmt: skip


def input_basename(item: object) -> str | None:
    """The basename of a shard's input path with data and compression extensions removed.

    `gs://b/raw/part-0001.jsonl.gz` -> `part-0001`. None when the input is not a path string.
    """
    if not isinstance(item, (str, os.PathLike)):
        return None
    name = os.path.basename(str(item).rstrip("/"))
    stripped = True
    while stripped:
        stripped = False
        for ext in _KNOWN_EXTENSIONS:
            if name.lower().endswith(ext) and len(name) > len(ext):
                name, stripped = name[: -len(ext)], True
    return name


def template_fields(pattern: str) -> set[str]:
    """The field names used in a template; a field we do not know raises ValueError."""
    fields = set()
    for _, field_name, _, _ in string.Formatter().parse(pattern):
        if field_name is None:
            continue
        if field_name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"output pattern {pattern!r} uses {{{field_name}}}, which is not a template field; "
                f"use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)} "
                "(write '{{' for a literal brace)"
            )
        fields.add(field_name)
    return fields


def validate_pattern(pattern: str | Callable, num_shards: int | None, inputs: tuple | None) -> None:
    """Raise ValueError if `pattern` cannot give each of `num_shards` shards its own path.

    `inputs` are the shards' source items when known (for `{basename}`); None after a reshard.
    """
    if callable(pattern):
        return
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(
            f"output pattern must be a non-empty string or a callable, got {pattern!r}"
        )
    fields = template_fields(pattern)
    if "basename" in fields:
        if inputs is None:
            raise ValueError(
                f"output pattern {pattern!r} uses {{basename}} but its shards come from a reshard "
                "and have no input file; use {shard:05d} instead"
            )
        names = [input_basename(i) for i in inputs]
        if any(n is None for n in names):
            raise ValueError(
                f"output pattern {pattern!r} uses {{basename}} but the inputs are not file paths; "
                "use {shard:05d} instead"
            )
        if "shard" not in fields and len(set(names)) < len(names):
            raise ValueError(
                f"output pattern {pattern!r} would write several shards to one path: inputs "
                "share a basename; add '{shard:05d}'"
            )
        return
    if num_shards is not None and num_shards > 1 and "shard" not in fields:
        raise ValueError(
            f"output pattern {pattern!r} has no '{{shard}}' but the dataset has {num_shards} "
            "shards; add '{shard:05d}'"
        )


def render_path(pattern: str | Callable, shard: int, total: int, input_item: object = None) -> str:
    """The output path of one shard."""
    if callable(pattern):
        path = pattern(shard, total)
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(
                f"output pattern callable returned {path!r}; it must return a path string"
            )
        return str(path)
    return pattern.format(shard=shard, total=total, basename=input_basename(input_item))


QUARANTINE_DIR = "_quarantine"


@dataclass(frozen=True)
class QuarantineTarget:
    """Where a stage's skipped records go: one JSON Lines file per shard.

    `writer` is the pattern of the stage's own writer: each shard's file is named after its
    output (`out/00003.jsonl.gz` -> `<folder>/00003.jsonl`), in `folder` or, when None, in a
    `_quarantine/` folder beside that output. Without a writer the files are
    `<folder>/stage<number>-<shard:05d>.jsonl` (stages numbered from 1, as logs show them).
    """

    folder: str | None
    writer: str | Callable | None
    stage_number: int

    def path(self, shard: int, total: int, input_item: object = None) -> str:
        if self.writer is None:
            return posixpath.join(str(self.folder), f"stage{self.stage_number}-{shard:05d}.jsonl")
        parent, name = posixpath.split(render_path(self.writer, shard, total, input_item))
        folder = self.folder if self.folder is not None else posixpath.join(parent, QUARANTINE_DIR)
        return posixpath.join(folder, f"{input_basename(name) or name}.jsonl")

    def describe(self, total: int, first_input: object = None) -> str:
        """The folder as users see it in log lines (that of shard 0 beside per-shard outputs)."""
        return posixpath.dirname(self.path(0, max(total, 1), first_input)) + "/"
