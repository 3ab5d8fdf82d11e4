"""What a job's EnvironmentConfig asks of a cluster that runs processes directly (local, Dask): the
packages to install (pip_packages plus this project's extras) and the fields such a cluster cannot
honour (docker_image, regions), which it reports instead of silently dropping; and the driver
script's folder, which a job's process gets on its PYTHONPATH.

No Dask import.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys

from fray_dask.types import EnvironmentConfig, JobRequest

logger = logging.getLogger("fray_dask")

DISTRIBUTION = "zephyr-dask"  # this project, whose extras `extras=[...]` names


def _extra_requirements() -> dict[str, list[str]]:
    """This project's extras and their requirements, from the installed distribution."""
    out: dict[str, list[str]] = {}
    for extra in importlib.metadata.metadata(DISTRIBUTION).get_all("Provides-Extra") or []:
        out[extra] = []
    for requirement in importlib.metadata.requires(DISTRIBUTION) or []:
        spec, _, marker = requirement.partition(";")
        match = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if match:
            out.setdefault(match.group(1), []).append(spec.strip())
    return out


def job_packages(environment: EnvironmentConfig | None) -> tuple[str, ...]:
    """The pip requirements a job's virtualenv needs: its pip_packages, then the requirements of
    each of this project's `extras`. Raises ValueError for an extra the project does not have."""
    if environment is None:
        return ()
    packages = list(environment.pip_packages)
    if environment.extras:
        known = _extra_requirements()
        for extra in environment.extras:
            if extra not in known:
                raise ValueError(
                    f"extras={list(environment.extras)!r}: {DISTRIBUTION} has no extra {extra!r}; "
                    f"its extras are {', '.join(sorted(known))}"
                )
            packages.extend(p for p in known[extra] if p not in packages)
    return tuple(packages)


def check_request(request: JobRequest, cluster: str, warned: set[str]) -> None:
    """Validates a request's environment before launch and logs, once per cluster and field, the
    fields `cluster` does not apply (`warned` remembers which were reported)."""
    job_packages(request.environment)
    ignored = []
    if request.environment is not None and request.environment.docker_image:
        ignored.append(
            ("docker_image", "jobs run in the workers' own Python environment; add pip_packages")
        )
    if request.resources.regions:
        ignored.append(("regions", "its workers are wherever they were started"))
    for field, why in ignored:
        if field not in warned:
            warned.add(field)
            logger.warning("%s ignores %s (job %r): %s", cluster, field, request.name, why)


def driver_script_dir() -> str | None:
    """The folder of the script this process runs (`python dir/script.py`), which Python put
    first on its path; None under `python -m`, `-c` or an interactive session. A job gets it on
    its PYTHONPATH, so a callable from a module beside the script (`from helpers import clean`)
    is found in the job's process as in the driver's."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:
        return None
    return os.path.dirname(os.path.abspath(path))


def with_script_dir(env: dict[str, str], script_dir: str | None) -> None:
    """Puts the driver script's folder first on `env`'s PYTHONPATH, where that folder exists
    (not on a worker on another machine)."""
    if script_dir and os.path.isdir(script_dir):
        paths = [script_dir, *env.get("PYTHONPATH", "").split(os.pathsep)]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
