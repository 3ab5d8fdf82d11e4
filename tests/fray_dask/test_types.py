"""The plain data of jobs: validation, TPU counts, secrets in reprs (no Dask)."""

from __future__ import annotations

import functools

import pytest

from fray_dask import (
    CpuConfig,
    Entrypoint,
    EnvironmentConfig,
    GpuConfig,
    JobFailedError,
    JobInfo,
    JobRequest,
    JobStatus,
    ResourceConfig,
    TpuConfig,
    create_environment,
)
from fray_dask.resources import NON_PREEMPTIBLE, dask_resources
from fray_dask.secrets import mask, masked_env
from tests.imports import heavy_modules_loaded


def noop():
    return None


# -- resources and devices -----------------------------------------------------------------------


def test_resource_config_defaults_and_parsed_sizes():
    r = ResourceConfig()
    assert (r.cpu, r.ram, r.disk, r.replicas, r.preemptible, r.regions) == (
        1,
        "128m",
        "1g",
        1,
        True,
        None,
    )
    assert isinstance(r.device, CpuConfig)
    assert r.ram_bytes == 128 * 10**6 and r.disk_bytes == 10**9
    assert ResourceConfig(regions=["eu-west4"]).regions == ("eu-west4",)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cpu": -1}, "cpu must be a number of cores >= 0"),
        ({"cpu": "4"}, "cpu must be a number"),
        ({"replicas": 0}, "replicas must be a whole number >= 1"),
        ({"replicas": 1.5}, "replicas must be a whole number"),
        ({"device": "tpu"}, "device must be CpuConfig"),
        ({"regions": "eu-west4"}, r"write regions=\['eu-west4'\]"),
    ],
)
def test_resource_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResourceConfig(**kwargs)


def test_with_constructors_work_on_the_class_and_on_an_instance():
    tpu = ResourceConfig.with_tpu("v5litepod-16", slice_count=2, ram="64g")
    assert tpu.device == TpuConfig("v5litepod-16") and tpu.replicas == 2 and tpu.ram == "64g"
    gpu = ResourceConfig(cpu=8, ram="32g").with_gpu("A100", 2)
    assert gpu.device == GpuConfig("A100", 2) and gpu.cpu == 8 and gpu.ram == "32g"
    cpu = gpu.with_cpu(cpu=2)
    assert isinstance(cpu.device, CpuConfig) and cpu.cpu == 2 and cpu.ram == "32g"
    assert ResourceConfig.with_gpu().device == GpuConfig("auto", 1)


def test_requests_map_to_dask_worker_resources():
    assert dask_resources(ResourceConfig(cpu=2, ram="1g")) == {"CPU": 2, "MEMORY": 10**9}
    gpu = dask_resources(ResourceConfig.with_gpu("A100", 2, cpu=0))
    assert gpu == {"MEMORY": 128 * 10**6, "GPU": 2}
    tpu = dask_resources(ResourceConfig.with_tpu("v5litepod-16"))
    assert tpu["TPU"] == 4  # chips of one host: each host of the slice is one task
    assert dask_resources(ResourceConfig(preemptible=False))[NON_PREEMPTIBLE] == 0


# -- entrypoints and requests --------------------------------------------------------------------


