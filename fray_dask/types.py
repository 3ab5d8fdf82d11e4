"""The plain data of a job: what to run (Entrypoint), where (ResourceConfig and its device), with
what environment (EnvironmentConfig), and what became of it (JobId, JobStatus, JobInfo).

Frozen dataclasses validated on construction. Must import without Dask or Kubernetes installed.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NewType

from fray_dask.devices import CpuConfig, DeviceConfig, GpuConfig, TpuConfig
from fray_dask.secrets import mask, masked_env, secret_values
from fray_dask.sizes import parse_size
from fray_dask.topology import check_multislice

# The device types live in fray_dask.devices; they are names of this module too.
__all__ = [
    "CpuConfig",
    "DeviceConfig",
    "Entrypoint",
    "EnvironmentConfig",
    "GpuConfig",
    "JobFailedError",
    "JobId",
    "JobInfo",
    "JobRequest",
    "JobStatus",
    "ResourceConfig",
    "TaskInfo",
    "TpuConfig",
    "create_environment",
]

JobId = NewType("JobId", str)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


# -- resources --------------------------------------------------------------------------------


class _Constructor:
    """A method that builds a ResourceConfig from the class, or a modified copy from an instance:
    `ResourceConfig.with_gpu("A100", 2)` and `ResourceConfig(cpu=8).with_gpu("A100", 2)`."""

    def __init__(self, fn: Callable[..., dict[str, Any]]):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type) -> Callable[..., ResourceConfig]:
        def build(*args: Any, **kwargs: Any) -> ResourceConfig:
            changes = self.fn(*args, **kwargs)
            if obj is None:
                return owner(**changes)
            return dataclasses.replace(obj, **changes)

        build.__doc__ = self.__doc__
        build.__name__ = self.name
        return build


@dataclass(frozen=True)
class ResourceConfig:
    """What each replica of a job needs: `cpu` cores, `ram` and `disk` (sizes such as "16g",
    "8GB", "512MiB" or bytes), one `device`, and how many `replicas` run.

    For a TPU device a replica is one slice (`replicas=2` is multi-slice). `preemptible=False`
    places the job only on workers that advertise the NON_PREEMPTIBLE resource. `regions` limits
    where a cloud cluster may place it. `ram_bytes`/`disk_bytes` hold the parsed sizes.
    """

    cpu: float = 1
    ram: str | int = "128m"
    disk: str | int = "1g"
    device: DeviceConfig = field(default_factory=CpuConfig)
    replicas: int = 1
    preemptible: bool = True
    regions: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cpu, bool) or not isinstance(self.cpu, int | float) or self.cpu < 0:
            raise ValueError(f"ResourceConfig cpu must be a number of cores >= 0, got {self.cpu!r}")
        parse_size(self.ram, what="ram")
        parse_size(self.disk, what="disk")
        if not isinstance(self.device, CpuConfig | GpuConfig | TpuConfig):
            raise ValueError(
                f"ResourceConfig device must be CpuConfig(), GpuConfig(...) or TpuConfig(...), "
                f"got {self.device!r}"
            )
        replicas = self.replicas
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(
                f"ResourceConfig replicas must be a whole number >= 1, got {self.replicas!r}"
            )
        if isinstance(self.device, TpuConfig):
            check_multislice(self.device.spec, replicas)
        if self.regions is not None:
            if isinstance(self.regions, str):
                raise ValueError(
                    f"ResourceConfig regions must be a list of region names, got the string "
                    f"{self.regions!r}; write regions=[{self.regions!r}]"
                )
            object.__setattr__(self, "regions", tuple(self.regions))

    @property
    def ram_bytes(self) -> int:
        return parse_size(self.ram, what="ram")

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk, what="disk")

    @_Constructor
    def with_cpu(**kwargs: Any) -> dict[str, Any]:
        """A CPU-only config (other fields as keywords)."""
        return {"device": CpuConfig(), **kwargs}

    @_Constructor
    def with_gpu(type: str = "auto", count: int = 1, **kwargs: Any) -> dict[str, Any]:  # noqa: A002
        """`count` GPUs of `type` per replica (other fields as keywords)."""
        return {"device": GpuConfig(type=type, count=count), **kwargs}

    @_Constructor
    def with_tpu(type: str, slice_count: int = 1, **kwargs: Any) -> dict[str, Any]:  # noqa: A002
        """`slice_count` slices of TPU `type` (one replica per slice; other fields as keywords)."""
        return {"device": TpuConfig(type=type), "replicas": slice_count, **kwargs}


# -- environment ------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class EnvironmentConfig:
    """The job's software environment: extra `pip_packages` (installed into a cached isolated
    virtualenv), `env_vars` (set for this job only; secret names such as HF_TOKEN are masked in
    every repr and log), `extras` of this project to install, a `workspace` directory to run in, and
    a `docker_image` for container clusters (GKE)."""

    pip_packages: tuple[str, ...] = ()
    env_vars: Mapping[str, str] = field(default_factory=dict)
    extras: tuple[str, ...] = ()
    workspace: str | None = None
    docker_image: str | None = None

    def __post_init__(self) -> None:
        for name in ("pip_packages", "extras"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(
                    f"EnvironmentConfig {name} must be a list of strings, got the string "
                    f"{value!r}; write {name}=[{value!r}]"
                )
            object.__setattr__(self, name, tuple(value or ()))
        env = dict(self.env_vars or {})
        for k, v in env.items():
            if not isinstance(k, str) or not isinstance(v, str):
                # The value is not shown: it may be a secret.
                raise ValueError(
                    f"EnvironmentConfig env_vars must map strings to strings; {k!r} maps to a "
                    f"{type(v).__name__}; convert the value with str()"
                )
        object.__setattr__(self, "env_vars", env)

    @classmethod
    def create(
        cls,
        pip_packages: Sequence[str] | None = None,
        env_vars: Mapping[str, str] | None = None,
        extras: Sequence[str] | None = None,
        workspace: str | None = None,
        docker_image: str | None = None,
    ) -> EnvironmentConfig:
        """The same as `create_environment(...)`."""
        return cls(
            pip_packages=pip_packages or (),  # __post_init__ checks and converts
            env_vars=dict(env_vars or {}),
            extras=extras or (),
            workspace=workspace,
            docker_image=docker_image,
        )

    def __repr__(self) -> str:
        return (
            f"EnvironmentConfig(pip_packages={list(self.pip_packages)!r}, "
            f"env_vars={masked_env(self.env_vars)!r}, extras={list(self.extras)!r}, "
            f"workspace={self.workspace!r}, docker_image={self.docker_image!r})"
        )


def create_environment(
    pip_packages: Sequence[str] | None = None,
    env_vars: Mapping[str, str] | None = None,
    extras: Sequence[str] | None = None,
    workspace: str | None = None,
    docker_image: str | None = None,
) -> EnvironmentConfig:
    """An EnvironmentConfig; with no arguments, the launching process's own environment."""
    return EnvironmentConfig.create(pip_packages, env_vars, extras, workspace, docker_image)


