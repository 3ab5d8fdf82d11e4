"""Readers, writers, atomic outputs and path templates over fsspec (local, memory://, gs://,
s3://). The Parquet functions load pyarrow on first use, so importing zephyr stays light."""

from fray_dask.exports import lazy_names
from zephyr.io.jsonl import load_jsonl, write_jsonl_file
from zephyr.io.readers import load_file, load_zip_members
from zephyr.io.writers import write_binary_file
from zephyr.paths import render_path

_LAZY = {"load_parquet": "zephyr.io.parquet", "write_parquet_file": "zephyr.io.parquet"}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)

__all__ = [
    "load_file",
    "load_jsonl",
    "load_parquet",
    "load_zip_members",
    "render_path",
    "write_binary_file",
    "write_jsonl_file",
    "write_parquet_file",
]
