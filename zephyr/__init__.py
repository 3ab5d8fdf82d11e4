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
from zephyr.errors import ZephyrError
from zephyr.plan import Plan

# Everything else loads on first use (fray_dask.exports): `import zephyr` and `import zephyr.plan`
# load no fsspec, codec, Dask or pyarrow (the CLI, planning, every worker unpickling a user
# function); `from zephyr import Dataset` loads what pipelines need.
_LAZY = {
    "Backend": "zephyr.backends.base",
    "BackendConfig": "zephyr.backends.base",
    "DaskBackend": "zephyr.backends.dask",
    "Dataset": "zephyr.dataset",
    "ShardInfo": "zephyr.op_kernels",
    "SyncBackend": "zephyr.backends.sync",
    "ThreadBackend": "zephyr.backends.threads",
    "create_backend": "zephyr.backends.config",
    "flow_backend": "zephyr.backends.config",
    "load_file": "zephyr.io.readers",
    "load_jsonl": "zephyr.io.jsonl",
    "load_parquet": "zephyr.io.parquet",
    "load_zip_members": "zephyr.io.readers",
    "parse_memory": "zephyr.backends.settings",
}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)

__all__ = ["Plan", "ZephyrError", *sorted(_LAZY)]

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
