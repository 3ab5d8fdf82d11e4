"""current_cluster(), FRAY_CLUSTER_SPEC and the spec forms."""

from __future__ import annotations

import pytest

from fray_dask import Cluster, LocalCluster, cluster_from_spec, current_cluster, set_current_cluster
from fray_dask.current import parse_spec


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("local", ("local", {})),
        ("dask", ("dask", {})),
        ("dask?address=tcp://10.0.0.1:8786", ("dask", {"address": "tcp://10.0.0.1:8786"})),
        (" dask?address=tcp://h:1&timeout=3 ", ("dask", {"address": "tcp://h:1", "timeout": "3"})),
    ],
)
def test_specs_parse(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["ray?namespace=marin", "tcp://host:8786", "dask://host", "lokal"])
def test_unknown_specs_list_the_valid_forms(spec):
    with pytest.raises(
        ValueError, match=r"unknown cluster spec .*valid forms: local, dask, dask\?address="
    ):
        cluster_from_spec(spec)


def test_spec_parameters_are_checked():
    with pytest.raises(
        ValueError,
        match=r"cluster spec 'dask' does not take adress \(its parameters: address, timeout\)",
    ):
        cluster_from_spec("dask?adress=tcp://h:1")
    with pytest.raises(ValueError, match="'local' does not take workers"):
        cluster_from_spec("local?workers=2")


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


@pytest.mark.parametrize(
    "spec, match",
    [
        ("dask?address=", "has an empty address"),
        ("dask?address=notaurl", "'notaurl' is not a Dask scheduler address"),
        ("dask?address=tcp://h:1&timeout=abc", "timeout='abc' is not a number of seconds > 0"),
        ("dask?timeout=0", "timeout='0' is not a number"),
    ],
)
def test_malformed_dask_specs_fail_at_once(spec, match):
    with pytest.raises(ValueError, match=match):
        cluster_from_spec(spec)
