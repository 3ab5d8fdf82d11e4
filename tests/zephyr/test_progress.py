"""Progress: a terminal line that fits the width, periodic log lines elsewhere, and per-stage
summaries numbered within a run, with records in and out."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import time

import pytest

from zephyr import Dataset, SyncBackend
from zephyr.progress import StageProgress
from zephyr.stages import NestedStage, Stage

LONG_NAME = "load_jsonl -> " + "map(normalise_whitespace) -> " * 7 + "write_jsonl"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A fake terminal: what was written, and the lines as they were redrawn."""

    def isatty(self) -> bool:
        return True

    def lines(self) -> list[str]:
        return [part.replace("\x1b[K", "") for part in self.getvalue().split("\r")[1:]]


@contextlib.contextmanager
def zephyr_log(caplog):
    logger = logging.getLogger("zephyr")  # does not propagate to the root logger
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="zephyr"):
            yield
    finally:
        logger.removeHandler(caplog.handler)


def _stage(name: str, index: int = 0) -> Stage:
    # A NestedStage is titled by its label: any title, however long (op titles are cut).
    return NestedStage(index=index, steps=(), num_shards=100_000, inputs=None, label=name)


@pytest.mark.parametrize("columns", [80, 40])
def test_terminal_line_fits_the_width_and_keeps_every_count_whole(columns):
    assert len(LONG_NAME) >= 200
    clock, term = Clock(), Terminal()
    progress = StageProgress(clock=clock, columns=lambda: columns, stream=term, ticker=False)
    progress.start(_stage(LONG_NAME), 100_000, "r7", 3)
    clock.now += 600
    progress.update(12_345, records_in=123_456_789, records_out=1_234_567)
    clock.now += 1
    progress.tick()
    progress.finish()

    lines = term.lines()
    assert len(lines) >= 3 and term.getvalue().endswith("\n")
    assert all(len(line.rstrip("\n")) <= columns - 1 for line in lines)
    last = lines[-1].rstrip("\n")
    # the counts, whole: shards done/total exactly, records in 3 significant digits
    assert "12345/100000" in last and "in 123M" in last and "out 1.23M" in last
    if columns == 80:
        assert last.startswith("[r7 s1/3] load_json") and "...write_jsonl" in last  # name cut
        assert last.endswith(" ETA 1:11:07")  # 12,345 of 100,000 shards took 601 s


def test_a_tiny_terminal_gets_no_line_rather_than_a_wrapped_or_cut_one():
    term = Terminal()
    progress = StageProgress(clock=Clock(), columns=lambda: 12, stream=term, ticker=False)
    progress.start(_stage("map"), 100_000, "r1", 1)
    progress.update(12_345, 123_456_789, 1_234_567)
    progress.tick()
    assert all(line == "" for line in term.lines())


def test_wide_terminal_shows_name_bar_rate_elapsed_and_eta():
    clock, term = Clock(), Terminal()
    progress = StageProgress(clock=clock, columns=lambda: 200, stream=term, ticker=False)
    progress.start(_stage("load_jsonl -> map -> write_jsonl"), 40, "r2", 3)
    clock.now += 10
    progress.update(10, records_in=50_000, records_out=500)
    line = term.lines()[-1]
    assert line == (
        "[r2 s1/3] load_jsonl -> map -> write_jsonl [" + "#" * 7 + "-" * 23 + "] "
        "10/40 shards in 50.0k (5,000/s) out 500 0:10 ETA 0:30"
    )


def test_off_a_terminal_progress_is_a_log_line_every_n_seconds_and_never_a_bar(caplog):
    clock, stream = Clock(), io.StringIO()  # a file, as in CI: not a TTY
    progress = StageProgress(log_every=10, clock=clock, stream=stream, ticker=False)
    with zephyr_log(caplog):
        progress.start(_stage("load_jsonl -> filter"), 4, "r3", 2)
        clock.now += 4
        progress.update(1, records_in=1_000, records_out=10)
        progress.tick()  # 4 s in: nothing yet
        clock.now += 7
        progress.tick()  # 11 s in
        clock.now += 4
        progress.update(1, records_in=1_000, records_out=10)  # 15 s: within 10 s of the last
        clock.now += 6
        progress.tick()  # 21 s
        progress.update(2, records_in=2_000, records_out=20)
        progress.finish()
    assert stream.getvalue() == ""
    assert caplog.messages == [
        "[r3 s1/2] 'load_jsonl -> filter' running: 1/4 shards in 11.0 s, records in 1,000 "
        "(91/s), out 10, ETA 0:33",
        "[r3 s1/2] 'load_jsonl -> filter' running: 2/4 shards in 21.0 s, records in 2,000 "
        "(95/s), out 20, ETA 0:21",
        "[r3 s1/2] 'load_jsonl -> filter': 4/4 shards in 21.0 s, records in 4,000 (190/s), out 40",
    ]


def test_a_pipeline_off_a_terminal_logs_progress_lines_and_writes_no_bar(capsys, caplog):
    backend = SyncBackend()
    backend.progress = StageProgress(log_every=0, stream=io.StringIO())  # a line at every update
    with zephyr_log(caplog):
        out = list(backend.execute(Dataset.from_list(range(5)).flat_map(range).reshard(2)))
    assert out == [x for n in range(5) for x in range(n)]
    assert "\r" not in capsys.readouterr().err
    running = [m for m in caplog.messages if "' running: " in m]
    assert any("s1/2] 'flat_map(range)' running: 5/5 shards" in m for m in running)
    assert any("s2/2] 'reshard' running: 2/2 shards" in m for m in running)
    assert len([m for m in caplog.messages if "' running: " not in m]) == 2  # a summary a stage


def _double(x):
    return 2 * x


