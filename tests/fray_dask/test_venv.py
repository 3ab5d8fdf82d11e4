"""IsolatedVirtualEnv with real venvs, real pip and real subprocesses. The packages are tiny wheels
built here and PIP_NO_INDEX keeps pip off the network; one venv is shared by the module."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import cloudpickle
import pytest

from fray_dask.venv import IsolatedVirtualEnv, RemoteTraceback, VirtualEnvError

ROOT = Path(__file__).resolve().parents[2]

# The callables below travel by value, so the child needs neither `tests` nor pytest importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def make_wheel(directory: Path, name: str, version: str, source: str) -> str:
    """A pure-Python wheel holding the package `name` whose __init__.py is `source`."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for arcname, text in files.items():
            z.writestr(arcname, text)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def no_network():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_NO_INDEX", "1")
        mp.setenv("PIP_NO_CACHE_DIR", "1")
        yield


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("wheels")
    only = "VERSION = 'only-1'\n\nclass Thing:\n    pass\n"
    return {
        "only": make_wheel(d, "fray_venv_only", "1.0", only),
        "probe": make_wheel(d, "fray_venv_probe", "2.0", "VERSION = 'venv'\n"),
    }


@pytest.fixture(scope="module")
def parent_lib(tmp_path_factory) -> Path:
    """A parent-side directory with its own `fray_venv_probe` and a module only it has."""
    d = tmp_path_factory.mktemp("parent_lib")
    (d / "fray_venv_probe").mkdir()
    (d / "fray_venv_probe" / "__init__.py").write_text("VERSION = 'parent'\n")
    (d / "fray_venv_parent_only.py").write_text("WHERE = 'parent-lib'\n")
    return d


@pytest.fixture(scope="module")
def venv(wheels, tmp_path_factory) -> IsolatedVirtualEnv:
    packages = [wheels["only"], wheels["probe"]]
    with IsolatedVirtualEnv(packages, cache_dir=tmp_path_factory.mktemp("cache")) as v:
        yield v


def _only_version() -> str:
    import fray_venv_only

    return fray_venv_only.VERSION


def _add(a: int, b: int = 0) -> int:
    return a + b


def test_a_callable_uses_a_package_only_the_venv_has(venv):
    assert venv.run(_only_version) == "only-1"
    assert venv.run(_add, 2, b=3) == 5
    with pytest.raises(ImportError):
        importlib.import_module("fray_venv_only")


def test_the_same_packages_in_another_order_reuse_the_built_venv(venv, wheels):
    marker = Path(venv.path, ".fray-complete")
    before = marker.stat()
    again = IsolatedVirtualEnv(
        [f" {wheels['probe']} ", wheels["only"]], cache_dir=Path(venv.path).parent
    )
    assert again.ensure().path == venv.path
    after = marker.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.run(_only_version) == "only-1"


def _probe() -> dict:
    import cloudpickle
    import fray_venv_parent_only
    import fray_venv_probe

    import fray_dask

    return {
        "probe": fray_venv_probe.VERSION,
        "parent_only": fray_venv_parent_only.WHERE,
        "fray_dask": fray_dask.__file__,
        "cloudpickle": cloudpickle.__file__,
        "prefix": sys.prefix,
        "path": sys.path,
    }


def test_venv_packages_shadow_the_parents_and_the_rest_falls_back_to_it(
    venv, parent_lib, monkeypatch, tmp_path
):
    """Both sides have `fray_venv_probe`: the parent's in `parent_lib`, a directory put on the
    parent's sys.path after the venv was built (as a script dir, PYTHONPATH or a test runner's
    rootdir would be), the venv's from a wheel. The child sees parent_lib (it imports
    `fray_venv_parent_only` from there) yet imports the venv's probe, while the parent imports its
    own; fray_dask and cloudpickle come from the parent."""
    monkeypatch.syspath_prepend(str(parent_lib))
    monkeypatch.chdir(tmp_path)  # nothing may come from the working directory
    try:
        assert importlib.import_module("fray_venv_probe").VERSION == "parent"
    finally:
        sys.modules.pop("fray_venv_probe", None)
    seen = venv.run(_probe)
    assert seen["probe"] == "venv"
    assert seen["parent_only"] == "parent-lib"
    assert seen["prefix"] == venv.path
    assert seen["fray_dask"] == str(ROOT / "fray_dask" / "__init__.py")
    assert seen["cloudpickle"] == cloudpickle.__file__
    own = next(i for i, p in enumerate(seen["path"]) if p.startswith(venv.path))
    assert own < seen["path"].index(str(parent_lib.resolve()))


def _read_env() -> dict:
    return {k: os.environ.get(k) for k in ("FRAY_VENV_TEST", "VIRTUAL_ENV", "PATH")}


