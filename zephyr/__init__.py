r"""Zephyr: lazy Dataset pipelines for ML data processing, executed on Dask (or threads, or
in-process).

Example (a complete script; it writes a tiny corpus into the current folder, then cleans it):

    import gzip, json, os
    from zephyr import Dataset, flow_backend, load_jsonl

    os.makedirs("raw", exist_ok=True)
    with gzip.open("raw/part-0.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "a long document " * 10}) + "\n")
        f.write(json.dumps({"text": "too short"}) + "\n")

    pipeline = (
        Dataset.from_files("raw/", "*.jsonl.gz")
        .flat_map(load_jsonl)
        .filter(lambda doc: len(doc["text"]) > 100)
        .write_jsonl("clean/{shard:05d}.jsonl.gz")
    )
    written = list(flow_backend().execute(pipeline))
    print(written)  # ['clean/00000.jsonl.gz'], holding the long document
"""

import logging as _logging

from fray_dask.exports import lazy_names
from zephyr.backends.base import Backend, BackendConfig
from zephyr.backends.config import create_backend, flow_backend, parse_memory
from zephyr.backends.sync import SyncBackend
from zephyr.backends.threads import ThreadBackend
from zephyr.dataset import Dataset
from zephyr.errors import ZephyrError
from zephyr.io.jsonl import load_jsonl
from zephyr.io.readers import load_file, load_zip_members
from zephyr.kernels import ShardInfo
from zephyr.plan import Plan

# DaskBackend loads distributed and load_parquet pyarrow, on first use: `import zephyr` stays light
# (the CLI, and every worker unpickling a user function).
_LAZY = {"DaskBackend": "zephyr.backends.dask", "load_parquet": "zephyr.io.parquet"}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)

__all__ = [
    "Backend",
    "BackendConfig",
    "DaskBackend",
    "Dataset",
    "Plan",
    "ShardInfo",
    "SyncBackend",
    "ThreadBackend",
    "ZephyrError",
    "create_backend",
    "flow_backend",
    "load_file",
    "load_jsonl",
    "load_parquet",
    "load_zip_members",
    "parse_memory",
]

# One log line per stage and the dashboard URL reach stderr unless the application configures
# logging.
_logger = _logging.getLogger("zephyr")
if not _logger.handlers:
    from zephyr.progress import BarAwareHandler as _BarAwareHandler

    _handler = _BarAwareHandler()
    _handler.setFormatter(_logging.Formatter("%(asctime)s zephyr %(levelname)s %(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(_logging.INFO)
    _logger.propagate = False
