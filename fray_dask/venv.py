"""Run a callable or a command in a cached virtualenv that adds pip packages on top of the parent
environment (replaces Ray's `runtime_env`). Imports only the standard library, cloudpickle and
fray_dask.secrets/pickling/runner; never installs into, or changes, the parent environment."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cloudpickle

from fray_dask.pickling import dumps
from fray_dask.secrets import mask, masked_env, secret_values

logger = logging.getLogger(__name__)

_MARKER = ".fray-complete"
# The overlay .pth sorts after the venv's own .pth files, so paths they add (editable installs)
# precede the parent's. Its first line appends the parent's non-site sys.path entries (script dir,
# PYTHONPATH, a test runner's rootdir) passed by environ() at run time: they vary between parents
# sharing one cached venv. Then the parent's site dirs, through site.addsitedir so that their own
# .pth files run too (finder-based editable installs); these are fixed by sys.prefix, in the key.
_PARENT_PTH = "zz_fray_parent.pth"
_PARENT_PATH_VAR = "FRAY_VENV_PARENT_PATH"
_DYNAMIC_LINE = (
    f"import os, sys; sys.path.extend(p for p in os.environ.get({_PARENT_PATH_VAR!r}, '')"
    ".split(os.pathsep) if p and p not in sys.path)"
)
_MIN_PIP = (22, 3)  # `pip --python`


class VirtualEnvError(RuntimeError):
    """Building an isolated virtualenv failed: pip failed, timed out or is missing/too old."""


class RemoteTraceback(Exception):
    """The child's traceback text (its str); the `__cause__` of an exception `run` re-raises."""


class CommandError(subprocess.CalledProcessError):
    """A command in the venv exited nonzero; the message ends with its stderr, secrets masked."""

    def __str__(self) -> str:
        text = mask(super().__str__(), secret_values(os.environ))
        return text + (f" Last lines of stderr:\n{_tail(self.stderr)}" if self.stderr else "")


def _tail(text: str | bytes | None, n: int = 20) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return mask("\n".join((text or "").splitlines()[-n:]), secret_values(os.environ))


def _parent_dirs() -> tuple[list[str], list[str]]:
    """The parent's sys.path directories as (site dirs, others), in order. The standard library,
    '' and non-directories (zips) are left out: the venv's interpreter has its own stdlib."""
    stdlib = {os.path.realpath(sysconfig.get_path(n)) for n in ("stdlib", "platstdlib")}
    user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    site_dirs = {os.path.realpath(d) for d in [*site.getsitepackages(), *user]}
    sites: list[str] = []
    others: list[str] = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry and os.path.isdir(entry) else None
        if real is None or real in sites or real in others:
            continue
        in_stdlib = any(real == s or real.startswith(s + os.sep) for s in stdlib)
        if in_stdlib and not {"site-packages", "dist-packages"} & set(real.split(os.sep)):
            continue
        (sites if real in site_dirs else others).append(real)
    return sites, others


def _try_lock(f: Any) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _check_pip() -> None:
    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        version = None
    numbers = tuple(int(p) for p in (version or "0").split(".")[:2] if p.isdigit())
    if numbers < _MIN_PIP:
        raise VirtualEnvError(
            f"IsolatedVirtualEnv installs packages with the parent's pip >= 22.3 (for --python), "
            f"found {version or 'no pip'} in {sys.executable}; "
            f"run `{sys.executable} -m pip install -U 'pip>=22.3'`"
        )


