"""current_cluster(), FRAY_CLUSTER_SPEC and set_current_cluster()."""

from __future__ import annotations

import pytest

from fray_dask import Cluster, LocalCluster, current_cluster, set_current_cluster


def test_the_environment_variable_picks_the_cluster_and_it_is_reused(monkeypatch):
    monkeypatch.setenv("FRAY_CLUSTER_SPEC", "local")
    cluster = current_cluster()
    assert isinstance(cluster, LocalCluster) and cluster.spec == "local"
    assert current_cluster() is cluster


def test_unknown_spec_in_the_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("FRAY_CLUSTER_SPEC", "ray")
    with pytest.raises(ValueError, match="unknown cluster spec 'ray' .*FRAY_CLUSTER_SPEC"):
        current_cluster()


def test_set_current_cluster_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("FRAY_CLUSTER_SPEC", "ray")
    with LocalCluster() as mine, set_current_cluster(mine):
        assert current_cluster() is mine
    with pytest.raises(TypeError, match="needs a Cluster"):
        with set_current_cluster("local"):
            pass
    assert issubclass(LocalCluster, Cluster)
