"""The lazy, immutable Dataset: a source plus a tuple of logical ops. Nothing runs until executed.

Imports no Dask: execution is delegated to a backend (`zephyr.backends`).
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from zephyr.dataset_shuffles import ShuffleMethods
from zephyr.io.provenance import check_on_error
from zephyr.ops import (
    DEFAULT_MAX_ERRORS,
    FilterOp,
    FlatMapOp,
    MapOp,
    MapShardOp,
    ReshardOp,
    SourceOp,
    TakePerShardOp,
    WindowOp,
    WriteOp,
    reader_name,
)
from zephyr.plan import Plan, compute_plan
from zephyr.quarantine import check_max_errors


def _check_callable(fn: object, method: str) -> None:
    if not callable(fn):
        raise TypeError(f"Dataset.{method} takes a function, got {type(fn).__name__} {fn!r}")


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"skip_existing takes True or False, got {value!r}")
    return value


def _on_error(method: str, on_error: object, max_errors: object, quarantine: object) -> dict:
    """The validated on_error settings of a record op, as MapOp/FlatMapOp/FilterOp keywords."""
    check_on_error(on_error, f"Dataset.{method}")
    check_max_errors(max_errors, f"Dataset.{method}")
    if quarantine is not None and (not isinstance(quarantine, str) or not quarantine):
        raise TypeError(
            f"Dataset.{method} takes quarantine as a folder path string, got {quarantine!r}"
        )
    return {"on_error": on_error, "max_errors": max_errors, "quarantine": quarantine}


def _check_positive(n: object, method: str, minimum: int = 1) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < minimum:
        raise ValueError(f"Dataset.{method} takes an integer >= {minimum}, got {n!r}")


class Dataset(ShuffleMethods):
    """A lazy pipeline over shards of records.

    Each source item (a list element or a file) is one shard. Record ops (`map`, `flat_map`,
    `filter`) and shard ops (`map_shard`, `window`, `take_per_shard`, writers) fuse into one task
    per shard; `reshard` starts a new stage. Methods return new Datasets; nothing runs until
    `execute`. Shuffles (`group_by`, `deduplicate`) and `sorted_merge_join`, `reduce`, `count`
    and `take` are in zephyr.dataset_shuffles.

    >>> from zephyr import Dataset, SyncBackend
    >>> list(Dataset.from_list([1, 2, 3]).map(lambda x: x * 10).execute(SyncBackend()))
    [10, 20, 30]
    """

    __slots__ = ("_source", "_ops")

    def __init__(self, source: SourceOp, ops: tuple = ()):
        self._source = source
        self._ops = ops

    # -- constructors
    @classmethod
    def from_list(cls, items: Iterable, backend: Any = None) -> Dataset:
        """One shard per item; `backend` is what `dataset.execute()` uses when given none."""
        items = tuple(items)
        return cls(SourceOp(items, "list", f"[{len(items)} items]", backend))

    @classmethod
    def from_iterable(cls, iterable: Iterable, backend: Any = None) -> Dataset:
        """One shard per item of `iterable`, which is consumed now (a Dataset can run more than
        once)."""
        return cls.from_list(iterable, backend=backend)

    @classmethod
    def from_files(
        cls,
        pattern: str,
        glob: str | None = None,
        *,
        empty_glob_ok: bool = False,
        backend: Any = None,
    ) -> Dataset:
        """One shard per file matching `pattern` (an fsspec glob: local, memory://, gs://, ...),
        sorted.

        Hidden files (names starting with '.', like the temporaries of unfinished writes) are
        skipped. Two-argument form: `from_files(directory, "*.jsonl.gz")`. No match raises
        FileNotFoundError naming the pattern, unless `empty_glob_ok=True` (then the dataset has no
        shards); a directory alone raises one that names the globs to use.
        """
        full = str(pattern)
        if glob is not None:
            full = posixpath.join(full.rstrip("/"), glob)
        from zephyr.io.fs import describe_directory, glob_files

        files = glob_files(full)
        if not files and glob is None and (hint := describe_directory(full)):
            raise FileNotFoundError(hint)
        if not files and not empty_glob_ok:
            raise FileNotFoundError(
                f"no files match {full!r}; check the path and pattern, or pass empty_glob_ok=True "
                "to allow an empty dataset"
            )
        return cls(SourceOp(tuple(files), "files", repr(full), backend))

    # -- ops
    def _with(self, op: Any) -> Dataset:
        return Dataset(self._source, self._ops + (op,))

    def map(
        self,
        fn: Callable[[Any], Any],
        backend: Any = None,
        *,
        on_error: str = "raise",
        max_errors: int | float | None = DEFAULT_MAX_ERRORS,
        quarantine: str | None = None,
    ) -> Dataset:
        """Apply `fn` to every record. With `backend`, this op runs there, one task per record,
        nested inside each shard of the executing backend (bounded by that backend's
        max_parallelism).

        `on_error="skip"`: a record for which `fn` raises is left out and quarantined (see the
        README's "Bad records"); more than `max_errors` such records in the stage (a count, or a
        float in (0, 1): a fraction of the records this op saw; None: no bound) fail the run.
        `quarantine` names the folder of the quarantine files (default: `_quarantine/` beside the
        outputs of the stage's writer, or of the next writer downstream).
        """
        _check_callable(fn, "map")
        return self._with(MapOp(fn, backend, **_on_error("map", on_error, max_errors, quarantine)))

    def flat_map(
        self,
        fn: Callable[[Any], Iterable],
        backend: Any = None,
        *,
        on_error: str = "raise",
        max_errors: int | float | None = DEFAULT_MAX_ERRORS,
        quarantine: str | None = None,
    ) -> Dataset:
        """Apply `fn` to every record and stream every item of the iterable it returns
        (`.flat_map(load_jsonl)` turns file paths into records).

        `on_error="skip"` (with `max_errors` and `quarantine` as in `map`) leaves out a record for
        which `fn` raises, with everything it yielded: a record's first 1024 outputs are held back
        until it is done; a record that raises after yielding more fails the run. Given a reader
        (`load_jsonl`, `load_file`), `on_error="skip"` skips its malformed lines instead, and a
        corrupt or truncated file still fails; `load_parquet` and `load_zip_members` have no
        bad records to skip and refuse it.
        """
        _check_callable(fn, "flat_map")
        settings = _on_error("flat_map", on_error, max_errors, quarantine)
        reader = reader_name(fn)
        if on_error == "skip" and reader is not None:
            if reader not in ("load_jsonl", "load_file"):
                raise ValueError(
                    f"Dataset.flat_map: {reader} has no bad records to skip (a row or member "
                    "reads whole or the file is corrupt, which is not a record error), got "
                    "on_error='skip'; drop it, or skip files in your own reader function"
                )
            # The reader skips and quarantines bad lines itself; a whole-file failure still fails.
            fn, settings["on_error"] = functools.partial(fn, on_error="skip"), "raise"
        return self._with(FlatMapOp(fn, backend, **settings))

    def filter(
        self,
        pred: Callable[[Any], bool],
        *,
        on_error: str = "raise",
        max_errors: int | float | None = DEFAULT_MAX_ERRORS,
        quarantine: str | None = None,
    ) -> Dataset:
        """Keep the records for which `pred(record)` returns True. `on_error`, `max_errors` and
        `quarantine` as in `map` (a record whose predicate raises is quarantined, not kept)."""
        _check_callable(pred, "filter")
        return self._with(FilterOp(pred, **_on_error("filter", on_error, max_errors, quarantine)))

    def map_shard(self, fn: Callable[[Iterator, Any], Iterable]) -> Dataset:
        """Call `fn(records, shard_info)` once per shard; stream what it returns.

        `records` is an iterator over the shard's records; `shard_info` is a `ShardInfo` with
        `shard_idx`, `total_shards` and `input` (the shard's source item, or None after a reshard).
        It takes no `on_error`: its function sees the whole shard, not one record, so there is no
        record to skip; catch errors per record inside it.
        """
        _check_callable(fn, "map_shard")
        return self._with(MapShardOp(fn))

    def window(self, size: int) -> Dataset:
        """Group each shard's records into lists of `size` (the last list of a shard may be
        shorter)."""
        _check_positive(size, "window")
        return self._with(WindowOp(size))

    batch = window

    def take_per_shard(self, n: int) -> Dataset:
        """Keep only the first `n` records of each shard; the rest of the shard is not read."""
        _check_positive(n, "take_per_shard", minimum=0)
        return self._with(TakePerShardOp(n))

    def reshard(self, num_shards: int) -> Dataset:
        """Redistribute all records, keeping their order, into `num_shards` near-equal shards."""
        _check_positive(num_shards, "reshard")
        return self._with(ReshardOp(num_shards))

    def load_jsonl(
        self,
        *,
        on_error: str = "raise",
        max_errors: int | float | None = DEFAULT_MAX_ERRORS,
        quarantine: str | None = None,
    ) -> Dataset:
        """Shorthand for `.flat_map(load_jsonl)`: file paths in, records out. `on_error="skip"`
        skips and quarantines lines that are not valid JSON (`max_errors` counts them, or as a
        fraction, compares them with the lines read); a truncated or corrupt file still fails."""
        from zephyr.io.jsonl import load_jsonl

        return self.flat_map(
            load_jsonl, on_error=on_error, max_errors=max_errors, quarantine=quarantine
        )

    def load_parquet(self, columns: list[str] | None = None) -> Dataset:
        """Shorthand for `.flat_map(load_parquet)`, reading only `columns` when given."""
        from zephyr.io.parquet import load_parquet

        if columns is None:
            return self.flat_map(load_parquet)
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise TypeError(f"load_parquet columns must be a list of names, got {columns!r}")
        return self.flat_map(functools.partial(load_parquet, columns=list(columns)))

    def load_file(
        self,
        *,
        on_error: str = "raise",
        max_errors: int | float | None = DEFAULT_MAX_ERRORS,
        quarantine: str | None = None,
    ) -> Dataset:
        """Shorthand for `.flat_map(load_file)`: each path is read by the reader its extension
        names (JSON Lines, compressed or not, or Parquet). `on_error="skip"` as in `load_jsonl`
        for JSON Lines; Parquet has no bad records to skip, and a corrupt file of either kind
        still fails."""
        from zephyr.io.readers import load_file

        return self.flat_map(
            load_file, on_error=on_error, max_errors=max_errors, quarantine=quarantine
        )

    def load_zip_members(self, pattern: str = "*") -> Dataset:
        """Shorthand for `.flat_map(load_zip_members)`: `{"filename", "content"}` per member."""
        from zephyr.io.readers import load_zip_members

        if pattern == "*":
            return self.flat_map(load_zip_members)
        return self.flat_map(functools.partial(load_zip_members, pattern=pattern))

    def write_jsonl(
        self,
        pattern: str | Callable[[int, int], str],
        *,
        skip_existing: bool = False,
        non_finite: str = "error",
    ) -> Dataset:
        """Write each shard to one JSON Lines file; the pipeline then yields the written paths.

        `pattern` may use `{shard}` (e.g. `{shard:05d}`), `{total}` and `{basename}` (the input
        file's name without extensions), or be a callable `(shard_idx, total) -> path`. `.gz`,
        `.zst` and `.xz` compress. Files are committed atomically. With `skip_existing=True`, a
        shard whose output exists is not computed at all (its input is not even opened).

        JSON has no NaN or Infinity. A record holding one (at any depth, numpy floats included)
        fails the shard with an error naming the field, unless `non_finite` is "token" (written
        as `NaN`, `Infinity`, `-Infinity`, as Python's json does; load_jsonl reads them back) or
        "null" (written as null).
        """
        from zephyr.io.jsonl import check_non_finite

        options = {"non_finite": check_non_finite(non_finite)}
        return self._with(WriteOp("jsonl", pattern, options, skip_existing=_flag(skip_existing)))

    def write_parquet(
        self,
        pattern: str | Callable[[int, int], str],
        schema: Any = None,
        *,
        skip_existing: bool = False,
    ) -> Dataset:
        """Write each shard (dict records) to one Parquet file; yields the written paths.

        `schema` (a `pyarrow.Schema` or a dict of name -> pyarrow type) is enforced: unknown fields,
        missing non-nullable fields and wrong types raise. Without it the schema is inferred and
        widened as later records add fields, fill null ones or need wider numbers. Paths,
        atomicity and `skip_existing` as in `write_jsonl`.
        """
        from zephyr.io.parquet import parquet_schema

        options = {"schema": parquet_schema(schema)}
        return self._with(WriteOp("parquet", pattern, options, skip_existing=_flag(skip_existing)))

    def write_binary(
        self, pattern: str | Callable[[int, int], str], *, skip_existing: bool = False
    ) -> Dataset:
        """Write each shard's bytes records back to back into one file (compressed by extension);
        yields the written paths. Paths, atomicity and `skip_existing` as in `write_jsonl`."""
        return self._with(WriteOp("binary", pattern, skip_existing=_flag(skip_existing)))

    # -- planning and execution
    @property
    def num_input_shards(self) -> int:
        return len(self._source.items)

    def compute_plan(self, backend: Any = None) -> Plan:
        """The fused physical plan for executing on `backend` (no printing, no I/O)."""
        return compute_plan(self._source, self._ops, backend)

    def plan(self, backend: Any = None) -> Plan:
        """Print the stages this dataset runs as, and return the Plan."""
        plan = self.compute_plan(backend)
        print(plan.describe())
        return plan

    def execute(self, backend: Any = None) -> Iterator:
        """Run on `backend` (default: the source's backend, else `flow_backend()`); stream the
        results in shard order. Same as `backend.execute(dataset)`."""
        if backend is None:
            backend = self._source.backend
        if backend is None:
            from zephyr.backends.config import flow_backend

            backend = flow_backend()
        return backend.execute(self)

    def __repr__(self) -> str:
        ops = " -> ".join(getattr(op, "detail", op.label) for op in self._ops)
        return (
            f"Dataset({self._source.label} {self._source.description}{' -> ' + ops if ops else ''})"
        )
