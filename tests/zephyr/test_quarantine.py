"""Bad records (zephyr/quarantine.py and on_error/max_errors on readers and record ops): skipped,
quarantined with their position, counted in the stage log line, bounded by max_errors.

End to end on the reference runner, threads and Dask with the same expectations; real files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import pytest

from tests.zephyr.probes import wait_until_idle
from zephyr import Dataset, SyncBackend, ZephyrError, load_jsonl

BROKEN = {17: b'{"id": 17, "text": "cut', 4_321: b"{'id': 4321}", 9_998: b'{"id": 9998,,}'}


def make_corpus(folder: Path, shards: int = 4, per_shard: int = 2_500) -> list[Path]:
    """`shards` JSON Lines files of `per_shard` lines; line ids are global, the ids in BROKEN are
    malformed lines."""
    folder.mkdir(parents=True)
    paths = []
    for s in range(shards):
        path = folder / f"part-{s}.jsonl"
        lines = []
        for i in range(per_shard):
            n = s * per_shard + i
            lines.append(BROKEN.get(n) or json.dumps({"id": n, "text": f"doc {n}"}).encode())
        path.write_bytes(b"\n".join(lines) + b"\n")
        paths.append(path)
    return paths


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def quarantined(folder: Path) -> list[dict]:
    return [e for p in sorted(folder.glob("*.jsonl")) for e in read_jsonl(p)]


@contextlib.contextmanager
def zephyr_log(caplog):
    logger = logging.getLogger("zephyr")  # does not propagate to the root logger
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)


def fail_on_7s(doc):
    if doc["id"] % 10 == 7:
        raise KeyError("text7")
    return {**doc, "ok": True}


def odd_pred_fails(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x % 4 == 0


def two_then_fail_on_3(x):
    yield x
    yield x * 100
    if x == 3:
        raise RuntimeError("after two outputs")


def many_then_fail(x):
    yield from range(2000)
    raise RuntimeError("after 2000 outputs")


def fail_on_3(x):
    if x == 3:
        raise ValueError("three")
    return x


# -- the case ------------------------------------------------------------------------------
def test_three_broken_lines_among_10000_are_quarantined_with_line_numbers(
    backend, tmp_path, caplog
):
    make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    ds = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .load_jsonl(on_error="skip")
        .write_jsonl(str(out / "{shard:05d}.jsonl.gz"))
    )
    with zephyr_log(caplog), caplog.at_level(logging.INFO, logger="zephyr"):
        paths = list(ds.execute(backend))

    assert len(paths) == 4
    # the outputs: 9,997 records, read back through from_files over the output folder, which
    # leaves the _quarantine/ folder out
    records = list(Dataset.from_files(str(out / "**")).load_jsonl().execute(SyncBackend()))
    assert len(records) == 9_997
    assert sorted(r["id"] for r in records) == [n for n in range(10_000) if n not in BROKEN]

    entries = quarantined(out / "_quarantine")
    assert sorted(os.listdir(out / "_quarantine")) == ["00000.jsonl", "00001.jsonl", "00003.jsonl"]
    assert [(Path(e["file"]).name, e["line"]) for e in entries] == [
        ("part-0.jsonl", 18),
        ("part-1.jsonl", 4_321 - 2_500 + 1),
        ("part-3.jsonl", 9_998 - 7_500 + 1),
    ]
    for e, raw in zip(entries, BROKEN.values(), strict=True):
        assert e["raw"] == raw.decode()
        assert e["op"] == "flat_map(load_jsonl)" and e["error_type"] == "ValueError"
        assert f"line {e['line']}: invalid JSON" in e["error"]
        assert e["stage"] == "load_jsonl -> write_jsonl"
    assert [e["shard"] for e in entries] == [0, 1, 3]
    assert (
        "4/4 shards in " in caplog.text
        and "records in 9,997 (" in caplog.text
        and "out 9,997, 3 bad records" in caplog.text
        and f"3 bad records quarantined in {out}/_quarantine/" in caplog.text
    )


def test_the_reader_on_its_own_skips_bad_lines_and_warns(tmp_path, caplog):
    (path,) = make_corpus(tmp_path / "in", shards=1, per_shard=100)
    with zephyr_log(caplog):
        records = list(load_jsonl(str(path), on_error="skip"))
    assert len(records) == 99 and 17 not in {r["id"] for r in records}
    assert "skipped 1 malformed line(s) of 100" in caplog.text
    with pytest.raises(ValueError, match="line 18: invalid JSON"):
        list(load_jsonl(str(path), on_error="raise"))


# -- record ops ------------------------------------------------------------------------------------
def test_map_that_raises_on_some_records_skips_and_quarantines_them(backend, tmp_path, caplog):
    make_corpus(tmp_path / "in", shards=2, per_shard=50)
    out = tmp_path / "out"
    ds = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .load_jsonl(on_error="skip")
        .map(fail_on_7s, on_error="skip")
        .write_jsonl(str(out / "{shard:05d}.jsonl"))
    )
    with zephyr_log(caplog), caplog.at_level(logging.INFO, logger="zephyr"):
        list(ds.execute(backend))

    kept = read_jsonl(out / "00000.jsonl") + read_jsonl(out / "00001.jsonl")
    assert [r["id"] for r in kept] == [n for n in range(100) if n % 10 != 7]
    entries = quarantined(out / "_quarantine")
    assert len(entries) == 10
    (by_reader,) = [e for e in entries if e["op"] == "flat_map(load_jsonl)"]
    assert by_reader["line"] == 18 and by_reader["raw"] == BROKEN[17].decode()
    by_map = [e for e in entries if e["op"] == "map(fail_on_7s)"]
    assert [e["record"]["id"] for e in by_map] == [7, 27, 37, 47, 57, 67, 77, 87, 97]
    assert by_map[0] == {
        "stage": "load_jsonl -> map -> write_jsonl",
        "shard": 0,
        "file": str(tmp_path / "in" / "part-0.jsonl"),
        "line": 8,
        "op": "map(fail_on_7s)",
        "error_type": "KeyError",
        "error": "'text7'",
        "record": {"id": 7, "text": "doc 7"},
    }
    assert "10 bad records quarantined" in caplog.text


def test_filter_and_flat_map_skip_a_failing_record_whole(backend, tmp_path):
    q = str(tmp_path / "q")
    ds = Dataset.from_list([[0, 1, 2, 3], [4, 5]]).flat_map(lambda xs: xs)
    kept = list(ds.filter(odd_pred_fails, on_error="skip", quarantine=q).execute(backend))
    assert kept == [0, 4]
    assert [e["record"] for e in quarantined(tmp_path / "q")] == [1, 3, 5]

    # flat_map: nothing of a record that raised, although it had yielded two items
    q2 = str(tmp_path / "q2")
    ds = Dataset.from_list([1, 2, 3, 4]).flat_map(
        two_then_fail_on_3, on_error="skip", quarantine=q2
    )
    assert list(ds.execute(backend)) == [1, 100, 2, 200, 4, 400]
    assert sorted(os.listdir(q2)) == ["stage1-00002.jsonl"]
    (entry,) = quarantined(Path(q2))
    assert entry["record"] == 3 and entry["error"] == "after two outputs"


def test_flat_map_that_fails_after_more_outputs_than_it_holds_back_fails(backend, tmp_path):
    ds = Dataset.from_list([1]).flat_map(
        many_then_fail, on_error="skip", quarantine=str(tmp_path / "q")
    )
    with pytest.raises(ZephyrError, match=r"after yielding more than 1024 outputs for one record"):
        list(ds.execute(backend))
    assert not (tmp_path / "q").exists()


# -- max_errors ------------------------------------------------------------------------------------
def test_max_errors_exceeded_in_one_shard_fails_with_the_rule_the_count_and_a_sample(
    backend, tmp_path
):
    ds = (
        Dataset.from_list([list(range(10)), list(range(10, 20))])
        .flat_map(lambda xs: xs)
        .map(fail_on_7s_int, on_error="skip", max_errors=2)
        .write_jsonl(str(tmp_path / "out" / "{shard}.jsonl"))
    )
    # shard 1 alone: 17 is bad (1 <= 2); the stage: 7 and 17 (2 <= 2): it passes
    assert len(list(ds.execute(backend))) == 2
    ds = (
        Dataset.from_list([[7, 17, 27, 1], [2]])
        .flat_map(lambda xs: xs)
        .map(fail_on_7s_int, on_error="skip", max_errors=2)
        .write_jsonl(str(tmp_path / "out2" / "{shard}.jsonl"))
    )
    with pytest.raises(ZephyrError) as info:
        list(ds.execute(backend))
    assert str(info.value).startswith(
        "stage 'flat_map -> map -> write_jsonl': map(fail_on_7s_int) skipped 3 records "
        "(on_error='skip'), more than max_errors=2; first: shard 0: map(fail_on_7s_int) raised "
        "KeyError: 'ends in 7'; fix the input or the function, or raise max_errors"
    )
    wait_until_idle(backend)
    assert not (tmp_path / "out2" / "_quarantine" / "0.jsonl").exists()


def fail_on_7s_int(x):
    if x % 10 == 7:
        raise KeyError("ends in 7")
    return x


def test_max_errors_is_per_stage_across_shards(backend, tmp_path):
    # one bad record per shard: no shard exceeds max_errors=2, the stage does at the third
    ds = (
        Dataset.from_list([[7], [17], [27], [37]])
        .flat_map(lambda xs: xs)
        .map(fail_on_7s_int, on_error="skip", max_errors=2)
        .write_jsonl(str(tmp_path / "out" / "{shard}.jsonl"))
    )
    with pytest.raises(ZephyrError, match=r"skipped 3 records .*more than max_errors=2"):
        list(ds.execute(backend))


def test_a_fraction_bound_compares_with_the_records_the_op_saw(backend, tmp_path):
    q = str(tmp_path / "q")
    ok = Dataset.from_list(range(100)).map(
        fail_on_3, on_error="skip", max_errors=0.02, quarantine=q
    )
    assert len(list(ok.execute(backend))) == 99
    bad = Dataset.from_list(range(20)).map(
        fail_on_3, on_error="skip", max_errors=0.02, quarantine=q
    )
    with pytest.raises(ZephyrError, match=r"skipped 1 of 20 records .*max_errors=0.02 \(2.00%\)"):
        list(bad.execute(backend))


# -- the default, reruns, retries, atomicity -------------------------------------------------------
def test_on_error_raise_fails_fast_and_quarantines_nothing(backend, tmp_path):
    make_corpus(tmp_path / "in", shards=2, per_shard=50)
    out = tmp_path / "out"
    read = Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
    with pytest.raises(ZephyrError, match=r"part-0.jsonl: line 18: invalid JSON"):
        list(
            read.load_jsonl(on_error="raise")
            .write_jsonl(str(out / "{shard}.jsonl"))
            .execute(backend)
        )
    ds = read.load_jsonl(on_error="skip").map(fail_on_7s, on_error="raise")
    with pytest.raises(ZephyrError, match=r"map\(fail_on_7s\) raised KeyError"):
        list(ds.write_jsonl(str(out / "{shard}.jsonl")).execute(backend))
    wait_until_idle(backend)
    assert not (out / "_quarantine").exists()


def test_a_rerun_replaces_quarantine_files_and_skip_existing_keeps_them(backend, tmp_path):
    make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    ds = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .load_jsonl(on_error="skip")
        .write_jsonl(str(out / "{shard:05d}.jsonl"), skip_existing=False)
    )
    list(ds.execute(backend))
    first = quarantined(out / "_quarantine")
    list(ds.execute(backend))
    assert quarantined(out / "_quarantine") == first and len(first) == 3  # not 6

    resume = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .load_jsonl(on_error="skip")
        .write_jsonl(str(out / "{shard:05d}.jsonl"), skip_existing=True)
    )
    (out / "00003.jsonl").unlink()
    stamp = (out / "_quarantine" / "00000.jsonl").stat().st_mtime_ns
    list(resume.execute(backend))
    assert quarantined(out / "_quarantine") == first
    assert (out / "_quarantine" / "00000.jsonl").stat().st_mtime_ns == stamp  # not rewritten

    # the input is fixed and the shard recomputed: its stale quarantine file goes away
    lines = (tmp_path / "in" / "part-3.jsonl").read_bytes().splitlines()
    (tmp_path / "in" / "part-3.jsonl").write_bytes(b"\n".join(lines[:-2] + lines[-1:]) + b"\n")
    (out / "00003.jsonl").unlink()
    list(resume.execute(backend))
    assert sorted(os.listdir(out / "_quarantine")) == ["00000.jsonl", "00001.jsonl"]


class SkipThenCheck:
    """map(on_error='skip') that fails records 0-2 (quarantined), then, on record 3, records what
    the quarantine folder holds at that moment, and fails record 4 for good in a later op."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self, x):
        if x == 3:
            names = sorted(os.listdir(self.folder))
            with open(os.path.join(self.folder, "..", "seen.json"), "w") as f:
                json.dump(names, f)
        if x < 3:
            raise ValueError(f"bad {x}")
        return x


