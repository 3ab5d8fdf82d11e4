"""Logical operations of a Dataset: frozen dataclasses, one per user-visible method.

Pure data: no Dask, no I/O. `zephyr.plan` groups these into physical stages; `zephyr.kernels` runs
them. Each op has a `label` (its kind: "map"), a `title` (with the user's function:
"map(clean)") and a `detail` (with every argument).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _qualname(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        return _qualname(fn.func)
    return name or type(fn).__name__  # a callable object: its class


def callable_name(fn: Callable) -> str:
    """A readable name for a user function (`<lambda>` for lambdas, `outer.inner` for a function
    defined inside another)."""
    return _qualname(fn).replace(".<locals>.", ".")


FN_NAME_LIMIT = 40  # characters of a function's name in an op title; longer names are cut


def short_name(fn: Callable) -> str:
    """The name titles use: without the functions it is defined in (`<lambda>`, `inner`), cut to
    FN_NAME_LIMIT characters."""
    name = _qualname(fn).rpartition(".<locals>.")[2]
    return name if len(name) <= FN_NAME_LIMIT else name[: FN_NAME_LIMIT - 3] + "..."


def reader_name(fn: Callable) -> str | None:
    """The name of a zephyr reader (`load_jsonl`, ...), also inside a functools.partial."""
    return getattr(getattr(fn, "func", fn), "_zephyr_reader", None)


def _reader_skips(fn: Callable) -> bool:
    """Whether `fn` is a reader told to skip bad lines: functools.partial(load_jsonl,
    on_error="skip")."""
    keywords = getattr(fn, "keywords", None) or {}
    return reader_name(fn) is not None and keywords.get("on_error") == "skip"


DEFAULT_MAX_ERRORS = 1000


@dataclass(frozen=True, kw_only=True)
class _RecordOp:
    """Settings shared by map, flat_map and filter: what happens when the function raises.

    `on_error="skip"` quarantines the record and goes on; `max_errors` bounds how many records
    this op may skip in a stage (an int is a count, a float in (0, 1) a fraction of the records
    the op saw; None: no bound); `quarantine` is an explicit folder for the quarantine files.
    """

    on_error: str = "raise"
    max_errors: int | float | None = DEFAULT_MAX_ERRORS
    quarantine: str | None = None

    @property
    def skips(self) -> bool:
        """Whether records may be skipped under this op (by it, or by the reader it calls)."""
        return self.on_error == "skip"


@dataclass(frozen=True)
class SourceOp:
    """Where shards come from: one shard per item (a list element or a file path)."""

    items: tuple
    kind: str  # "list" or "files"
    description: str
    backend: Any = None

    @property
    def label(self) -> str:
        return "from_files" if self.kind == "files" else "from_list"

    def __repr__(self) -> str:
        return f"<SourceOp {self.label} {self.description}: {len(self.items)} shards>"


@dataclass(frozen=True)
class MapOp(_RecordOp):
    """Apply fn to every record; one record out per record in."""

    fn: Callable
    backend: Any = None

    @property
    def label(self) -> str:
        return "map"

    @property
    def detail(self) -> str:
        return f"map({callable_name(self.fn)})"

    @property
    def title(self) -> str:
        return f"map({short_name(self.fn)})"


@dataclass(frozen=True)
class FlatMapOp(_RecordOp):
    """Apply fn to every record and stream every element of the iterable it returns."""

    fn: Callable
    backend: Any = None

    @property
    def label(self) -> str:
        # A reader shows under its own name ("load_jsonl -> map -> ..."), as users think of it.
        fn = getattr(self.fn, "func", self.fn)  # functools.partial(load_parquet, columns=...)
        return getattr(fn, "_zephyr_reader", None) or "flat_map"

    @property
    def detail(self) -> str:
        return f"flat_map({callable_name(self.fn)})"

    @property
    def title(self) -> str:
        # A reader is named by itself (load_jsonl), other functions by the op and their name.
        reader = reader_name(self.fn)
        return reader or f"flat_map({short_name(self.fn)})"

    @property
    def reader_skips(self) -> bool:
        """Whether fn is a reader that skips bad lines itself (and reports them to this op)."""
        return _reader_skips(self.fn)

    @property
    def skips(self) -> bool:
        return self.on_error == "skip" or self.reader_skips


@dataclass(frozen=True)
class FilterOp(_RecordOp):
    """Keep the records for which pred returns True."""

    pred: Callable
    backend: Any = None

    @property
    def label(self) -> str:
        return "filter"

    @property
    def detail(self) -> str:
        return f"filter({callable_name(self.pred)})"

    @property
    def title(self) -> str:
        return f"filter({short_name(self.pred)})"


@dataclass(frozen=True)
class MapShardOp:
    """Call fn(records_iterator, shard_info) once per shard and stream what it yields."""

    fn: Callable
    backend: Any = None

    @property
    def label(self) -> str:
        return "map_shard"

    @property
    def detail(self) -> str:
        return f"map_shard({callable_name(self.fn)})"

    @property
    def title(self) -> str:
        return f"map_shard({short_name(self.fn)})"


@dataclass(frozen=True)
class WindowOp:
    """Group consecutive records of a shard into lists of `size` (the last may be shorter)."""

    size: int
    backend: Any = None

    @property
    def label(self) -> str:
        return "window"

    @property
    def detail(self) -> str:
        return f"window({self.size})"

    @property
    def title(self) -> str:
        return self.detail


@dataclass(frozen=True)
class TakePerShardOp:
    """Keep the first n records of each shard (upstream stops being read after that)."""

    n: int
    backend: Any = None

    @property
    def label(self) -> str:
        return "take_per_shard"

    @property
    def detail(self) -> str:
        return f"take_per_shard({self.n})"

    @property
    def title(self) -> str:
        return self.detail


@dataclass(frozen=True)
class ShardReduceOp:
    """Reduce each shard's records to one value: `fn(records_iterator)` (Dataset.reduce's two
    halves, `kind` "local_reduce" or "global_reduce")."""

    fn: Callable
    kind: str = "local_reduce"
    backend: Any = None

    @property
    def label(self) -> str:
        return self.kind

    @property
    def detail(self) -> str:
        return f"{self.kind}({callable_name(self.fn)})"

    @property
    def title(self) -> str:
        return f"{self.kind}({short_name(self.fn)})"


@dataclass(frozen=True)
class ReshardOp:
    """Redistribute all records, in order, into `num_shards` contiguous near-equal shards."""

    num_shards: int
    backend: Any = None

    @property
    def label(self) -> str:
        return "reshard"

    @property
    def detail(self) -> str:
        return f"reshard({self.num_shards})"


@dataclass(frozen=True)
class WriteOp:
    """Write each shard's records to one file named by `pattern`; the shard yields that path."""

    format: str  # "jsonl", "parquet" or "binary"
    pattern: str | Callable[[int, int], str]
    options: dict = field(default_factory=dict, hash=False, compare=False)
    skip_existing: bool = False  # a shard whose output exists is not computed
    backend: Any = None

    @property
    def label(self) -> str:
        return f"write_{self.format}"

    @property
    def detail(self) -> str:
        pattern = self.pattern if isinstance(self.pattern, str) else callable_name(self.pattern)
        skip = ", skip_existing=True" if self.skip_existing else ""
        return f"write_{self.format}({pattern!r}{skip})"

    @property
    def title(self) -> str:
        return self.label  # the pattern is in `detail`; a title stays short


# Ops that transform a stream of records inside one shard and may share a task with their
# neighbours.
RECORD_OPS = (
    MapOp, FlatMapOp, FilterOp, MapShardOp, WindowOp, TakePerShardOp, ShardReduceOp, WriteOp
)  # fmt: skip
