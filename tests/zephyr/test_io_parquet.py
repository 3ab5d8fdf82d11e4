"""Parquet in and out: streaming reads one row group at a time, column projection, schema inference
that widens as later records add fields or values, an explicit schema that is enforced.

Real files on local disk and memory://, read back with pyarrow itself.
"""

from __future__ import annotations

import itertools
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import zephyr.io.parquet as zparquet
from zephyr import Dataset, SyncBackend, ZephyrError, load_parquet

RECORDS = [
    {
        "id": i,
        "text": f"doc {i} " + "é世" * (i % 3),
        "score": i / 4,
        "tags": ["a", "b"][: i % 3],
        "meta": {"source": "web" if i % 2 else "books", "year": 2000 + i},
        "maybe": None if i % 2 else f"v{i}",
    }
    for i in range(40)
]


def write_row_groups(path, groups: int, rows: int, text_bytes: int = 200) -> None:
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for g in range(groups):
            ids = list(range(g * rows, (g + 1) * rows))
            w.write_table(
                pa.table({"id": ids, "text": [f"{i:08d}" * (text_bytes // 8) for i in ids]}),
                row_group_size=rows,
            )


def test_round_trip_through_a_pipeline(backend, tmp_path):
    shards = [RECORDS[:20], RECORDS[20:]]
    paths = list(
        Dataset.from_list(shards)
        .flat_map(lambda rows: rows)
        .write_parquet(str(tmp_path / "out" / "{shard:05d}.parquet"))
        .execute(backend)
    )
    assert [p.rsplit("/", 1)[1] for p in paths] == ["00000.parquet", "00001.parquet"]
    assert pq.read_table(paths[0]).to_pylist() == RECORDS[:20]
    back = list(
        Dataset.from_files(str(tmp_path / "out" / "*.parquet")).load_parquet().execute(backend)
    )
    assert back == RECORDS


class CountingFile:
    """Wraps an open file and counts the bytes read from storage."""

    def __init__(self, f):
        self._f = f
        self.bytes_read = 0

    def read(self, n=-1):
        data = self._f.read(n)
        self.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_load_parquet_reads_one_row_group_at_a_time(tmp_path, monkeypatch):
    path = tmp_path / "big.parquet"
    write_row_groups(path, groups=8, rows=20_000, text_bytes=200)  # ~4 MB per row group
    opened = []
    real_open = zparquet.fsspec.open

    def counting_open(p, mode="rb"):
        opened.append(CountingFile(real_open(p, mode).open()))
        return opened[-1]

    monkeypatch.setattr(zparquet.fsspec, "open", counting_open)
    records = load_parquet(str(path))
    assert next(records)["id"] == 0
    size = path.stat().st_size
    assert opened[0].bytes_read < size / 4, (
        f"the first record read {opened[0].bytes_read} of {size} bytes: not one row group"
    )
    assert sum(1 for _ in records) + 1 == 160_000
    assert opened[0].bytes_read >= size * 0.9


def test_column_projection(tmp_path):
    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    assert list(itertools.islice(load_parquet(path, columns=["score", "id"]), 2)) == [
        {"score": 0.0, "id": 0},
        {"score": 0.25, "id": 1},
    ]
    ds = Dataset.from_list([path]).load_parquet(columns=["id"])
    assert list(ds.execute(SyncBackend())) == [{"id": r["id"]} for r in RECORDS]
    assert ds.compute_plan().stages[0].name == "load_parquet"


def test_missing_column_lists_the_file_columns(tmp_path):
    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.Table.from_pylist(RECORDS[:2]), path)
    with pytest.raises(ValueError, match=r"no column\(s\) \['nope'\] in the file; its columns are"):
        list(load_parquet(path, columns=["id", "nope"]))


def test_inferred_schema_widens_for_new_fields_nulls_and_wider_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(zparquet, "CONVERT_ROWS", 3)  # several conversion batches per file
    records = (
        [{"id": i, "x": None, "n": i} for i in range(4)]  # x only null so far, n int
        + [{"id": 4, "x": "now text", "n": 4.5}]  # x gets a type, n must become double
        + [{"id": i, "x": "t", "n": i, "late": [i]} for i in range(5, 8)]  # a new field
    )
    path = str(tmp_path / "w.parquet")
    list(
        Dataset.from_list([path])
        .flat_map(lambda _: records)
        .write_parquet(path)
        .execute(SyncBackend())
    )
    schema = pq.read_schema(path)
    assert schema.field("x").type == pa.string()
    assert schema.field("n").type == pa.float64()
    assert schema.field("late").type == pa.list_(pa.int64())
    assert pq.read_table(path).to_pylist() == [
        {"id": r["id"], "x": r["x"], "n": float(r["n"]), "late": r.get("late")} for r in records
    ]
    assert [n for n in (tmp_path).iterdir()] == [tmp_path / "w.parquet"]


@pytest.mark.parametrize("schema", [None, {"v": pa.float32(), "xs": pa.list_(pa.float64())}])
def test_nan_and_infinity_stay_themselves_not_null(tmp_path, monkeypatch, schema):
    monkeypatch.setattr(zparquet, "CONVERT_ROWS", 2)  # inferred: v is int first, widened to double
    nan, inf = float("nan"), float("inf")
    head = [{"v": 1, "xs": [0.5]}, {"v": 2, "xs": []}] if schema is None else []
    records = [*head, {"v": nan, "xs": [inf, nan]}, {"v": -inf, "xs": [-inf]}, {"v": 3.0, "xs": []}]
    [path] = SyncBackend().execute(
        Dataset.from_list([0])
        .flat_map(lambda _: records)
        .write_parquet(str(tmp_path / "f.parquet"), schema=schema)
    )
    table = pq.read_table(path)
    v, xs = table["v"].combine_chunks(), pc.list_flatten(table["xs"])
    assert v.null_count == 0 and xs.null_count == 0
    assert pc.sum(pc.is_nan(v)).as_py() == 1
    assert pc.sum(pc.is_inf(xs)).as_py() == 2
    back = list(Dataset.from_list([path]).load_parquet().execute(SyncBackend()))
    k = len(head)
    assert math.isnan(back[k]["v"]) and back[k + 1]["v"] == -inf
    assert back[k]["xs"][0] == inf and math.isnan(back[k]["xs"][1]) and back[k + 1]["xs"] == [-inf]
    assert back[k + 2] == {"v": 3.0, "xs": []}


def test_fields_that_cannot_share_a_type_fail_clearly_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(zparquet, "CONVERT_ROWS", 2)
    records = [{"a": "text"}, {"a": "more"}, {"a": 3}]
    out = tmp_path / "out"
    ds = Dataset.from_list([0]).flat_map(lambda _: records).write_parquet(str(out / "x.parquet"))
    with pytest.raises(ZephyrError, match=r"x.parquet: records from 2 on cannot share a schema"):
        list(ds.execute(SyncBackend()))
    assert not out.exists() or list(out.iterdir()) == []


def test_explicit_schema_is_written_exactly(tmp_path):
    schema = pa.schema([("id", pa.int32()), ("text", pa.large_string()), ("opt", pa.float32())])
    path = str(tmp_path / "s.parquet")
    rows = [{"id": 1, "text": "a"}, {"id": 2, "text": "b", "opt": 0.5}]
    list(
        Dataset.from_list([0])
        .flat_map(lambda _: rows)
        .write_parquet(path, schema)
        .execute(SyncBackend())
    )
    assert pq.read_schema(path).equals(schema)
    assert pq.read_table(path).to_pylist() == [
        {"id": 1, "text": "a", "opt": None},
        {"id": 2, "text": "b", "opt": 0.5},
    ]
    as_dict = str(tmp_path / "d.parquet")
    ds = Dataset.from_list([0]).flat_map(lambda _: rows)
    list(
        ds.write_parquet(
            as_dict, {"id": pa.int32(), "text": pa.string(), "opt": pa.float64()}
        ).execute()
    )
    assert pq.read_schema(as_dict).field("id").type == pa.int32()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": 1, "extra": 2}], r"record 0 has field\(s\) \['extra'\] that the schema lacks"),
        ([{"id": 1}, {"text": "x"}], r"record 1 has no value for non-nullable field 'id'"),
        ([{"id": "one"}], r"records 0-0: does not match the schema"),
    ],
)
def test_explicit_schema_is_enforced(tmp_path, rows, message):
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("text", pa.string())])
    out = tmp_path / "out"
    ds = Dataset.from_list([0]).flat_map(lambda _: rows)
    with pytest.raises(ZephyrError, match=message):
        list(ds.write_parquet(str(out / "x.parquet"), schema).execute(SyncBackend()))
    assert not out.exists() or list(out.iterdir()) == []


def test_bad_schema_argument_fails_when_the_pipeline_is_built():
    with pytest.raises(TypeError, match="schema must be a pyarrow.Schema or a dict"):
        Dataset.from_list([0]).write_parquet("x.parquet", schema=["id"])


def test_non_dict_records_are_refused(tmp_path):
    ds = Dataset.from_list([1, 2]).reshard(1).write_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(ZephyrError, match="write_parquet takes dict records; record 0 is int 1"):
        list(ds.execute(SyncBackend()))


def test_empty_shard_writes_a_readable_empty_file(tmp_path):
    path = str(tmp_path / "empty.parquet")
    list(Dataset.from_list([0]).flat_map(lambda _: []).write_parquet(path).execute(SyncBackend()))
    assert pq.read_table(path).num_rows == 0
    assert list(load_parquet(path)) == []


def test_write_parquet_to_memory_filesystem():
    path = "memory://parquet-test/out/x.parquet"
    list(
        Dataset.from_list([0])
        .flat_map(lambda _: RECORDS)
        .write_parquet(path)
        .execute(SyncBackend())
    )
    assert list(load_parquet(path)) == RECORDS