def test_the_quarantine_file_appears_only_when_the_shard_commits(backend, tmp_path):
    out = tmp_path / "out"
    qdir = out / "_quarantine"
    check = SkipThenCheck(str(qdir))
    ds = Dataset.from_list([list(range(6))]).flat_map(lambda xs: xs).map(check, on_error="skip")
    list(ds.write_jsonl(str(out / "part.jsonl")).execute(backend))
    seen = json.loads((out / "seen.json").read_text())
    # while the shard ran, its 3 entries were in a hidden temporary, not at the final path
    assert len(seen) == 1 and seen[0].startswith(".part.jsonl.tmp-")
    assert os.listdir(qdir) == ["part.jsonl"] and len(quarantined(qdir)) == 3

    # a shard that fails after skipping records leaves neither a file nor a temporary
    (qdir / "part.jsonl").unlink()
    failing = ds.map(fail_on_3).write_jsonl(str(out / "part.jsonl"))
    with pytest.raises(ZephyrError, match="ValueError: three"):
        list(failing.execute(backend))
    wait_until_idle(backend)
    assert os.listdir(qdir) == []


def _die_once_after_skipping(marker_dir):
    def fn(x):
        if x < 2:
            raise ValueError(f"bad {x}")
        marker = os.path.join(marker_dir, "died")
        if x == 4 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker dies mid-shard, its quarantine temporary half written
        return x

    return fn