class IsolatedVirtualEnv:
    """A virtualenv with `packages` installed, layered over the parent environment.

    The venv is built once per (package set, parent interpreter) under `cache_dir` (default
    `$FRAY_VENV_CACHE` or `~/.cache/fray_dask/venvs`) and reused by later instances and processes.
    Its own packages come first on the child's sys.path; everything else (cloudpickle, fray_dask,
    the parent's installed modules) falls back to the parent's sys.path at the time of the run.
    `env` is added to the child's environment only. Leaving the `with` block keeps the cache.

        with IsolatedVirtualEnv(["x==1.0"], env={"Z": "1"}) as venv:
            venv.run(fn, arg)                            # fn(arg) in the venv; returns its value
            venv.run(["python", "-c", "import x"])      # a command; returns CompletedProcess
    """

    def __init__(
        self,
        packages: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        build_timeout: float = 900.0,
    ):
        if isinstance(packages, str):
            raise TypeError(f"packages must be a sequence of specs, got the string {packages!r}")
        self._packages = tuple(p.strip() for p in packages if p.strip())
        self._env = dict(env or {})
        default = os.environ.get("FRAY_VENV_CACHE") or "~/.cache/fray_dask/venvs"
        self._cache_dir = os.path.abspath(os.path.expanduser(os.fspath(cache_dir or default)))
        self._build_timeout = build_timeout
        identity = json.dumps([sorted(self._packages), sys.version, sys.prefix])
        self._key = hashlib.sha256(identity.encode()).hexdigest()[:16]

    packages = property(
        lambda self: self._packages, doc="The package specs, stripped, in the given order."
    )
    env = property(lambda self: dict(self._env), doc="A copy of the extra environment variables.")
    path = property(lambda self: os.path.join(self._cache_dir, self._key), doc="The venv dir.")

    @property
    def python(self) -> str:
        """The venv's interpreter; builds the venv first if needed."""
        self.ensure()
        return os.path.join(self.path, "bin", "python")

    def __repr__(self) -> str:
        return (
            f"IsolatedVirtualEnv(packages={list(self._packages)!r}, env={masked_env(self._env)!r})"
        )

    def __enter__(self) -> IsolatedVirtualEnv:
        return self.ensure()

    def __exit__(self, *exc: object) -> None:
        """Keeps the venv: the cache outlives the block."""

    def ensure(self) -> IsolatedVirtualEnv:
        """Build the venv unless a complete one exists; blocks (up to build_timeout waiting for
        another process's build of the same key, and up to build_timeout per build step)."""
        if os.path.exists(os.path.join(self.path, _MARKER)):
            return self
        os.makedirs(self._cache_dir, exist_ok=True)
        lock_path = f"{self.path}.lock"
        with open(lock_path, "a") as lock:
            deadline = time.monotonic() + self._build_timeout
            while not _try_lock(lock):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {self._build_timeout}s for the build lock {lock_path} (another "
                        f"process is building {list(self._packages)}); raise build_timeout, or "
                        "look for a hung pip holding the lock"
                    )
                time.sleep(0.1)
            try:  # the lock is released when the file closes, also if this process dies
                if not os.path.exists(os.path.join(self.path, _MARKER)):
                    self._build()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return self

    def _build(self) -> None:
        if os.path.exists(self.path):  # a build that was killed before writing the marker
            logger.warning("removing the incomplete virtualenv %s and rebuilding it", self.path)
            shutil.rmtree(self.path)
        if self._packages:
            _check_pip()
        logger.info("building a virtualenv with %s at %s", list(self._packages), self.path)
        try:
            self._step([sys.executable, "-m", "venv", "--without-pip", self.path], "python -m venv")
            if self._packages:  # before the overlay .pth, so pip sees only the venv's packages
                venv_python = os.path.join(self.path, "bin", "python")
                opts = ["--disable-pip-version-check", "--no-input"]
                pip = [sys.executable, "-m", "pip", "--python", venv_python, "install", *opts]
                self._step([*pip, *self._packages], "pip install")
            dirs = {"base": self.path, "platbase": self.path}
            purelib = sysconfig.get_path("purelib", "venv", dirs)
            sites = [f"import site; site.addsitedir({d!r})" for d in _parent_dirs()[0]]
            with open(os.path.join(purelib, _PARENT_PTH), "w") as f:
                f.write("\n".join([_DYNAMIC_LINE, *sites, ""]))
            marker = {"packages": list(self._packages), "pid": os.getpid(), "built_at": time.time()}
            with open(os.path.join(self.path, _MARKER + ".tmp"), "w") as f:
                json.dump(marker, f)
            os.replace(os.path.join(self.path, _MARKER + ".tmp"), os.path.join(self.path, _MARKER))
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _step(self, cmd: list[str], what: str) -> None:
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=self._build_timeout, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise VirtualEnvError(
                f"{what} for packages {list(self._packages)} did not finish within "
                f"{self._build_timeout}s; raise build_timeout or check the package index. "
                f"Last output:\n{_tail(e.output)}"
            ) from None
        if proc.returncode != 0:
            raise VirtualEnvError(
                f"{what} for packages {list(self._packages)} failed with exit code "
                f"{proc.returncode}; check the specs and the package index. "
                f"Last output:\n{_tail(proc.stdout)}"
            )

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for a child in the venv: `base` (default os.environ) + `env`, with
        VIRTUAL_ENV set, the venv's bin first on PATH, PYTHONHOME removed, and the parent's
        current non-site sys.path entries in FRAY_VENV_PARENT_PATH (read by the overlay .pth)."""
        out = dict(os.environ if base is None else base)
        out.update(self._env)
        out["VIRTUAL_ENV"] = self.path
        bin_dir = os.path.join(self.path, "bin")
        out["PATH"] = os.pathsep.join(p for p in (bin_dir, out.get("PATH")) if p)
        out.pop("PYTHONHOME", None)
        out[_PARENT_PATH_VAR] = os.pathsep.join(_parent_dirs()[1])
        return out

    def run(self, target: Any, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run in the venv, blocking until done or killed after `timeout` seconds.

        A command (a str, split with shlex, or a list of str; a leading "python"/"python3" means
        the venv's) returns its CompletedProcess with text stdout/stderr, or raises CommandError
        (a CalledProcessError) if it exits nonzero, subprocess.TimeoutExpired on timeout. A
        callable is called as target(*args, **kwargs) in a child interpreter (its output goes to
        this process's stdout/stderr) and its return value comes back; an exception it raises is
        re-raised here with the child's traceback as `__cause__`; TimeoutError on timeout.
        """
        if isinstance(target, str):
            target = shlex.split(target)
        if isinstance(target, list | tuple) and target and all(isinstance(a, str) for a in target):
            if args or kwargs:
                raise TypeError(f"run({target!r}) takes a command alone, got extra {args}{kwargs}")
            cmd = list(target)
            if cmd[0] in ("python", "python3"):
                cmd[0] = self.python
            self.ensure()
            proc = subprocess.run(
                cmd, env=self.environ(), capture_output=True, text=True, timeout=timeout
            )
            if proc.returncode != 0:
                raise CommandError(proc.returncode, cmd, output=proc.stdout, stderr=proc.stderr)
            return proc
        if callable(target):
            return self._call(target, args, kwargs, timeout)
        raise TypeError(
            "run() takes a callable, a command string or a list of str, got "
            f"{type(target).__name__} {target!r:.80}; pass e.g. venv.run(fn, arg) or "
            "venv.run(['python', '-c', '...'])"
        )

    def _call(self, fn: Any, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        name = getattr(fn, "__qualname__", repr(fn))
        with tempfile.TemporaryDirectory(prefix="fray-venv-") as tmp:
            payload, result = os.path.join(tmp, "payload.pkl"), os.path.join(tmp, "result.pkl")
            with open(payload, "wb") as f:
                f.write(dumps((fn, args, kwargs)))
            cmd = [self.python, "-m", "fray_dask.runner", payload, result]
            try:
                code = subprocess.run(cmd, env=self.environ(), timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                raise TimeoutError(
                    f"{name} ran longer than timeout={timeout}s in the venv {self.path} and was "
                    "killed; pass a larger timeout, or None to wait for as long as it takes"
                ) from None
            if not os.path.exists(result):
                how = (
                    f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
                )
                raise RuntimeError(
                    f"{name} in the venv {self.path} {how} without reporting a result; likely "
                    "cause: the child ran out of memory, was killed, or fray_dask is not importable"
                )
            with open(result, "rb") as f:
                try:
                    outcome = cloudpickle.load(f)
                except Exception as e:
                    what = "return value" if code == 0 else "exception (traceback on stderr above)"
                    raise RuntimeError(
                        f"the {what} of {name} from the venv cannot be unpickled in the parent "
                        f"({e!r}); its type likely comes from a package only the venv has: "
                        "return or raise plain types (str, dict, builtin exceptions) instead"
                    ) from None
        if outcome[0] == "ok":
            return outcome[1]
        _, exc, text = outcome
        if isinstance(exc, Exception):
            raise exc from RemoteTraceback(text)
        raise RuntimeError(f"{name} failed in the venv {self.path}:\n{text}")
