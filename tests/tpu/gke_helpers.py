"""Helpers for tests of tpu.launcher.GkeTpuCluster against tests/tpu/k8s_standin.py: the request
they launch, the pods they wait for, and a client for the stand-in (fixtures in conftest.py).
"""

from __future__ import annotations

import threading

from fray_dask.types import Entrypoint, JobRequest, ResourceConfig, TpuConfig
from tests.processes import wait_for
from tests.tpu.k8s_standin import KubeStandIn
from tpu.launcher import GkeTpuCluster
from tpu.manifests import k8s_name

NS = "tpu"
IMAGE = "us-docker.pkg.dev/proj/repo/train:1"
SECRET = "hf_sekrit_value_123"


def touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("ran")


def train(steps: int) -> int:
    return steps


def request(tpu: str = "v6e-8", replicas: int = 1, **kwargs) -> JobRequest:
    kwargs.setdefault("entrypoint", Entrypoint.from_binary("python", ["train.py"]))
    return JobRequest(
        "train", resources=ResourceConfig(device=TpuConfig(type=tpu), replicas=replicas), **kwargs
    )


def gke_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fray-gke")]


def client_for(url: str):
    import kubernetes

    cfg = kubernetes.client.Configuration()
    cfg.host = url
    return kubernetes.client.ApiClient(cfg)


def pods_of(standin: KubeStandIn, job_id: str, count: int, exclude=()) -> list[str]:
    name = k8s_name(job_id)
    return wait_for(
        lambda: len(p := [x for x in standin.pods(name) if x not in exclude]) >= count and p,
        what=f"{count} new pods of {name}",
    )


def finished(gke: GkeTpuCluster, job_id: str):
    return gke.wait(job_id, timeout=10)