@pytest.mark.dask
def test_a_shard_retried_after_its_worker_died_quarantines_each_record_once(dask_backend, tmp_path):
    out = tmp_path / "out"
    ds = (
        Dataset.from_list([list(range(6))])
        .flat_map(lambda xs: xs)
        .map(_die_once_after_skipping(str(tmp_path)), on_error="skip")
        .write_jsonl(str(out / "part.jsonl"))
    )
    assert list(dask_backend.execute(ds)) == [str(out / "part.jsonl")]
    assert (tmp_path / "died").exists()
    assert [e["record"] for e in quarantined(out / "_quarantine")] == [0, 1]
    assert os.listdir(out / "_quarantine") == ["part.jsonl"]  # the killed attempt's temp is gone


# -- where the quarantine goes ---------------------------------------------------------------------
def test_a_stage_before_a_reshard_quarantines_beside_the_final_outputs(backend, tmp_path, caplog):
    make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    ds = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .load_jsonl(on_error="skip")
        .reshard(2)
        .write_jsonl(str(out / "{shard}.jsonl"))
    )
    with zephyr_log(caplog), caplog.at_level(logging.INFO, logger="zephyr"):
        list(ds.execute(backend))
    assert sorted(os.listdir(out / "_quarantine")) == [
        "stage1-00000.jsonl",
        "stage1-00001.jsonl",
        "stage1-00003.jsonl",
    ]
    assert re.search(
        r"s1/2\] 'load_jsonl': 4/4 shards in .* records in 9,997 .*, out 9,997", caplog.text
    )
    assert "3 bad records quarantined" in caplog.text

    bounded = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .load_jsonl(on_error="skip", max_errors=0.0002)
        .reshard(2)
        .write_jsonl(str(out / "{shard}.jsonl"))
    )
    with pytest.raises(ZephyrError, match=r"skipped 3 of 10000 records"):
        list(bounded.execute(backend))


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda ds: ds.map(str, on_error="ignore"), ValueError, r"on_error='raise'.*got 'ignore'"),
        (lambda ds: ds.filter(bool, max_errors=1.5), ValueError, r"max_errors as an int >= 0"),
        (lambda ds: ds.map(str, max_errors=-1), ValueError, r"got -1"),
        (lambda ds: ds.map(str, quarantine=3), TypeError, r"folder path string"),
        (lambda ds: ds.load_file(on_error="x"), ValueError, "Dataset.flat_map takes on_error="),
    ],
    ids=["on_error", "fraction", "negative", "quarantine", "load_file"],
)
def test_bad_on_error_settings_raise_when_the_op_is_added(build, error, match):
    with pytest.raises(error, match=match):
        build(Dataset.from_list([1]))


