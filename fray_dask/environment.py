"""What a job's EnvironmentConfig asks of a cluster that runs processes directly (local, Dask): the
packages to install (pip_packages plus this project's extras) and the fields such a cluster cannot
honour (docker_image, regions), which it reports instead of silently dropping.

No Dask import.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re

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
