"""Progress bars: on a terminal each stage shows shards done/total and records/s."""

from __future__ import annotations

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