def test_parquet_and_zip_readers_refuse_on_error_skip():
    from zephyr import load_zip_members
    from zephyr.io.parquet import load_parquet

    with pytest.raises(ValueError, match=r"load_parquet has no bad records to skip"):
        Dataset.from_list(["a.parquet"]).flat_map(load_parquet, on_error="skip")
    with pytest.raises(ValueError, match=r"load_zip_members has no bad records to skip"):
        Dataset.from_list(["a.zip"]).flat_map(load_zip_members, on_error="skip")


def test_long_records_and_lines_are_cut_in_the_quarantine(backend, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"x": ' + "1" * 40_000 + "\n" + '{"id": 7}\n')
    out = tmp_path / "out"
    big = {"id": 7, "text": "y" * 40_000}
    ds = (
        Dataset.from_files(str(tmp_path / "in"), "*.jsonl")
        .load_jsonl(on_error="skip")
        .map(lambda r: {**r, **big})
        .map(fail_on_7s, on_error="skip")
        .write_jsonl(str(out / "{basename}.jsonl"))
    )
    list(ds.execute(backend))
    raw, rec = quarantined(out / "_quarantine")
    assert raw["truncated"] and len(raw["raw"]) == 16 * 1024 and raw["line"] == 1
    assert rec["truncated"] and rec["record_json"].startswith('{"id":7,"text":"yyy')
    assert len(rec["record_json"]) == 16 * 1024 and "record" not in rec and rec["line"] == 2
