"""The executor's metadata: `output_path/.executor_info` per step (name, function, version, real
config, dependencies, job, times, status) and one JSON per run describing all its steps. Written
through fray_dask.files (whole files only); no Dask.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
import sys
from typing import Any

from fray_dask.executor.status import INFO_FILE, write_text
from fray_dask.executor.versions import (
    HASH_LENGTH,
    PlannedStep,
    join,
    to_json_value,
    version_hash,
)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def describe_config(config: Any) -> Any:
    """The config as JSON data; a value with no JSON form is shown by its repr (the info file
    describes, it does not version)."""
    try:
        return to_json_value(config, "")
    except TypeError:
        pass
    try:
        return json.loads(json.dumps(config, default=repr))
    except (TypeError, ValueError):
        return repr(config)


def fn_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}.{name}" if module else name


def own_version(planned: PlannedStep, paths: dict) -> dict[str, Any]:
    """The step's version with each input's version replaced by its output path (which names
    the input's version hash): the nested version can be too long to write for deep DAGs."""
    version = {
        "name": planned.name,
        "config": planned.version["config"],
        "dependencies": [paths[d] for d in planned.dependencies],
    }
    if planned.nonblocking:
        version["pseudo_dependencies"] = [paths[d] for d in planned.nonblocking]
    return version


def step_info(planned: PlannedStep, paths: dict, **extra: Any) -> dict[str, Any]:
    step = planned.step
    return {
        "name": step.name,
        "fn_name": fn_name(step.fn),
        "description": step.description,
        "version": own_version(planned, paths),
        "version_hash": planned.digest[:HASH_LENGTH],
        "config": describe_config(planned.config),
        "dependencies": [paths[d] for d in planned.dependencies],
        "output_path": planned.output_path,
        "override_output_path": step.override_output_path,
        "resources": repr(step.resources) if step.resources is not None else None,
        "pip_dependency_groups": list(step.pip_dependency_groups or []),
        **extra,
    }


def write_step_info(planned: PlannedStep, paths: dict, **extra: Any) -> None:
    info = step_info(planned, paths, **extra)
    write_text(join(planned.output_path, INFO_FILE), json.dumps(info, indent=2) + "\n")


def caller_name() -> str:
    """The script that runs the DAG, for the run file's name ("python" when interactive)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem if stem and stem != "-c" else "python"


def run_file_path(base: str, steps: list[PlannedStep]) -> str:
    """`{base}/{script}-{hash of the steps' versions}.json`: one file per DAG, rewritten by each
    run of the same DAG."""
    digests = json.dumps(sorted(p.digest for p in steps))
    return join(base, f"{caller_name()}-{version_hash(digests)}.json")


def run_record(
    prefix: str, description: str | None, holder: str, steps: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {
        "prefix": prefix,
        "description": description,
        "caller": caller_name(),
        "argv": list(sys.argv),
        "user": user,
        "host": socket.gethostname(),
        "holder": holder,
        **extra,
        "steps": steps,
    }


def write_run(path: str, record: dict[str, Any]) -> None:
    write_text(path, json.dumps(record, indent=2) + "\n")