# -- entrypoint -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entrypoint:
    """What a job runs: a Python `callable` called as `callable(*args, **function_args)`, or a
    `binary` command run with `args` as its arguments. Exactly one of the two.

    A binary given as one string with spaces and no `args` is split like a shell would
    (`Entrypoint(binary="python train.py --steps 10")`).
    """

    callable: Callable[..., Any] | None = None
    function_args: Mapping[str, Any] = field(default_factory=dict)
    binary: str | None = None
    args: Sequence[Any] = ()

    def __post_init__(self) -> None:
        if (self.callable is None) == (self.binary is None):
            given = "both" if self.callable is not None else "neither"
            raise ValueError(
                f"an Entrypoint runs a callable or a binary, and got {given}; "
                "use Entrypoint(callable=fn, function_args={...}) or "
                "Entrypoint(binary='cmd', args=[...])"
            )
        if isinstance(self.args, str):
            raise ValueError(
                f"Entrypoint args must be a list, got the string {self.args!r}; "
                f"write args=[{self.args!r}]"
            )
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "function_args", dict(self.function_args or {}))
        if self.callable is not None:
            if not callable(self.callable):
                raise ValueError(
                    f"Entrypoint callable must be a function or other callable, got "
                    f"{type(self.callable).__name__} {self.callable!r}"
                )
            return
        if self.function_args:
            raise ValueError(
                f"Entrypoint function_args apply to a callable, but this entrypoint runs the "
                f"binary {self.binary!r}; pass command-line arguments as args=[...]"
            )
        if not isinstance(self.binary, str) or not self.binary.strip():
            raise ValueError(f"Entrypoint binary must be a command name, got {self.binary!r}")
        if not self.args and any(c.isspace() for c in self.binary.strip()):
            words = shlex.split(self.binary)
            object.__setattr__(self, "binary", words[0])
            object.__setattr__(self, "args", tuple(words[1:]))
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))

    @classmethod
    def from_callable(
        cls,
        fn: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Entrypoint:
        """Run `fn(*args, **kwargs)`."""
        return cls(callable=fn, args=_sequence(args), function_args=dict(kwargs or {}))

    @classmethod
    def from_binary(cls, command: str, args: Sequence[str] = ()) -> Entrypoint:
        """Run the program `command` with `args`."""
        return cls(binary=command, args=_sequence(args))

    @property
    def description(self) -> str:
        """A short human-readable name: the function's qualified name or the command line."""
        if self.callable is not None:
            fn = self.callable
            while hasattr(fn, "func"):  # functools.partial
                fn = fn.func
            return getattr(fn, "__qualname__", None) or type(fn).__name__
        return shlex.join([self.binary or "", *self.args])


def _sequence(args: Any) -> Any:
    """`args` as a tuple, except a string, which __post_init__ refuses with a hint."""
    return args if isinstance(args, str) else tuple(args)


# -- jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class JobRequest:
    """A job to launch: `name` (letters, digits, `.`, `_`, `-`; no spaces), the `entrypoint`, the
    `resources` of each replica and its `environment`.

    A replica that fails is restarted up to `max_retries_failure` times; one whose worker is lost
    (preemption, a killed node) up to `max_retries_preemption` times.
    """

    name: str
    entrypoint: Entrypoint
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    environment: EnvironmentConfig | None = None
    max_retries_failure: int = 0
    max_retries_preemption: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            hint = ""
            if isinstance(self.name, str) and self.name.strip():
                hint = f"; for example {re.sub(r'[^A-Za-z0-9._-]+', '-', self.name.strip())!r}"
            raise ValueError(
                f"job name {self.name!r} is not allowed: use 1-63 letters, digits, '.', '_' or "
                f"'-', starting with a letter or digit (no spaces){hint}"
            )
        if not isinstance(self.entrypoint, Entrypoint):
            raise ValueError(
                f"JobRequest entrypoint must be an Entrypoint, got {type(self.entrypoint).__name__}"
                "; wrap a function as Entrypoint.from_callable(fn)"
            )
        if not isinstance(self.resources, ResourceConfig):
            raise ValueError(
                f"JobRequest resources must be a ResourceConfig, got {self.resources!r}"
            )
        if self.environment is not None and not isinstance(self.environment, EnvironmentConfig):
            raise ValueError(
                f"JobRequest environment must come from create_environment(...), got "
                f"{type(self.environment).__name__}"
            )
        for name in ("max_retries_failure", "max_retries_preemption"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"JobRequest {name} must be a whole number >= 0, got {value!r}")

    def __repr__(self) -> str:
        # A secret's value is masked wherever it shows: also in arguments, commands and URLs.
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        env = self.environment
        return mask(f"JobRequest({shown})", secret_values(env.env_vars) if env else ())


class JobStatus(enum.StrEnum):
    """The state of a job or of one of its replicas."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    def finished(self) -> bool:
        """True once the job can change no more (succeeded, failed or stopped)."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


@dataclass(frozen=True)
class TaskInfo:
    """One replica of a job: its status, how often it started, failed and was preempted, where it
    runs and why it failed."""

    replica: int
    status: JobStatus
    attempts: int = 0
    failures: int = 0
    preemptions: int = 0
    worker: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of a job: `status` is the job's, `tasks` one TaskInfo per replica, and
    `error_message` the first failing replica's error (secret values masked)."""

    job_id: JobId
    status: JobStatus
    tasks: tuple[TaskInfo, ...] = ()
    name: str = ""
    error_message: str | None = None


class JobFailedError(RuntimeError):
    """A job ended failed or stopped while the caller asked to raise on failure."""

    def __init__(self, info: JobInfo):
        self.info = info
        detail = f": {info.error_message}" if info.error_message else ""
        super().__init__(f"job {info.job_id} ({info.name}) {info.status.value}{detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (JobFailedError, (self.info,))