def test_two_runs_in_one_process_are_told_apart_and_stages_count_from_one(caplog):
    ds = Dataset.from_list(range(4)).map(_double).reshard(2)
    backend = SyncBackend()
    with zephyr_log(caplog):
        assert list(backend.execute(ds)) == [0, 2, 4, 6]
        assert list(backend.execute(ds)) == [0, 2, 4, 6]
    summaries = re.findall(r"^\[(r\d+) (s\d/\d)\] '([^']*)': ", "\n".join(caplog.messages), re.M)
    (run1, *_), (run2, *_) = summaries[0], summaries[2]
    assert run1 != run2
    assert summaries == [
        (run1, "s1/2", "map(_double)"),
        (run1, "s2/2", "reshard"),
        (run2, "s1/2", "map(_double)"),
        (run2, "s2/2", "reshard"),
    ]


def _keep_every_hundredth(record):
    return record["id"] % 100 == 0


@pytest.mark.dask
def test_a_filter_dropping_99_percent_logs_records_in_and_out(backend, tmp_path, caplog):
    for part in range(4):
        lines = [f'{{"id": {i}}}\n' for i in range(part * 2_500, (part + 1) * 2_500)]
        (tmp_path / f"part-{part}.jsonl").write_text("".join(lines))
    backend.progress = StageProgress(stream=io.StringIO())
    ds = (
        Dataset.from_files(str(tmp_path), "part-*.jsonl")
        .load_jsonl()
        .filter(_keep_every_hundredth)
        .write_jsonl(str(tmp_path / "out" / "{shard}.jsonl"))
    )
    try:
        with zephyr_log(caplog):
            assert len(list(backend.execute(ds))) == 4
    finally:
        backend.progress = StageProgress()
    (summary,) = [
        m
        for m in caplog.messages
        if "load_jsonl -> filter(_keep_every_hundredth) -> write_jsonl':" in m
    ]
    assert re.search(r"4/4 shards in [\d.]+ s, records in 10,000 \([\d,]+/s\), out 100$", summary)


def _wait_for_live_counts(marker: str, x: int) -> int:
    """The stage's last shard waits until the driver has shown records for the stage (the test's
    log handler writes `marker`): the stage cannot end before its progress counted records."""
    if x == 7:
        deadline = time.monotonic() + 20
        while not os.path.exists(marker):
            if time.monotonic() > deadline:
                raise TimeoutError("no live record counts within 20 s")
            time.sleep(0.01)
    return x


class _MarkWhenCounted(logging.Handler):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def emit(self, record: logging.LogRecord) -> None:
        if re.search(r"s1/2\] '[^']*' running: .*records in [1-9]", record.getMessage()):
            open(self.marker, "a").close()


@pytest.mark.dask
def test_a_stage_before_a_reshard_reports_records_while_it_runs(backend, tmp_path, caplog):
    marker = str(tmp_path / "counted")
    gate = functools.partial(_wait_for_live_counts, marker)
    ds = Dataset.from_list(range(8)).map(gate).reshard(2)
    backend.progress = StageProgress(log_every=0, stream=io.StringIO(), ticker=False)
    handler = _MarkWhenCounted(marker)
    logging.getLogger("zephyr").addHandler(handler)
    try:
        with zephyr_log(caplog):
            assert list(backend.execute(ds)) == list(range(8))
    finally:
        logging.getLogger("zephyr").removeHandler(handler)
        backend.progress = StageProgress()
    assert os.path.exists(marker)  # so shard 7 finished after the driver showed live counts
    (summary,) = [m for m in caplog.messages if re.search(r"s1/2\] 'map[^']*':", m)]
    assert re.search(r": 8/8 shards in [\d.]+ s, records in 8 \([\d,]+/s\), out 8$", summary)


def _fails_on_odd(x):
    if x % 2:
        raise ValueError("odd")
    return x


def test_terminal_line_counts_quarantined_records(tmp_path):
    term = Terminal()
    backend = SyncBackend()
    backend.progress = StageProgress(columns=lambda: 120, stream=term, ticker=False)
    ds = Dataset.from_list(range(5)).map(_fails_on_odd, on_error="skip", quarantine=str(tmp_path))
    assert list(backend.execute(ds)) == [0, 2, 4]
    last = term.lines()[-1]
    assert "5/5 shards in 5 " in last and "out 3 2 quarantined" in last


def test_stage_log_line_counts_one_bad_record_in_the_singular(caplog, tmp_path):
    ds = Dataset.from_list(range(2)).map(_fails_on_odd, on_error="skip", quarantine=str(tmp_path))
    with zephyr_log(caplog):
        assert list(SyncBackend().execute(ds)) == [0]
    assert f", 1 bad record quarantined in {tmp_path}/" in caplog.text


def test_a_log_record_during_a_stage_starts_its_own_line_instead_of_joining_the_bar():
    """Another zephyr message (a retry warning) logged while the bar is drawn on the same terminal
    clears the bar's line first, through the handler `import zephyr` installs."""
    from zephyr.progress import BarAwareHandler

    term = Terminal()
    handler = BarAwareHandler(term)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("zephyr")
    assert any(isinstance(h, BarAwareHandler) for h in logger.handlers)  # the default one
    logger.addHandler(handler)
    try:
        progress = StageProgress(clock=Clock(), columns=lambda: 80, stream=term, ticker=False)
        progress.start(_stage("map"), 10, "r1", 1)
        progress.update(3, 30, 30)
        logger.warning("task lost with its worker; retrying")
        progress.finish()
    finally:
        logger.removeHandler(handler)
    rows = [row.split("\r")[-1].replace("\x1b[K", "") for row in term.getvalue().split("\n")]
    assert "task lost with its worker; retrying" in rows  # a row of its own, nothing before it
    assert not any("shards" in row and "retrying" in row for row in rows)
