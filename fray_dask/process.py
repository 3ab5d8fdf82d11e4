"""One replica of a job as a child process: its command line and environment, its output read
line by line, its exit turned into an outcome (with the callable's saved result), a kill that
reaches its whole process group, and the work directories it leaves to sweep.

No Dask import: the local cluster runs this in the driver, the Dask cluster inside a worker task.
"""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cloudpickle

from fray_dask.environment import driver_script_dir, job_packages, with_script_dir
from fray_dask.pickling import dumps
from fray_dask.secrets import mask, secret_values
from fray_dask.types import EnvironmentConfig, JobRequest, JobStatus
from fray_dask.workdirs import workdir_prefix

# A replica's output reaches the driver in batches: whichever comes first of this many lines,
# this many characters, or this many seconds since the batch began.
BATCH_LINES = 500
BATCH_CHARS = 1 << 20
BATCH_SECONDS = 0.1
# Longer lines are cut: a progress bar without newlines must not become one unbounded line.
MAX_LINE_CHARS = 64 * 1024
# After SIGTERM the replica's process group has this long to exit before SIGKILL.
KILL_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Outcome:
    """How one run of a replica ended: succeeded, failed (with a message) or stopped.

    `result` is what a callable's runner saved, still pickled: `("ok", value)` or
    `("error", exception_or_None, traceback_text)` (None for a binary, or when nothing was saved).
    """

    status: JobStatus
    error_message: str | None = None
    exit_code: int | None = None
    lines: int = 0
    result: bytes | None = None


@dataclass(frozen=True)
class Launch:
    """Everything one replica's process needs, picklable as one small value: the job's name and
    environment, the serialized callable (or the binary and its args), the replica's index and
    the cluster spec the job should see. (Not the request itself: its callable would travel twice.)
    """

    job_id: str
    name: str
    environment: EnvironmentConfig | None
    payload: bytes | None  # cloudpickle((fn, args, kwargs)) for a callable entrypoint
    binary: str | None
    args: tuple[str, ...]
    replica: int
    replica_count: int
    cluster_spec: str
    script_dir: str | None = None  # the driver script's folder: on the job's PYTHONPATH

    @classmethod
    def of(
        cls, job_id: str, request: JobRequest, payload: bytes | None, replica: int, count: int,
        cluster_spec: str,
    ) -> Launch:  # fmt: skip
        ep = request.entrypoint
        binary, args = (ep.binary, tuple(ep.args)) if ep.callable is None else (None, ())
        return cls(
            job_id, request.name, request.environment, payload, binary, args, replica, count,
            cluster_spec, driver_script_dir(),
        )  # fmt: skip

    @property
    def secrets(self) -> tuple[str, ...]:
        env = self.environment
        return secret_values(env.env_vars) if env is not None else ()


def serialize_entrypoint(request: JobRequest) -> bytes | None:
    """cloudpickle of the callable entrypoint and its arguments (None for a binary), so an
    unpicklable callable fails at launch, in the caller's process, with its name."""
    ep = request.entrypoint
    if ep.callable is None:
        return None
    try:
        return dumps((ep.callable, tuple(ep.args), dict(ep.function_args)))
    except Exception as e:
        raise ValueError(
            f"job {request.name!r}: the entrypoint {ep.description!r} or its arguments cannot be "
            f"pickled ({type(e).__name__}: {e}); pass picklable arguments (paths, configs) and "
            "open locks, sockets and clients inside the function"
        ) from None


