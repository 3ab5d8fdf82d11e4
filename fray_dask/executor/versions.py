"""Versions and output paths of a DAG's steps, and the configs handed to their functions.

A step's version is `{"name", "config": {dotted key: versioned value or input}, "dependencies":
[their versions]}` (plus "pseudo_dependencies" for non-blocking inputs); its output path is
`{prefix}/{name}-{md5(sorted JSON)[:6]}`, the scheme of Marin's executor, so a DAG moved here keeps
its output paths. Pure: no I/O, no Dask.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from fray_dask.executor.steps import ExecutorStep, InputName, OutputName, VersionedValue

logger = logging.getLogger("fray_dask.executor")

HASH_LENGTH = 6


@dataclass
class PlannedStep:
    """A step with its version, output path, real config and the steps it waits for."""

    step: ExecutorStep
    version: dict[str, Any]  # nests the versions of its inputs (shared, not copied)
    digest: str  # md5 of the version's sorted JSON; output paths take its first 6 digits
    output_path: str
    config: Any
    dependencies: list[ExecutorStep] = field(default_factory=list)  # canonical, blocking
    nonblocking: list[ExecutorStep] = field(default_factory=list)  # canonical, not waited for
    pseudo_only: bool = False  # reached only through .nonblocking() inputs: not run

    @property
    def name(self) -> str:
        return self.step.name


def to_json_value(value: Any, where: str) -> Any:
    """`value` as JSON data, for versions and info files. Dataclasses become dicts, enums their
    value, tuples and sets lists (sets sorted), paths and numpy scalars plain values; anything
    else raises TypeError naming the config key, since `str()` of an arbitrary object is no stable
    version."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, VersionedValue):
        return to_json_value(value.value, where)
    if isinstance(value, enum.Enum):
        return to_json_value(value.value, where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json_value(getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(k): to_json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        return sorted((to_json_value(v, where) for v in value), key=repr)
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        return value.item()  # a numpy scalar
    if isinstance(value, InputName | OutputName | ExecutorStep):
        return repr(value)
    raise TypeError(
        f"config value at {where or 'the top'!r} is a {type(value).__name__} ({value!r:.80}), "
        "which has no stable JSON form for the step's version and info file; use numbers, "
        "strings, lists, dicts or dataclasses of them (or leave it out of versioned())"
    )


def _collect(config: Any) -> tuple[dict[str, Any], list[ExecutorStep], list[ExecutorStep]]:
    """The versioned values and inputs of `config` by dotted key, and the steps it names
    (blocking, then non-blocking), in the order they appear."""
    version: dict[str, Any] = {}
    blocking: list[ExecutorStep] = []
    pseudo: list[ExecutorStep] = []

    def walk(obj: Any, key: str) -> None:
        prefix = f"{key}." if key else ""
        if isinstance(obj, ExecutorStep):
            obj = InputName(obj, None)
        if isinstance(obj, VersionedValue):
            version[key] = to_json_value(obj.value, key)
        elif isinstance(obj, InputName):
            if obj.step is None:
                version[key] = obj.name
                return
            index = len(blocking) + len(pseudo)
            (blocking if obj.block_on_step else pseudo).append(obj.step)
            version[key] = f"DEP[{index}]" + (f"/{obj.name}" if obj.name else "")
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), prefix + f.name)
        elif isinstance(obj, list | tuple):
            for i, item in enumerate(obj):
                walk(item, f"{prefix}[{i}]")
        elif isinstance(obj, dict):
            for k, item in obj.items():
                if not isinstance(k, str):
                    raise ValueError(
                        f"config dict keys must be strings (they name versioned values), got "
                        f"{k!r} under {key or 'the top'!r}"
                    )
                walk(item, prefix + k)

    walk(config, "")
    return version, blocking, pseudo


def join(path: str, name: str | None) -> str:
    return posixpath.join(path, name) if name else path


def under_prefix(prefix: str, path: str) -> str:
    """`path` if absolute (`/x`, `gs://x`), else joined to the prefix."""
    return path if path.startswith("/") or "://" in path else join(prefix, path)


