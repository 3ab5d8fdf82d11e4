"""Progress bars: on a terminal each stage shows shards done/total and records/s."""

from __future__ import annotations

import logging

from zephyr import Dataset, SyncBackend
from zephyr.progress import StageProgress


def test_terminal_bar_counts_shards_and_records(capsys):
    backend = SyncBackend()
    backend.progress = StageProgress(live=True)
    out = list(backend.execute(Dataset.from_list(range(5)).flat_map(range).reshard(2)))
    assert out == [x for n in range(5) for x in range(n)]
    err = capsys.readouterr().err
    assert "stage 0 flat_map: 5/5 shards" in err
    assert "stage 1 reshard: 2/2 shards" in err
    assert "records/s" in err


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    backend = SyncBackend()
    backend.progress = StageProgress(live=False)
    assert list(backend.execute(Dataset.from_list([1]))) == [1]
    assert "shards" not in capsys.readouterr().err


def _fails_on_odd(x):
    if x % 2:
        raise ValueError("odd")
    return x


def test_terminal_bar_counts_quarantined_records(capsys, tmp_path):
    backend = SyncBackend()
    backend.progress = StageProgress(live=True)
    ds = Dataset.from_list(range(5)).map(_fails_on_odd, on_error="skip", quarantine=str(tmp_path))
    assert list(backend.execute(ds)) == [0, 2, 4]
    last = capsys.readouterr().err.rstrip("\n").split("\r")[-1]
    assert "stage 0 map: 5/5 shards" in last and last.endswith(", 2 quarantined")


def test_stage_log_line_counts_one_bad_record_in_the_singular(caplog, tmp_path):
    ds = Dataset.from_list(range(2)).map(_fails_on_odd, on_error="skip", quarantine=str(tmp_path))
    logger = logging.getLogger("zephyr")  # does not propagate to the root logger
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="zephyr"):
            assert list(SyncBackend().execute(ds)) == [0]
    finally:
        logger.removeHandler(caplog.handler)
    assert f", 1 bad record quarantined in {tmp_path}/" in caplog.text