def _environment(launch: Launch, venv_env: dict[str, str] | None) -> dict[str, str]:
    env = dict(venv_env if venv_env is not None else os.environ)
    request_env = launch.environment
    if request_env is not None:
        env.update(request_env.env_vars)
    with_script_dir(env, launch.script_dir)
    env.update(
        {
            "FRAY_CLUSTER_SPEC": launch.cluster_spec,
            "FRAY_JOB_ID": launch.job_id,
            "FRAY_JOB_NAME": launch.name,
            "FRAY_REPLICA_ID": str(launch.replica),
            "FRAY_REPLICA_COUNT": str(launch.replica_count),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _read_result(workdir: str) -> bytes | None:
    """The runner's result file as saved (still pickled), None if it wrote none."""
    if not workdir:
        return None
    try:
        with open(os.path.join(workdir, "result.pkl"), "rb") as f:
            return f.read()
    except OSError:
        return None


def _close(fds: tuple[int, int] | None) -> None:
    for fd in fds or ():
        with contextlib.suppress(OSError):
            os.close(fd)


# A binary runs under this POSIX sh script (argv: the binary and its arguments). A background
# subshell blocks reading the lifeline pipe and SIGKILLs the job's process group when the pipe
# closes (the worker or driver died); then sh execs the binary, which keeps sh's pid and group.
# The runner of a callable does the same with a thread (fray_dask/runner.py).
_BINARY_LIFELINE = (
    '(read line < "/dev/fd/$FRAY_LIFELINE_FD"; kill -KILL 0) > /dev/null 2>&1 & '
    'unset FRAY_LIFELINE_FD; exec "$@"'
)


class ReplicaProcess:
    """Starts one run of a replica and follows it to its end.

    `on_lines(list_of_lines)` receives the merged stdout/stderr in order, secret values masked;
    `run()` blocks until the process exits and returns its Outcome; `kill()` (from any thread)
    stops the process group: SIGTERM, then SIGKILL after KILL_GRACE_SECONDS. `on_long()`, if
    given, is called once from the thread in `run()` when the replica has taken `long_after`
    seconds (or is about to build a virtualenv).
    """

    def __init__(
        self,
        launch: Launch,
        on_lines: Callable[[list[str]], None],
        on_long: Callable[[], None] | None = None,
        long_after: float = 1.0,
    ):
        self.launch = launch
        self.on_lines = on_lines
        self._on_long = on_long
        self._long_at = time.monotonic() + long_after
        self._proc: subprocess.Popen[bytes] | None = None
        self._killed = threading.Event()
        self._lock = threading.Lock()
        self._secrets = launch.secrets

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def run(self) -> Outcome:
        """Runs the replica to its end. A callable's work directory (its payload and result) is
        removed however the run ends; see `workdir_prefix` for when this process dies first."""
        if self.launch.payload is None:  # a binary needs no files
            return self._run("")
        workdir = tempfile.mkdtemp(prefix=workdir_prefix(self.launch.job_id, self.launch.replica))
        try:
            return self._run(workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _command(self, workdir: str) -> tuple[list[str], dict[str, str], str | None]:
        environment = self.launch.environment
        python, venv_env = sys.executable, None
        packages = job_packages(environment)
        if environment is not None and packages:
            from fray_dask.venv import IsolatedVirtualEnv

            self._long()  # a build may take minutes
            # FRAY_VENV_CACHE among the job's env_vars picks where its venvs are cached.
            cache = environment.env_vars.get("FRAY_VENV_CACHE")
            venv = IsolatedVirtualEnv(packages, cache_dir=cache).ensure()
            python, venv_env = venv.python, venv.environ()
        env = _environment(self.launch, venv_env)
        cwd = environment.workspace if environment is not None else None
        if self.launch.payload is None:
            binary = self.launch.binary or ""
            if binary in ("python", "python3"):
                binary = python
            found = binary if os.sep in binary else shutil.which(binary, path=env.get("PATH"))
            if found is None or not os.access(found, os.X_OK):
                raise FileNotFoundError(f"cannot start {binary!r}: No such file or directory")
            argv = ["/bin/sh", "-c", _BINARY_LIFELINE, "fray-job", found, *self.launch.args]
            return argv, env, cwd
        payload = os.path.join(workdir, "payload.pkl")
        with open(payload, "wb") as f:
            f.write(self.launch.payload)
        result = os.path.join(workdir, "result.pkl")
        return [python, "-m", "fray_dask.runner", payload, result], env, cwd

    def _run(self, workdir: str) -> Outcome:
        secrets = self.launch.secrets
        try:
            argv, env, cwd = self._command(workdir)
        except FileNotFoundError as e:  # a binary that is not there
            return Outcome(JobStatus.FAILED, mask(str(e), secrets))
        except Exception as e:  # a virtualenv that cannot be built fails the replica
            return Outcome(JobStatus.FAILED, mask(f"{type(e).__name__}: {e}", secrets))
        # Also mask secrets the job inherits from this process's environment, not only its own.
        secrets = self._secrets = secret_values(env)
        if cwd is not None and not os.path.isdir(cwd):
            return Outcome(
                JobStatus.FAILED,
                f"workspace {cwd!r} is not a directory on {platform.node()}; give a path that "
                "exists where the job runs",
            )
        # The job watches a pipe whose only writer is this process: when the pipe closes (this
        # worker or driver died) it kills its whole process group, grandchildren included; a
        # callable's runner with a thread, a binary's sh wrapper with a background read.
        lifeline = os.pipe()
        env["FRAY_LIFELINE_FD"] = str(lifeline[0])
        with self._lock:
            if self._killed.is_set():
                _close(lifeline)
                return Outcome(JobStatus.STOPPED, "stopped before it started")
            try:
                self._proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, so kill() reaches children
                    pass_fds=lifeline[:1],
                )
            except OSError as e:
                _close(lifeline)
                return Outcome(
                    JobStatus.FAILED,
                    mask(f"cannot start {argv[0]!r}: {e.strerror or e}", secrets),
                )
        os.close(lifeline[0])
        try:
            lines, last = self._pump(secrets)
            code = self._proc.wait()
        finally:
            # Processes the job started and left behind (daemons, a shell's background jobs)
            # would run on unaccounted; the job is over, so its whole process group goes: SIGTERM
            # first, and the lifeline (whose closing means SIGKILL) only after that.
            _stop_group(self._proc.pid, KILL_GRACE_SECONDS)
            os.close(lifeline[1])
        if self._killed.is_set():
            return Outcome(JobStatus.STOPPED, "stopped by terminate()", code, lines)
        result = _read_result(workdir)
        if code == 0:
            return Outcome(JobStatus.SUCCEEDED, None, code, lines, result)
        return Outcome(JobStatus.FAILED, self._error(result, code, last), code, lines, result)

    def _pump(self, secrets: tuple[str, ...]) -> tuple[int, list[str]]:
        """Reads the output to its end; returns the number of lines and the last few.

        Lines go out in batches (BATCH_LINES, or whatever came within BATCH_SECONDS), and a
        batch is flushed after BATCH_SECONDS of silence, so a line printed just before a long
        quiet spell is not held back. A line longer than MAX_LINE_CHARS (a progress bar that
        only writes carriage returns) is cut into pieces.
        """
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        batch: list[str] = []
        tail: collections.deque[str] = collections.deque(maxlen=20)
        count = chars = 0
        pending = b""
        flushed = time.monotonic()

        def add(raw: bytes) -> None:
            nonlocal count, chars
            line = mask(raw.decode("utf-8", "replace").rstrip("\r"), secrets)
            batch.append(line)
            tail.append(line)
            count += 1
            chars += len(line)

        exited_at = None
        while True:
            ready, _, _ = select.select([fd], [], [], BATCH_SECONDS)
            if self._on_long is not None and time.monotonic() >= self._long_at:
                self._long()
            if exited_at is None and self._proc.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and (not ready or time.monotonic() - exited_at > 1.0):
                break  # a process it left behind may hold the pipe open: stop reading at its exit
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    add(raw)
                while len(pending) > MAX_LINE_CHARS:
                    add(pending[:MAX_LINE_CHARS])
                    pending = pending[MAX_LINE_CHARS:]
            full = len(batch) >= BATCH_LINES or chars >= BATCH_CHARS
            if batch and (not ready or full or time.monotonic() - flushed >= BATCH_SECONDS):
                self.on_lines(batch)
                batch, chars, flushed = [], 0, time.monotonic()
        while pending:
            add(pending[:MAX_LINE_CHARS])
            pending = pending[MAX_LINE_CHARS:]
        if batch:
            self.on_lines(batch)
        return count, list(tail)

    def _error(self, result: bytes | None, code: int, tail: list[str]) -> str:
        secrets = self._secrets
        if result is not None:
            with contextlib.suppress(Exception):
                kind, *rest = cloudpickle.loads(result)
                if kind == "error":
                    exc, text = rest
                    if exc is not None:
                        return mask(f"{type(exc).__name__}: {exc}", secrets)
                    return mask(text.strip().splitlines()[-1] if text.strip() else text, secrets)
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        last = next((line for line in reversed(tail) if line.strip()), "")
        detail = f"; last output: {last}" if last else ""
        return f"exit code {code}{detail}"

    def _long(self) -> None:
        if self._on_long is not None:
            on_long, self._on_long = self._on_long, None
            on_long()

    def kill(self, grace: float = KILL_GRACE_SECONDS) -> None:
        """Stops the replica's process group (or keeps it from starting) and returns at once;
        SIGKILL follows after `grace` seconds in a background thread if it is still alive."""
        with self._lock:
            self._killed.set()
            proc = self._proc
        if proc is not None:  # also when it exited: processes it started may still run
            _stop_group(proc.pid, grace)


def _stop_group(pgid: int, grace: float) -> None:
    """SIGTERM to a process group, SIGKILL `grace` s later (from a daemon thread) to whatever is
    left of it; returns at once. Does nothing to a group that is already gone."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return

    def escalate() -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return  # everyone left
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    threading.Thread(target=escalate, name="fray-kill", daemon=True).start()
