"""Tests of fray_dask/devices.py: GpuConfig and TpuConfig (its counts and checks come from the TPU
table), as users build them and as ResourceConfig takes them. Pure: no Dask."""

from __future__ import annotations

import pytest

from fray_dask import GpuConfig, ResourceConfig, TpuConfig


@pytest.mark.parametrize(
    "tpu, chips, hosts",
    [("v5litepod-16", 16, 4), ("v4-8", 4, 1), ("v4-16", 8, 2), ("v6e-8", 8, 1), ("v5p-8", 4, 1)],
)
def test_tpu_config_counts_come_from_the_shared_table(tpu, chips, hosts):
    config = TpuConfig(type=tpu)
    assert (config.chip_count(), config.vm_count()) == (chips, hosts)
    assert TpuConfig(variant=tpu) == config  # variant= is an alias


def test_tpu_config_fills_and_checks_the_topology():
    assert TpuConfig("v5litepod-16").topology == "4x4"
    assert TpuConfig("v5e-16").type == "v5litepod-16"
    with pytest.raises(ValueError, match="has topology '2x2x2', not '2x2x1'"):
        TpuConfig("v4-16", topology="2x2x1")


def test_unknown_tpu_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown TPU type 'v5litepod-3'.*v4-8, v4-16"):
        TpuConfig(type="v5litepod-3")
    with pytest.raises(ValueError, match="unknown TPU type"):
        ResourceConfig.with_tpu("v9-8")
    with pytest.raises(ValueError, match="'v4-8' .*cannot run multi-slice"):
        ResourceConfig.with_tpu("v4-8", slice_count=2)
    with pytest.raises(ValueError, match="'v5litepod-4' .*cannot run multi-slice"):
        ResourceConfig(device=TpuConfig("v5e-4"), replicas=2)
    with pytest.raises(ValueError, match="variant is an alias of type"):
        TpuConfig(type="v4-8", variant="v4-16")


def test_gpu_config_validation():
    assert GpuConfig(variant="H100", count=8).type == "H100"
    with pytest.raises(ValueError, match="count must be a whole number >= 1"):
        GpuConfig("A100", 0)


def test_the_device_types_are_names_of_fray_dask_types():
    """Users and the seeds write `from fray_dask.types import TpuConfig`: it is the same class."""
    import fray_dask.devices
    import fray_dask.types

    names = {"CpuConfig", "DeviceConfig", "GpuConfig", "TpuConfig"}
    assert names <= set(fray_dask.types.__all__)
    for name in names:
        assert getattr(fray_dask.types, name) is getattr(fray_dask.devices, name)
