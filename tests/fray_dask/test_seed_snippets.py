"""The Fray snippets of seeds 001, 003 and 004, run with imports from fray_dask on the default
cluster (the embedded Dask cluster: FRAY_CLUSTER_SPEC unset)."""

from __future__ import annotations

import uuid

import pytest

from fray_dask import (
    Entrypoint,
    EnvironmentConfig,
    IsolatedVirtualEnv,
    JobRequest,
    ResourceConfig,
    TpuConfig,
    create_environment,
    current_cluster,
    fray_job_ctx,
    get_default_job_ctx,
)
from tests.fray_dask import jobs
from tests.fray_dask.test_venv import make_wheel

pytestmark = pytest.mark.dask


@pytest.fixture(autouse=True)
def default_cluster(monkeypatch, dask_backend):
    monkeypatch.delenv("FRAY_CLUSTER_SPEC", raising=False)


def remote_function(a, b):
    return a + b


def test_seed_001_ray_remote_becomes_ctx_run():
    arg1, arg2 = 4, 6
    ctx = fray_job_ctx()
    future = ctx.run(remote_function, arg1, arg2)
    assert ctx.get(future) == 10


def test_seed_001_runtime_env_becomes_a_job_with_pip_packages(tmp_path, monkeypatch):
    """`@ray.remote(runtime_env=...)` -> a JobRequest whose environment installs the packages."""
    package_x = make_wheel(tmp_path, "package_x", "1.0", "VERSION = 'x'\n")
    package_y = make_wheel(tmp_path, "package_y", "1.0", "VERSION = 'y'\n")
    out = str(tmp_path / "out")

    def foo():
        import package_x
        import package_y

        with open(out, "w") as f:
            f.write(package_x.VERSION + package_y.VERSION)

    request = JobRequest(
        name="foo",
        entrypoint=Entrypoint(callable=foo),
        resources=ResourceConfig(replicas=1),
        environment=create_environment(
            pip_packages=[package_x, package_y],
            env_vars={"FRAY_VENV_CACHE": str(tmp_path / "venvs")},
        ),
    )
    ctx = current_cluster()
    job_id = ctx.launch(request)
    ctx.wait(job_id, raise_on_failure=True)
    with open(out) as f:
        assert f.read() == "xy"


def test_seed_001_tpu_resource_config():
    """The seed writes `ram="16"`: 16 bytes, which is refused with the likely meaning."""
    with pytest.raises(ValueError, match="did you mean '16g'"):
        ResourceConfig(cpu=1, ram="16", disk="10g", device=TpuConfig(type="v5litepod-4"))
    resource_config = ResourceConfig(
        cpu=1,
        ram="16g",
        disk="10g",
        device=TpuConfig(type="v5litepod-4"),
        replicas=1,
        regions=["eu-west4"],
    )
    job_request = JobRequest(
        name="vllm-inference-pool",
        entrypoint=Entrypoint(callable=jobs.train_lm_main, function_args={"config": {}}),
        resources=resource_config,
        environment=create_environment(),
    )
    # The embedded Dask cluster has no TPUs: the launch says where TPU jobs go instead.
    with pytest.raises(ValueError, match="TPU=4.*TPU jobs run on GKE"):
        current_cluster().launch(job_request)


def test_seed_003_isolated_virtualenv(tmp_path):
    x = make_wheel(tmp_path, "x_pkg", "1.0", "VALUE = 41\n")
    with IsolatedVirtualEnv(packages=[x], env={"Z": "1"}, cache_dir=tmp_path / "venvs") as venv:
        assert venv.run(_x_plus_z) == 42


def _x_plus_z():
    import os

    import x_pkg

    return x_pkg.VALUE + int(os.environ["Z"])


def test_seed_004_rl_jobs_share_a_curriculum_actor(monkeypatch):
    """One train job and two rollout jobs find one Curriculum actor by name; the driver waits
    for all three with raise_on_failure=True."""
    name = f"curriculum-{uuid.uuid4().hex[:8]}"
    env = EnvironmentConfig.create(env_vars={"CURRICULUM_NAME": name})
    cluster = current_cluster()
    launched = [
        cluster.launch(
            JobRequest(
                name="train",
                entrypoint=Entrypoint.from_callable(jobs.train_worker, args=[2 * 5]),
                resources=ResourceConfig(cpu=0.5),
                environment=env,
            )
        )
    ]
    for n in range(2):
        launched.append(
            cluster.launch(
                JobRequest(
                    name=f"rollout-{n}",
                    entrypoint=Entrypoint.from_callable(jobs.rollout_worker, args=[5]),
                    resources=ResourceConfig(cpu=0.5),
                    environment=env,
                )
            )
        )
    cluster.wait(launched, raise_on_failure=True, timeout=120)
    assert "[replica-0] trained on 10 rollouts" in cluster.logs(launched[0])
    monkeypatch.setenv("CURRICULUM_NAME", name)
    ctx = get_default_job_ctx()
    curriculum = ctx.create_actor(jobs.Curriculum, ["unused"], name=name, get_if_exists=True)
    assert ctx.get(curriculum.total.remote()) == 10
    curriculum.kill()


def test_seed_004_levanter_training_job():
    config = {"model": "llama-tiny", "steps": 3}
    env = {"DATA_PATH": "gs://bucket/tokens"}
    cluster = current_cluster()
    job_id = cluster.launch(
        JobRequest(
            name="train_lm",
            entrypoint=Entrypoint.from_callable(jobs.train_lm_main, args=[config]),
            resources=ResourceConfig(),
            environment=EnvironmentConfig.create(env_vars=env),
        )
    )
    info = cluster.wait(job_id, raise_on_failure=True)
    assert info.status == "succeeded"
    assert cluster.logs(job_id) == [
        "[replica-0] training llama-tiny for 3 steps on gs://bucket/tokens"
    ]
