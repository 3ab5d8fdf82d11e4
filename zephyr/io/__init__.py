"""Readers, writers, atomic outputs and path templates over fsspec (local, memory://, gs://, s3://)."""

from zephyr.io.jsonl import load_jsonl, write_jsonl_file
from zephyr.io.parquet import load_parquet, write_parquet_file
from zephyr.io.paths import render_path
from zephyr.io.readers import load_file, load_zip_members
from zephyr.io.writers import write_binary_file

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
