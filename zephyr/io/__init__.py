"""Readers, writers and path templates over fsspec (local, memory://, gs://, s3://)."""

from zephyr.io.jsonl import load_jsonl, write_jsonl_file
from zephyr.io.paths import render_path

__all__ = ["load_jsonl", "render_path", "write_jsonl_file"]