def instantiate(config: Any, own_path: str, paths: dict[ExecutorStep, str], prefix: str) -> Any:
    """`config` with every InputName, OutputName and step replaced by its path and every
    VersionedValue by its value."""

    def real(obj: Any) -> Any:
        if isinstance(obj, ExecutorStep):
            obj = InputName(obj, None)
        if isinstance(obj, InputName):
            if obj.step is None:
                return under_prefix(prefix, obj.name or "")
            return join(paths[obj.step], obj.name)
        if isinstance(obj, OutputName):
            return join(own_path, obj.name)
        if isinstance(obj, VersionedValue):
            return real(obj.value)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = [f for f in dataclasses.fields(obj) if f.init]
            changes = {f.name: real(getattr(obj, f.name)) for f in fields}
            return dataclasses.replace(obj, **changes)
        if isinstance(obj, list):
            return [real(x) for x in obj]
        if isinstance(obj, tuple):
            items = [real(x) for x in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
        if isinstance(obj, dict):
            return {k: real(v) for k, v in obj.items()}
        return obj

    return real(config)


def version_hash(version_json: str) -> str:
    return hashlib.md5(version_json.encode()).hexdigest()[:HASH_LENGTH]


def compose_json(
    name: str, config: dict[str, Any], dependencies: list[str], pseudo: list[str] | None
) -> str:
    """`json.dumps(version, sort_keys=True)` built from the JSON of the inputs' versions, which
    is how it is computed once per step instead of once per path through the DAG (a version
    nests its inputs' versions, so its text doubles with each layer of steps that read two)."""
    parts = [
        f'"config": {json.dumps(config, sort_keys=True)}',
        f'"dependencies": [{", ".join(dependencies)}]',
        f'"name": {json.dumps(name)}',
    ]
    if pseudo is not None:
        parts.append(f'"pseudo_dependencies": [{", ".join(pseudo)}]')
    return "{" + ", ".join(parts) + "}"


class StepGraph:
    """Every step reachable from the given ones, each once per version, in dependency order."""

    def __init__(self, prefix: str, steps: list[ExecutorStep | InputName]):
        self.prefix = prefix.rstrip("/") or prefix
        self.planned: dict[ExecutorStep, PlannedStep] = {}  # every step object seen
        self.order: list[PlannedStep] = []  # canonical steps, dependencies first
        self._by_version: dict[str, PlannedStep] = {}  # by digest
        self._json: dict[str, str] = {}  # each version's JSON by digest, while planning
        self._by_path: dict[str, PlannedStep] = {}
        self.paths: dict[ExecutorStep, str] = {}
        for item in steps:
            step = item.step if isinstance(item, InputName) else item
            if step is None:
                continue
            if not isinstance(step, ExecutorStep):
                raise TypeError(
                    f"Executor.run takes ExecutorSteps (or InputNames of them), got "
                    f"{type(step).__name__} {step!r:.80}"
                )
            self._plan(step, pseudo=False)
        self._json.clear()

    def _plan(self, step: ExecutorStep, pseudo: bool) -> PlannedStep:
        known = self.planned.get(step)
        if known is not None:
            if not pseudo:
                known.pseudo_only = False
                for dep in known.dependencies:  # now run: so must what it waits for
                    self._plan(dep, pseudo=False)
            return known
        config_version, blocking, nonblocking = _collect(step.config)
        deps = [self._plan(dep, pseudo) for dep in blocking]
        pseudo_deps = [self._plan(dep, True) for dep in nonblocking]
        version: dict[str, Any] = {
            "name": step.name,
            "config": config_version,
            "dependencies": [d.version for d in deps],
        }
        if pseudo_deps:  # absent otherwise, so that the hash of other steps does not change
            version["pseudo_dependencies"] = [d.version for d in pseudo_deps]
        version_json = compose_json(
            step.name,
            config_version,
            [self._json[d.digest] for d in deps],
            [self._json[d.digest] for d in pseudo_deps] if pseudo_deps else None,
        )
        digest = hashlib.md5(version_json.encode()).hexdigest()
        same = self._by_version.get(digest)
        if same is not None:
            logger.info("steps named %s have the same version: run once", step.name)
            self.planned[step] = same
            self.paths[step] = same.output_path
            if not pseudo:
                same.pseudo_only = False
            return same
        self._json[digest] = version_json
        path = join(self.prefix, f"{step.name}-{digest[:HASH_LENGTH]}")
        if step.override_output_path is not None:
            override = under_prefix(self.prefix, step.override_output_path)
            if override != path:
                logger.warning(
                    "step %s: override_output_path %s differs from its computed path %s; "
                    "using the override",
                    step.name,
                    override,
                    path,
                )
            path = override
        clash = self._by_path.get(path)
        if clash is not None:
            raise ValueError(
                f"steps {clash.name!r} and {step.name!r} have different versions but the same "
                f"output path {path} (override_output_path); give one of them another path"
            )
        self.paths[step] = path
        planned = PlannedStep(
            step=step,
            version=version,
            digest=digest,
            output_path=path,
            config=instantiate(step.config, path, self.paths, self.prefix),
            dependencies=[d.step for d in deps],
            nonblocking=[d.step for d in pseudo_deps],
            pseudo_only=pseudo,
        )
        self.planned[step] = planned
        self._by_version[digest] = planned
        self._by_path[path] = planned
        self.order.append(planned)
        return planned

    def of(self, step: ExecutorStep) -> PlannedStep:
        return self.planned[step]
