"""Parquet: a reader that streams small record batches (peak memory bounded by one row group, not
the file) and an atomic writer that infers and widens the schema, or enforces a given one.

Records are plain dicts in and out. pyarrow is a core dependency.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from fray_dask.files import publishes_on_close
from zephyr.io.atomic import atomic_output, commit, temporary_beside
from zephyr.io.provenance import current_position

READ_BATCH_ROWS = 1024  # rows turned into Python dicts at a time
READ_BUFFER_BYTES = 1 << 20  # column data read from storage at a time
CONVERT_ROWS = 4096  # records converted to Arrow at a time
ROW_GROUP_BYTES = 24 << 20  # Arrow bytes buffered per row group: bounds writer memory
COMPRESSION = "zstd"  # inside the Parquet file (Arrow's default zstd level)


def load_parquet(path: str, columns: list[str] | None = None) -> Iterator[dict]:
    """Stream the rows of a Parquet file as dicts, one small batch at a time.

    `columns` reads only those columns (in that order). Peak memory is bounded by one row group.
    A file that is not readable Parquet, or a column it lacks, raises ValueError naming the file.
    Use it with `flat_map`, or `Dataset.load_parquet(columns=[...])`.
    """
    with fsspec.open(path, "rb") as f:
        try:
            # pre_buffer (pyarrow's default) would read every row group up front: the whole file.
            pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(
                f"{path}: not a readable Parquet file ({e}); check that the file is complete and "
                "really Parquet"
            ) from None
        if columns is not None:
            columns = list(columns)
            names = pf.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ValueError(
                    f"{path}: no column(s) {missing} in the file; its columns are {names}"
                )
        try:
            batches = pf.iter_batches(
                batch_size=READ_BATCH_ROWS, columns=columns, use_threads=False
            )
            pos = current_position()
            pos.file, pos.line = path, None  # no row number: rows leave in batches (yield from)
            for batch in batches:
                yield from batch.to_pylist()
            pos.file = None
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: corrupt Parquet data ({e}); re-create the file") from None


load_parquet._zephyr_reader = "load_parquet"  # type: ignore[attr-defined]


# -- writing ---------------------------------------------------------------------------------------
def _check_dicts(batch: list, path: str, first_index: int) -> None:
    for i, rec in enumerate(batch):
        if not isinstance(rec, dict):
            raise TypeError(
                f"{path}: write_parquet takes dict records; record {first_index + i} is "
                f"{type(rec).__name__} {rec!r:.80}"
            )


def _to_table(batch: list, path: str, first_index: int, schema: pa.Schema | None) -> pa.Table:
    """Convert dict records to a Table (field types inferred across the whole batch, or `schema`
    enforced: unknown fields, nulls in non-nullable fields and wrong types raise ValueError)."""
    _check_dicts(batch, path, first_index)
    if schema is not None:
        names = set(schema.names)
        for i, rec in enumerate(batch):
            extra = rec.keys() - names
            if extra:
                raise ValueError(
                    f"{path}: record {first_index + i} has field(s) {sorted(extra)} that the "
                    f"schema lacks (schema fields: {schema.names}); add them to the schema or "
                    "drop them before writing"
                )
    try:
        arr = pa.array(batch, type=pa.struct(schema) if schema is not None else None)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        rule = "does not match the schema" if schema is not None else "has mixed field types"
        raise ValueError(
            f"{path}: records {first_index}-{first_index + len(batch) - 1}: {rule} ({e}); "
            "pass write_parquet(schema=...) or make each field's type consistent"
        ) from None
    if schema is not None:
        for j, fld in enumerate(schema):
            if not fld.nullable and arr.field(j).null_count:
                bad = next(i for i, v in enumerate(arr.field(j).is_null().to_pylist()) if v)
                raise ValueError(
                    f"{path}: record {first_index + bad} has no value for non-nullable field "
                    f"{fld.name!r}; give it a value or make the field nullable"
                )
    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(arr)])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns, in order: missing ones as nulls, the rest cast (widened)."""
    cols = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def _widen(current: pa.Schema, new: pa.Schema, path: str, first_index: int) -> pa.Schema:
    try:
        return pa.unify_schemas([current, new], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(
            f"{path}: records from {first_index} on cannot share a schema with earlier records "
            f"({e}); pass write_parquet(schema=...) or make each field's type consistent"
        ) from None


class _RowGroups:
    """Writes converted tables to `sink` as row groups of about ROW_GROUP_BYTES; closes `sink`
    with the writer if it `owns_sink`."""

    def __init__(self, sink: Any, schema: pa.Schema, owns_sink: bool = True):
        self.sink = sink if owns_sink else None
        self.writer = pq.ParquetWriter(sink, schema, compression=COMPRESSION)
        self.tables: list[pa.Table] = []
        self.nbytes = 0

    def add(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.nbytes += table.nbytes
        if self.nbytes >= ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.tables:
            table = pa.concat_tables(self.tables)  # no copy: the chunks are kept
            self.writer.write_table(table, row_group_size=max(1, len(table)))
        self.tables, self.nbytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self.sink is not None:
            self.sink.close()

    def abandon(self) -> None:
        """Release the writer and sink after a failure (the caller discards the file)."""
        with contextlib.suppress(Exception):
            self.writer.close()
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink.close()


def _batches(records: Iterable) -> Iterator[tuple[int, list]]:
    it = iter(records)
    first = 0
    while batch := list(itertools.islice(it, CONVERT_ROWS)):
        yield first, batch
        first += len(batch)


def write_parquet_file(records: Iterable, path: str, schema: pa.Schema | None = None) -> int:
    """Write dict records to a Parquet file at `path` atomically; returns the count.

    With `schema`, it is enforced. Without, the schema is inferred from the records and widened
    when later records add fields, fill fields that were null so far, or need a wider number type
    (int -> float); rows written before a widening are rewritten to the final schema from a local
    spill file, so memory stays bounded by a row group.
    """
    schema = parquet_schema(schema)
    if schema is not None:
        return _write_with_schema(records, path, schema)
    return _write_inferred(records, path)


def _write_with_schema(records: Iterable, path: str, schema: pa.Schema) -> int:
    count = 0
    with atomic_output(path, compress=False) as out:
        groups = _RowGroups(out, schema, owns_sink=False)  # atomic_output closes it
        try:
            for first, batch in _batches(records):
                groups.add(_to_table(batch, path, first, schema))
                count += len(batch)
        except BaseException:
            groups.abandon()
            raise
        groups.close()
    return count


def _write_inferred(records: Iterable, path: str) -> int:
    # Segments: each file has one schema; a batch that needs a wider schema starts a new segment.
    # The output is then the single segment, or all segments cast to the final schema. On local
    # disk and memory:// segments are hidden temporaries beside the output, so a single one (the
    # usual case) is simply renamed into place; for object stores they go to local disk and the
    # output is uploaded once at the end.
    fs, _ = fsspec.core.url_to_fs(path)
    with contextlib.ExitStack() as stack:
        if publishes_on_close(fs):
            spill = tempfile.mkdtemp(prefix="zephyr-parquet-")
            stack.callback(shutil.rmtree, spill, ignore_errors=True)
            spill_fs = fsspec.filesystem("file")
            new_segment = lambda n: os.path.join(spill, f"{n}.parquet")  # noqa: E731
        else:
            spill_fs = fs
            new_segment = lambda n: stack.enter_context(temporary_beside(path))  # noqa: E731
        segments: list[str] = []
        schema: pa.Schema | None = None
        groups: _RowGroups | None = None
        count = 0
        try:
            for first, batch in _batches(records):
                table = _to_table(batch, path, first, None)
                count += len(batch)
                if schema is None:
                    widened = table.schema
                else:
                    widened = _widen(schema, table.schema, path, first)
                if groups is None or not widened.equals(schema):
                    if groups is not None:
                        groups.close()
                    schema = widened
                    segments.append(new_segment(len(segments)))
                    groups = _RowGroups(spill_fs.open(segments[-1], "wb"), schema)
                groups.add(_conform(table, schema))
            if groups is not None:
                groups.close()
                groups = None
        finally:
            if groups is not None:
                groups.abandon()
        if len(segments) == 1 and not publishes_on_close(fs):
            commit(segments[0], path)
        else:
            _assemble(spill_fs, segments, schema, path)
    return count


def _assemble(
    spill_fs: fsspec.AbstractFileSystem, segments: list[str], schema: pa.Schema | None, path: str
) -> None:
    with atomic_output(path, compress=False) as out:
        if len(segments) == 1:
            with spill_fs.open(segments[0], "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            return
        writer = pq.ParquetWriter(out, schema or pa.schema([]), compression=COMPRESSION)
        with contextlib.closing(writer):
            for seg in segments:
                with spill_fs.open(seg, "rb") as f:
                    pf = pq.ParquetFile(f, pre_buffer=False)
                    for i in range(pf.num_row_groups):
                        writer.write_table(_conform(pf.read_row_group(i), schema))


def parquet_schema(schema: Any) -> pa.Schema | None:
    """A pyarrow Schema from a Schema, a dict {name: arrow type}, or None."""
    if schema is None or isinstance(schema, pa.Schema):
        return schema
    if isinstance(schema, dict):
        return pa.schema(list(schema.items()))
    raise TypeError(
        f"write_parquet schema must be a pyarrow.Schema or a dict of name -> pyarrow type, "
        f"got {type(schema).__name__} {schema!r:.80}"
    )
