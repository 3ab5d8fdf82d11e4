"""Tests of tpu/run.py, the pod's bootstrap, run as a real `python -m tpu.run` subprocess on
payloads written by tpu.manifests.callable_payload. A local file stands in for the ConfigMap
mount, and a file:// URL (read through fsspec) for object storage such as gs://.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import cloudpickle

from fray_dask.types import Entrypoint, JobRequest, ResourceConfig, TpuConfig
from tests.imports import heavy_modules_loaded
from tpu.manifests import callable_payload

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write_marker(path: str, text: str, *, suffix: str = "") -> None:
    pathlib.Path(path).write_text(text + suffix)


def fail(message: str) -> None:
    raise RuntimeError(message)


def exit_with(code: int) -> None:
    sys.exit(code)


def payload_file(tmp_path: pathlib.Path, fn, args=(), kwargs=None) -> pathlib.Path:
    req = JobRequest(
        name="boot",
        entrypoint=Entrypoint.from_callable(fn, args, kwargs),
        resources=ResourceConfig(device=TpuConfig(type="v6e-8")),
    )
    path = tmp_path / "payload.pkl"
    path.write_bytes(callable_payload(req))
    return path


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tpu.run", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_runs_the_callable_from_a_path(tmp_path):
    out = tmp_path / "out.txt"
    path = payload_file(tmp_path, write_marker, [str(out), "hello"], {"suffix": "!"})
    result = run(str(path))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "hello!"


def test_runs_a_closure_from_a_file_url_through_fsspec(tmp_path):
    out = tmp_path / "out.txt"

    def job(text: str) -> None:  # pickled by value, as a script's own function would be
        out.write_text(text)

    path = payload_file(tmp_path, job, ["via url"])
    result = run(path.as_uri())
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "via url"


def test_an_exception_exits_1_with_the_traceback_on_stderr(tmp_path):
    result = run(str(payload_file(tmp_path, fail, ["boom in the job"])))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: boom in the job" in result.stderr
    assert "in fail" in result.stderr


def test_sys_exit_in_the_callable_keeps_its_code(tmp_path):
    assert run(str(payload_file(tmp_path, exit_with, [3]))).returncode == 3


def test_a_missing_payload_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pkl"
    for location in (str(missing), missing.as_uri()):
        result = run(location)
        assert result.returncode == 2
        assert f"cannot load the job's payload {location!r}" in result.stderr
        assert "ConfigMap is mounted or the URL exists" in result.stderr


def test_a_payload_that_is_not_fn_args_kwargs_is_refused(tmp_path):
    path = tmp_path / "payload.pkl"
    path.write_bytes(cloudpickle.dumps({"not": "a payload"}))
    result = run(str(path))
    assert result.returncode == 2
    assert "holds a dict, not (fn, args, kwargs)" in result.stderr


def test_wrong_arguments_print_the_usage():
    result = run()
    assert result.returncode == 2
    assert "usage: python -m tpu.run <payload path or URL" in result.stderr


def test_tpu_run_imports_only_the_standard_library_and_cloudpickle(tmp_path):
    # a stdlib callable, so that unpickling it imports nothing beyond what tpu.run does
    out = tmp_path / "o"
    path = tmp_path / "payload.pkl"
    path.write_bytes(cloudpickle.dumps((pathlib.Path.write_text, (out, "x"), {})))
    code = f"import tpu.run\nassert tpu.run.main([{str(path)!r}]) == 0\n"
    heavy = ("dask", "distributed", "kubernetes", "fsspec", "fray_dask", "yaml", "jax")
    assert heavy_modules_loaded(code, heavy) == []
    assert out.read_text() == "x"
