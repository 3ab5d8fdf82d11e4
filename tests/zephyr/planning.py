"""Named user functions and a dataset the planner tests share: the titles those tests pin show
these names."""

from __future__ import annotations

from zephyr import Dataset


def double(x):
    return 2 * x


def keep_even(x):
    return x % 2 == 0


def explode(x):
    return [x, x]


def passthrough(records, info):
    return records


FILES = tuple(f"/data/raw/part-{i:04d}.jsonl.gz" for i in range(4))


def files_dataset(files=FILES) -> Dataset:
    """A from_files-like dataset that touches no filesystem (the planner only sees the items)."""
    return Dataset.from_list(files).load_jsonl()


class Tokenizer:
    def __call__(self, record):
        return record
