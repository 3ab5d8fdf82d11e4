"""The nouns of an executor DAG: `ExecutorStep` (a function, its config, its resources), the
placeholders a config holds (`InputName`, `OutputName`/`THIS_OUTPUT_PATH`, `VersionedValue`), and
their constructors. Plain data: no I/O, no Dask, nothing from the rest of the executor.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fray_dask.types import ResourceConfig

T = TypeVar("T")
ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True, eq=False)
class ExecutorStep(Generic[ConfigT]):
    """One step of a DAG: `fn(config)` run as a fray_dask job with `resources`.

    Its output path is `{prefix}/{name}-{hash}`, the hash taken over its name, the config values
    wrapped in `versioned(...)` and the versions of the steps its config names (`InputName`s, or a
    step itself), so changing any of those gives new outputs and leaves the old ones in place.
    `override_output_path` (absolute, or relative to the prefix) replaces the computed path.
    `pip_dependency_groups` are extras of this project the step's job installs. Steps compare by
    identity; two steps with the same version are run once.
    """

    name: str
    fn: Callable[[Any], Any]
    config: ConfigT
    description: str | None = None
    override_output_path: str | None = None
    resources: ResourceConfig | None = None
    pip_dependency_groups: list[str] | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(
                f"ExecutorStep name must be a non-empty string without surrounding spaces, got "
                f"{self.name!r}; it names the output folder, e.g. 'tokenized/fineweb'"
            )
        if not callable(self.fn):
            raise ValueError(
                f"ExecutorStep {self.name!r} fn must be a function taking the config, got "
                f"{type(self.fn).__name__}"
            )
        if self.resources is not None and not isinstance(self.resources, ResourceConfig):
            raise ValueError(
                f"ExecutorStep {self.name!r} resources must be a ResourceConfig, got "
                f"{self.resources!r}"
            )
        if isinstance(self.pip_dependency_groups, str):
            raise ValueError(
                f"ExecutorStep {self.name!r} pip_dependency_groups must be a list, got the string "
                f"{self.pip_dependency_groups!r}; write [{self.pip_dependency_groups!r}]"
            )

    def cd(self, name: str) -> InputName:
        """The sub-path `name` of this step's output, as an input of another step."""
        return InputName(self, name)

    def __truediv__(self, name: str) -> InputName:
        return self.cd(name)

    def as_input_name(self) -> InputName:
        return InputName(self, None)

    def with_output_path(self, output_path: str) -> ExecutorStep[ConfigT]:
        """This step with `override_output_path` set."""
        return dataclasses.replace(self, override_output_path=output_path)

    def __repr__(self) -> str:
        return f"ExecutorStep(name={self.name!r}, fn={getattr(self.fn, '__qualname__', self.fn)})"


@dataclass(frozen=True)
class InputName:
    """In a config: the output path of `step` joined with `name`. With `step=None` (from
    `InputName.hardcoded`) the path `name` itself, relative to the prefix unless absolute.

    `block_on_step=False` (`.nonblocking()`) keeps the step in the version but does not run it or
    wait for it (for reading a checkpoint of a run still in progress)."""

    step: ExecutorStep | None
    name: str | None = None
    block_on_step: bool = True

    def cd(self, name: str) -> InputName:
        joined = posixpath.join(self.name, name) if self.name else name
        return dataclasses.replace(self, name=joined)

    def __truediv__(self, name: str) -> InputName:
        return self.cd(name)

    @staticmethod
    def hardcoded(path: str) -> InputName:
        """A path outside the DAG (relative paths are under the prefix); it enters the version as
        written."""
        if not isinstance(path, str) or not path:
            raise ValueError(f"InputName.hardcoded needs a path string, got {path!r}")
        return InputName(None, path)

    def nonblocking(self) -> InputName:
        """This input, without waiting for (or running) its step."""
        return dataclasses.replace(self, block_on_step=False)


def output_path_of(step: ExecutorStep, name: str | None = None) -> InputName:
    """The output path of `step` (joined with `name`), as an input of another step."""
    return InputName(step, name)


@dataclass(frozen=True)
class OutputName:
    """In a config: the output path of the step the config belongs to, joined with `name`."""

    name: str | None = None


def this_output_path(name: str | None = None) -> Any:
    """The running step's own output path (joined with `name`), filled in before `fn` runs."""
    return OutputName(name)


#: The running step's output path; usable as a dataclass field default.
THIS_OUTPUT_PATH: Any = OutputName(None)


@dataclass(frozen=True)
class VersionedValue(Generic[T]):
    """A config value that enters the step's version (and so its output path)."""

    value: T


def versioned(value: T) -> T:
    """Marks `value` as part of the step's version: changing it gives the step (and every step
    after it) a new output path. Typed as the value, so a config field keeps its type."""
    if isinstance(value, VersionedValue):
        raise ValueError(f"versioned() got a value that is already versioned: {value!r}")
    if isinstance(value, InputName | OutputName | ExecutorStep):
        raise ValueError(
            f"versioned() got {value!r}; inputs and output paths are always part of the version, "
            "pass them without versioned()"
        )
    return VersionedValue(value)  # type: ignore[return-value]


def ensure_versioned(value: Any) -> VersionedValue:
    """`value` wrapped in `versioned`, unless it already is."""
    return value if isinstance(value, VersionedValue) else VersionedValue(value)


def unwrap_versioned_value(value: Any) -> Any:
    """`value` with every VersionedValue inside it (dataclasses, dicts, lists, tuples) unwrapped."""
    if isinstance(value, VersionedValue):
        return unwrap_versioned_value(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: unwrap_versioned_value(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, dict):
        return {k: unwrap_versioned_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(unwrap_versioned_value(v) for v in value)
    return value