def test_env_reaches_the_child_and_not_the_parent(venv):
    child = IsolatedVirtualEnv(
        venv.packages, {"FRAY_VENV_TEST": "42"}, cache_dir=Path(venv.path).parent
    )
    seen = child.run(_read_env)
    assert seen["FRAY_VENV_TEST"] == "42"
    assert seen["VIRTUAL_ENV"] == venv.path
    assert seen["PATH"].startswith(os.path.join(venv.path, "bin") + os.pathsep)
    assert "FRAY_VENV_TEST" not in os.environ
    env = child.environ({"PATH": "/usr/bin", "PYTHONHOME": "/x", "FRAY_VENV_TEST": "0"})
    assert str(ROOT) in env.pop("FRAY_VENV_PARENT_PATH").split(os.pathsep)
    assert env == {
        "PATH": os.path.join(venv.path, "bin") + os.pathsep + "/usr/bin",
        "VIRTUAL_ENV": venv.path,
        "FRAY_VENV_TEST": "42",
    }


def _boom() -> None:
    raise ValueError("boom")


def _kill_self() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _venv_only_object():
    import fray_venv_only

    return fray_venv_only.Thing()


def test_failures_in_the_child_come_back(venv):
    with pytest.raises(ValueError, match="boom") as info:
        venv.run(_boom)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "Traceback" in str(info.value.__cause__) and "_boom" in str(info.value.__cause__)
    with pytest.raises(RuntimeError, match="killed by SIGKILL without reporting a result"):
        venv.run(_kill_self)
    with pytest.raises(RuntimeError, match="cannot be unpickled in the parent"):
        venv.run(_venv_only_object)
    with pytest.raises(TimeoutError, match="sleep ran longer than timeout=0.5s"):
        venv.run(time.sleep, 30, timeout=0.5)


def test_commands_run_with_the_venvs_python(venv):
    done = venv.run("python -c 'import fray_venv_only; print(fray_venv_only.VERSION)'")
    assert (done.returncode, done.stdout) == (0, "only-1\n")
    with pytest.raises(
        subprocess.CalledProcessError, match="(?s)exit status 3.*went wrong"
    ) as info:
        venv.run(["python3", "-c", "import sys; sys.stderr.write('went wrong'); sys.exit(3)"])
    assert info.value.returncode == 3 and info.value.stderr == "went wrong"


def test_a_pip_failure_names_the_package_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "late").mkdir()
    missing = str(tmp_path / "late" / "fray_venv_late-1.0-py3-none-any.whl")
    venv = IsolatedVirtualEnv([missing], cache_dir=tmp_path / "cache")
    with pytest.raises(
        VirtualEnvError, match=r"pip install for packages \[.*fray_venv_late.*exit code 1"
    ):
        venv.ensure()
    assert not os.path.exists(venv.path)
    make_wheel(tmp_path / "late", "fray_venv_late", "1.0", "VERSION = 'late'\n")
    assert venv.run(["python", "-c", "import fray_venv_late"]).returncode == 0


def test_a_build_killed_before_its_marker_is_redone(tmp_path):
    venv = IsolatedVirtualEnv(cache_dir=tmp_path)
    os.makedirs(os.path.join(venv.path, "bin"))
    Path(venv.path, "half-written").write_text("")
    assert venv.run(_add, 1, 2) == 3
    assert not os.path.exists(os.path.join(venv.path, "half-written"))
    assert os.path.exists(os.path.join(venv.path, ".fray-complete"))


BUILD = textwrap.dedent(
    """
    import json, sys
    from fray_dask.venv import IsolatedVirtualEnv
    venv = IsolatedVirtualEnv([sys.argv[1]], cache_dir=sys.argv[2]).ensure()
    with open(venv.path + "/.fray-complete") as f:
        print(json.dumps({"path": venv.path, "marker": f.read()}))
    """
)


def test_two_processes_building_the_same_venv_end_with_one(wheels, tmp_path):
    cmd = [sys.executable, "-c", BUILD, wheels["only"], str(tmp_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    first, second = (json.loads(o) for o in outs)
    assert first == second  # the same directory, and the same marker: built once
    assert sorted(os.listdir(tmp_path)) == sorted(
        [Path(first["path"]).name, Path(first["path"]).name + ".lock"]
    )
    assert IsolatedVirtualEnv([wheels["only"]], cache_dir=tmp_path).run(_only_version) == "only-1"


def test_repr_masks_secret_values(tmp_path):
    venv = IsolatedVirtualEnv(
        ["x==1"],
        {"HF_TOKEN": "hf_abcdef", "WANDB_API_KEY": "wandb123", "MODE": "fast"},
        cache_dir=tmp_path,
    )
    text = repr(venv)
    assert "hf_abcdef" not in text and "wandb123" not in text
    assert "'HF_TOKEN': '***'" in text and "'WANDB_API_KEY': '***'" in text
    assert "'MODE': 'fast'" in text and "x==1" in text


def test_run_rejects_what_is_neither_a_command_nor_a_callable(tmp_path):
    venv = IsolatedVirtualEnv(cache_dir=tmp_path)
    with pytest.raises(TypeError, match="got int 42"):
        venv.run(42)
    assert os.listdir(tmp_path) == []  # rejected before building anything
