"""fray_dask.schemes: cluster specs, their forms and parameters, and the schemes of packages above
fray_dask (tpu's `gke` and `tpu-local`), found through entry points."""

from __future__ import annotations

import pytest

from fray_dask import ThreadContext, cluster_from_spec, fray_job_ctx
from fray_dask.local import LocalCluster
from fray_dask.schemes import (
    ClusterScheme,
    parse_spec,
    process_context,
    register_scheme,
    scheme_for,
    spec_forms,
)
from tests.imports import heavy_modules_loaded


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


def test_the_tpu_schemes_come_from_entry_points():
    """fray_dask names no tpu module: `gke` and `tpu-local` are tpu's entry points."""
    assert spec_forms()[-2:] == ["gke?namespace=NAMESPACE&image=IMAGE", "tpu-local"]
    scheme, params = scheme_for("tpu-local")
    assert scheme.name == "tpu-local" and params == {}
    assert type(scheme.cluster(params)).__name__ == "LocalTpuCluster"


def test_using_fray_dask_schemes_loads_neither_tpu_nor_zephyr():
    code = "import fray_dask\nfray_dask.cluster_from_spec('local').close()\n"
    assert heavy_modules_loaded(code, ("tpu", "zephyr", "dask", "distributed")) == []


def test_a_package_can_register_its_own_scheme(monkeypatch):
    built = []

    def cluster(params):
        built.append(params)
        return LocalCluster()

    register_scheme(ClusterScheme("mine", ("mine?size=N",), cluster, process_context))
    monkeypatch.setenv("FRAY_CLUSTER_SPEC", "mine?size=3")
    with cluster_from_spec("mine?size=3") as made:
        assert isinstance(made, LocalCluster) and built == [{"size": "3"}]
    assert isinstance(fray_job_ctx(), ThreadContext)
    assert "mine?size=N" in spec_forms()
    with pytest.raises(TypeError, match="needs a ClusterScheme"):
        register_scheme("mine")