def test_entrypoint_forms():
    e = Entrypoint.from_callable(noop, [1], {"a": 2})
    assert (e.callable, e.args, e.function_args, e.binary) == (noop, (1,), {"a": 2}, None)
    b = Entrypoint.from_binary("python", ["-c", "print(1)"])
    assert (b.binary, b.args) == ("python", ("-c", "print(1)"))
    split = Entrypoint(binary="python train.py --steps 10")
    assert (split.binary, split.args) == ("python", ("train.py", "--steps", "10"))
    assert Entrypoint(callable=functools.partial(noop)).description.endswith("noop")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"callable": noop, "binary": "ls"}, "runs a callable or a binary, and got both"),
        ({}, "got neither"),
        ({"callable": 42}, "must be a function or other callable"),
        ({"binary": "ls", "function_args": {"a": 1}}, "function_args apply to a callable"),
        ({"binary": "ls", "args": "-la"}, r"write args=\['-la'\]"),
        ({"binary": " "}, "binary must be a command name"),
    ],
)
def test_entrypoint_rejects_bad_forms(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Entrypoint(**kwargs)


def test_job_names_reject_spaces_and_suggest_one():
    with pytest.raises(ValueError, match=r"job name 'my job' is not allowed.*'my-job'"):
        JobRequest(name="my job", entrypoint=Entrypoint(callable=noop))
    with pytest.raises(ValueError, match="not allowed"):
        JobRequest(name="", entrypoint=Entrypoint(callable=noop))
    assert JobRequest(name="rollout-3_v1.2", entrypoint=Entrypoint(callable=noop)).name


def test_job_request_validates_its_parts():
    with pytest.raises(ValueError, match="Entrypoint.from_callable"):
        JobRequest(name="x", entrypoint=noop)
    with pytest.raises(ValueError, match="max_retries_failure must be a whole number >= 0"):
        JobRequest(name="x", entrypoint=Entrypoint(callable=noop), max_retries_failure=-1)
    request = JobRequest(name="x", entrypoint=Entrypoint(callable=noop))
    assert (request.max_retries_failure, request.max_retries_preemption) == (0, 100)


# -- environments and secrets --------------------------------------------------------------------


def test_secrets_are_masked_in_reprs_but_kept_in_the_value():
    env = create_environment(
        pip_packages=["six"], env_vars={"HF_TOKEN": "hf_abc123", "WANDB_API_KEY": "w123", "N": "1"}
    )
    text = repr(env) + repr(
        JobRequest(name="x", entrypoint=Entrypoint(callable=noop), environment=env)
    )
    assert "hf_abc123" not in text and "w123" not in text
    assert "'HF_TOKEN': '***'" in text and "'N': '1'" in text
    assert env.env_vars["HF_TOKEN"] == "hf_abc123"  # the job still receives it
    assert EnvironmentConfig.create(env_vars={"A": "b"}) == create_environment(env_vars={"A": "b"})


def test_environment_rejects_non_string_values_without_showing_them():
    with pytest.raises(ValueError, match="'HF_TOKEN' maps to a int") as info:
        create_environment(env_vars={"HF_TOKEN": 12345678})
    assert "12345678" not in str(info.value)
    with pytest.raises(ValueError, match=r"write pip_packages=\['torch'\]"):
        create_environment(pip_packages="torch")


def test_secret_masking_in_text():
    env = {"HF_TOKEN": "hf_abcdef", "GITHUB_TOKEN": "ab", "PATH": "/usr/bin"}
    assert masked_env(env) == {"HF_TOKEN": "***", "GITHUB_TOKEN": "***", "PATH": "/usr/bin"}
    assert mask("token=hf_abcdef!", ["hf_abcdef"]) == "token=***!"


# -- status ---------------------------------------------------------------------------------------


def test_job_status_finished():
    assert [s.value for s in JobStatus if s.finished()] == ["succeeded", "failed", "stopped"]
    assert not JobStatus.PENDING.finished() and not JobStatus.RUNNING.finished()
    assert JobStatus("running") is JobStatus.RUNNING


def test_job_failed_error_carries_the_info_and_pickles():
    import pickle

    info = JobInfo("j-1", JobStatus.FAILED, (), "j", "ValueError: boom")
    error = pickle.loads(pickle.dumps(JobFailedError(info)))
    assert error.info == info and "ValueError: boom" in str(error)


def test_importing_fray_dask_types_loads_no_dask():
    code = "import fray_dask, fray_dask.types, tpu\nfray_dask.TpuConfig('v4-8').chip_count()\n"
    heavy = heavy_modules_loaded(code, ("dask", "distributed", "kubernetes"))
    assert heavy == [], f"heavy modules imported: {heavy}"


def test_extras_resolve_to_this_projects_optional_requirements():
    from fray_dask.environment import job_packages

    env = create_environment(pip_packages=["six"], extras=["tpu", "k8s"])
    packages = job_packages(env)
    assert packages[0] == "six"
    assert any(p.startswith("jax") for p in packages)
    assert any(p.startswith("kubernetes") for p in packages)
    assert job_packages(None) == () and job_packages(create_environment()) == ()


def test_a_request_masks_its_secrets_wherever_they_appear_in_its_repr():
    env = create_environment(env_vars={"HF_TOKEN": "hf_zz9_secret"})
    cmd = Entrypoint.from_binary("git", ["clone", "https://hf_zz9_secret@hf.co/org/model"])
    fn = Entrypoint.from_callable(noop, kwargs={"token": "hf_zz9_secret"})
    for entrypoint in (cmd, fn):
        text = repr(JobRequest(name="dl", entrypoint=entrypoint, environment=env))
        assert "hf_zz9_secret" not in text and "***" in text


def test_argument_lists_given_as_one_string_are_refused():
    with pytest.raises(ValueError, match=r"write args=\['-l'\]"):
        Entrypoint.from_binary("ls", "-l")
    with pytest.raises(ValueError, match="args must be a list"):
        Entrypoint.from_callable(noop, "abc")
