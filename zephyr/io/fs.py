"""fsspec helpers shared by readers, writers and `Dataset.from_files`: which kind of filesystem a
path is on, and sorted globs that keep the protocol of remote paths."""

from __future__ import annotations

import fsspec

from fray_dask.files import is_local


def _hidden(relative: str, pattern_rel: str) -> bool:
    """Whether a path (relative to the glob's literal folder) passes through a name starting with
    '.' or '_' that the pattern's wildcards matched rather than spelled out."""
    spelled = {p for p in pattern_rel.split("/") if p[:1] in "._" and not _has_magic(p)}
    for part in relative.split("/"):
        if part[:1] in "._" and part not in spelled and not _pattern_starts_with(pattern_rel, part):
            return True
    return False


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def _pattern_starts_with(pattern_rel: str, part: str) -> bool:
    # A wildcard part that itself starts with the marker ('.*', '_*.jsonl') asks for such names.
    return any(p[:1] == part[:1] and _has_magic(p) for p in pattern_rel.split("/"))


def glob_files(pattern: str) -> list[str]:
    """Sorted file paths matching an fsspec glob, with the protocol kept for remote filesystems.

    Hidden names are left out, as Spark and Hadoop do: a file or folder whose name starts with '.'
    (the temporaries of writes in progress or killed mid-way) or '_' (`_quarantine/`,
    `_SUCCESS`), when a wildcard matched it. A pattern that spells such a name out, or whose
    wildcard part starts with '.' or '_' itself, keeps it (`out/_quarantine/*.jsonl`).
    """
    fs, path = fsspec.core.url_to_fs(pattern)
    fs.invalidate_cache()  # object-store listings cached by an earlier run may be stale
    found = fs.glob(path, detail=True)
    parts = path.split("/")
    literal = next((i for i, p in enumerate(parts) if _has_magic(p)), len(parts) - 1)
    prefix = "/".join(parts[:literal])
    pattern_rel = "/".join(parts[literal:])
    files = [
        p
        for p, info in found.items()
        if info.get("type", "file") != "directory"
        and not _hidden(p[len(prefix) :].lstrip("/") if p.startswith(prefix) else p, pattern_rel)
    ]
    if not is_local(fs):
        files = [fs.unstrip_protocol(p) for p in files]
    return sorted(files)


def describe_directory(path: str) -> str | None:
    """If `path` (no wildcards) is a directory, a hint for globbing its files (the most common file
    extension inside, as `from_files` takes it); None when it is not a directory."""
    if _has_magic(path):
        return None
    fs, fspath = fsspec.core.url_to_fs(path)
    try:
        if not fs.isdir(fspath):
            return None
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(fspath, detail=False)]
    except (OSError, ValueError):
        return None
    names = [n for n in names if n[:1] not in "._"]
    exts = [n[n.index(".") :] for n in names if "." in n.lstrip(".")]
    glob = f"*{max(set(exts), key=exts.count)}" if exts else "*"
    return (
        f"{path!r} is a directory ({len(names)} entries), not a file pattern; glob its files: "
        f"from_files({path!r}, {glob!r}) or from_files({path.rstrip('/') + '/*'!r})"
    )
