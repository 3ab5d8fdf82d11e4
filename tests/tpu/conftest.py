"""Fixtures for the GKE launcher's tests: a Kubernetes API stand-in that checks no secret value
left the Secret, and a GkeTpuCluster on it that polls fast and must leave no thread behind."""

from __future__ import annotations

import json

import pytest

from tests.processes import wait_for
from tests.tpu.gke_helpers import IMAGE, NS, SECRET, client_for, gke_threads
from tests.tpu.k8s_standin import KubeStandIn
from tpu.launcher import GkeTpuCluster


@pytest.fixture
def standin():
    server = KubeStandIn()
    yield server
    server.close()
    leaked = [
        r
        for r in server.requests
        if SECRET in json.dumps(r.body) and not r.path.endswith("secrets")
    ]
    assert not leaked, f"a secret value was sent outside the Secret: {leaked}"


@pytest.fixture
def gke(standin):
    api = client_for(standin.url)
    cluster = GkeTpuCluster(NS, IMAGE, api_client=api, poll_interval=0.1, lost_timeout=1.0)
    yield cluster
    cluster.close()
    api.close()
    wait_for(lambda: not gke_threads(), "the cluster's fray-gke threads to end", 10)
