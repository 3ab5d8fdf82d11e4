"""NaN and Infinity in JSON Lines: refused by default (naming the field, the file and the shard),
written as Python's json tokens or as null only when asked, and read back as floats.

Split from test_io_jsonl.py along one seam, the writer's `non_finite` option. Real files only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections import OrderedDict

import numpy as np
import pytest

from zephyr import Dataset, SyncBackend, ZephyrError, load_jsonl
from zephyr.io.jsonl import write_jsonl_file

dask = pytest.mark.dask

NAN, INF = float("nan"), float("inf")
# Real nulls, the text "null" and finite floats whose sum overflows to inf sit beside the
# non-finite values: only the latter may be refused.
ORDINARY = [
    {"id": 0, "maybe": None, "text": "null", "xs": [None, 1.5]},
    {"id": 1, "text": "ok", "big": [1e308, 1e308, -1.5]},
]
NON_FINITE = {"x": NAN, "y": INF, "z": -INF, "meta": {"scores": [0.5, 1.0, -INF], "n": None}}


@dataclasses.dataclass
class Point:
    x: float
    y: float


def same(a, b) -> bool:
    """Equality in which NaN equals NaN (json and dict == cannot say so)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def shards(*records_per_shard):
    return Dataset.from_list(records_per_shard).flat_map(lambda rows: rows)


@dask
def test_a_non_finite_float_fails_the_shard_naming_the_field_and_file(backend, tmp_path):
    bad = {"id": 2, "meta": {"scores": [0.5, 1.0, NAN]}}
    pattern = f"{tmp_path}/out/{{shard:05d}}.jsonl"
    with pytest.raises(ZephyrError, match=r"shard 1\b") as info:
        list(backend.execute(shards(ORDINARY, [{"id": 1}, bad]).write_jsonl(pattern)))

    message = str(info.value)
    out_1 = f"{tmp_path}/out/00001.jsonl"
    assert f"{out_1}: record 1 field 'meta.scores[2]' is nan" in message
    assert "non_finite='token'" in message and "non_finite='null'" in message
    assert isinstance(info.value.__cause__, ValueError)
    assert not os.path.exists(out_1)  # nothing written for the failed shard, not even nulls


@pytest.mark.parametrize(
    "record, field, value",
    [
        ({"x": NAN, "y": INF}, "x", "nan"),
        ({"y": 1.0, "z": -INF}, "z", "-inf"),
        ({"a": [{"b": [1.0, INF]}]}, "a[0].b[1]", "inf"),
        ({"x": np.float64("nan")}, "x", "nan"),
        ({"x": np.float32("-inf")}, "x", "-inf"),
        ({"v": np.array([1.0, 2.0, np.nan])}, "v[2]", "nan"),
        ({"big": 2**70, "x": (1, NAN)}, "x[1]", "nan"),  # msgspec refuses 2**70: stdlib path
        ({"xs": [1.5, 2**1100, INF]}, "xs[2]", "inf"),  # msgspec refuses 2**1100 too
        ({"p": [Point(1.0, 2.0), Point(3.0, -INF)]}, "p[1].y", "-inf"),
        (OrderedDict(a=OrderedDict(b=NAN)), "a.b", "nan"),
    ],
    ids=[
        *("top", "neg-inf", "nested", "np.float64", "np.float32", "np.array", "big-int"),
        *("huge-int-list", "dataclass", "dict-subclass"),
    ],
)
def test_non_finite_floats_are_refused_wherever_they_are(tmp_path, record, field, value):
    path = str(tmp_path / "o.jsonl.gz")
    expected = re.escape(f"{path}: record 1 field '{field}' is {value};") + ".*non_finite="
    with pytest.raises(ValueError, match=expected):
        write_jsonl_file([{"ok": None}, record], path)
    assert os.listdir(tmp_path) == []


def test_a_record_that_is_itself_nan_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"record 0 itself is inf"):
        write_jsonl_file([INF], str(tmp_path / "o.jsonl"))


@dask
def test_token_writes_python_json_tokens_that_read_back_as_the_same_floats(backend, tmp_path):
    records = [*ORDINARY, NON_FINITE, {"big": 2**70, "w": NAN}]
    pattern = f"{tmp_path}/{{shard}}.jsonl.zst"
    [path] = backend.execute(shards(records).write_jsonl(pattern, non_finite="token"))
    back = list(load_jsonl(path))
    assert same(back, records)
    assert math.isnan(back[2]["x"]) and back[2]["y"] == INF and back[2]["z"] == -INF

    plain = tmp_path / "plain.jsonl"
    write_jsonl_file([NON_FINITE], str(plain), non_finite="token")
    line = plain.read_text()
    assert "NaN" in line and "-Infinity" in line and "null" in line  # the real None stays null
    assert same(json.loads(line), NON_FINITE)  # what Python's json reads


def test_null_writes_null_when_asked(tmp_path):
    records = [NON_FINITE, {"big": 2**70, "w": np.float32("nan")}]
    [path] = SyncBackend().execute(
        shards(records).write_jsonl(f"{tmp_path}/o.jsonl", non_finite="null")
    )
    assert list(load_jsonl(path)) == [
        {"x": None, "y": None, "z": None, "meta": {"scores": [0.5, 1.0, None], "n": None}},
        {"big": 2**70, "w": None},
    ]


def test_nan_and_infinity_tokens_are_read_as_floats(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"x": NaN, "y": Infinity, "z": -Infinity, "n": null}\n[NaN]\n')
    first, second = load_jsonl(str(path))
    assert math.isnan(first["x"]) and first["y"] == INF and first["z"] == -INF
    assert first["n"] is None and math.isnan(second[0])


def test_read_nan_written_back_keeps_its_value_or_fails(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"x": NaN, "y": Infinity}\n')
    ds = Dataset.from_list([str(src)]).load_jsonl()
    with pytest.raises(ZephyrError, match=r"field 'x' is nan"):
        list(SyncBackend().execute(ds.write_jsonl(f"{tmp_path}/a.jsonl")))
    [path] = SyncBackend().execute(ds.write_jsonl(f"{tmp_path}/b.jsonl", non_finite="token"))
    [back] = load_jsonl(path)
    assert math.isnan(back["x"]) and back["y"] == INF


@pytest.mark.parametrize("value", ["nan", "raise", None, True])
def test_unknown_non_finite_is_refused_when_the_pipeline_is_built(value):
    with pytest.raises(ValueError, match=r"non_finite must be one of \['error', 'token', 'null'\]"):
        Dataset.from_list([1]).write_jsonl("/nonexistent/{shard}.jsonl", non_finite=value)
