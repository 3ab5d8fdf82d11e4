"""Tests of fray_dask/topology.py: the TPU slice table, lookups, errors and its import boundary.

Pure: no Dask, milliseconds."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from fray_dask.topology import (
    TPU_TYPES,
    TpuTopology,
    all_topologies,
    check_multislice,
    check_topology,
    get_topology,
)
from tests.imports import heavy_modules_loaded

ACCELERATORS = {
    "v4": "tpu-v4-podslice",
    "v5e": "tpu-v5-lite-podslice",
    "v5p": "tpu-v5p-slice",
    "v6e": "tpu-v6e-slice",
}


# -- spot checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, chips, topology, hosts, chips_per_host",
    [
        ("v4-8", 4, "2x2x1", 1, 4),
        ("v4-16", 8, "2x2x2", 2, 4),
        ("v4-4096", 2048, "8x16x16", 512, 4),
        ("v5p-8", 4, "2x2x1", 1, 4),
        ("v5p-8192", 4096, "16x16x16", 1024, 4),
        ("v5litepod-1", 1, "1x1", 1, 1),
        ("v5litepod-8", 8, "2x4", 1, 8),
        ("v5litepod-16", 16, "4x4", 4, 4),
        ("v5litepod-256", 256, "16x16", 64, 4),
        ("v6e-8", 8, "2x4", 1, 8),
        ("v6e-16", 16, "4x4", 4, 4),
    ],
)
def test_spot_checks(name, chips, topology, hosts, chips_per_host):
    t = get_topology(name)
    assert (t.name, t.chips, t.topology, t.hosts, t.chips_per_host) == (
        name,
        chips,
        topology,
        hosts,
        chips_per_host,
    )
    assert t.chip_count() == chips
    assert t.vm_count() == hosts
    assert t.multi_host is (hosts > 1)


def test_generation_and_accelerator_labels():
    assert get_topology("v4-16").generation == "v4"
    assert get_topology("v4-16").accelerator == "tpu-v4-podslice"
    assert get_topology("v5litepod-16").accelerator == "tpu-v5-lite-podslice"
    assert get_topology("v5p-8").accelerator == "tpu-v5p-slice"
    assert get_topology("v6e-8").accelerator == "tpu-v6e-slice"


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_topology("v4-8").chips = 99  # type: ignore[misc]


# -- invariants over the whole table ---------------------------------------------------------------
def test_table_sizes_and_order():
    assert TPU_TYPES == tuple(t.name for t in all_topologies())
    assert len(TPU_TYPES) == len(set(TPU_TYPES)) == 10 + 8 + 11 + 8
    assert TPU_TYPES[0] == "v4-8"
    assert TPU_TYPES[-1] == "v6e-256"
    generations = [t.generation for t in all_topologies()]
    # grouped: each generation appears in one contiguous run
    runs = [g for i, g in enumerate(generations) if i == 0 or generations[i - 1] != g]
    assert runs == ["v4", "v5e", "v5p", "v6e"]


@pytest.mark.parametrize("t", all_topologies(), ids=lambda t: t.name)
def test_table_invariants(t: TpuTopology):
    dims = [int(d) for d in t.topology.split("x")]
    assert t.hosts * t.chips_per_host == t.chips
    assert math.prod(dims) == t.chips
    assert len(dims) == (3 if t.generation in ("v4", "v5p") else 2)
    assert t.accelerator == ACCELERATORS[t.generation]
    if t.multi_host:
        assert t.chips_per_host == 4
    size = int(t.name.rpartition("-")[2])
    # v4/v5p names count TensorCores (2 per chip); v5e/v6e names count chips
    assert t.chips == (size // 2 if t.generation in ("v4", "v5p") else size)
    assert get_topology(t.name) is t


def test_v4_and_v5p_share_topologies_and_v5e_and_v6e_share_topologies():
    for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        v4, v5p = get_topology(f"v4-{n}"), get_topology(f"v5p-{n}")
        assert (v4.topology, v4.chips, v4.hosts) == (v5p.topology, v5p.chips, v5p.hosts)
    for n in (1, 4, 8, 16, 32, 64, 128, 256):
        v5e, v6e = get_topology(f"v5litepod-{n}"), get_topology(f"v6e-{n}")
        assert (v5e.topology, v5e.chips, v5e.chips_per_host, v5e.hosts) == (
            v6e.topology,
            v6e.chips,
            v6e.chips_per_host,
            v6e.hosts,
        )


# -- lookups ---------------------------------------------------------------------------------------
def test_v5e_alias_resolves_to_the_canonical_v5litepod_entry():
    assert get_topology("v5e-16") is get_topology("v5litepod-16")
    assert get_topology("v5e-16").name == "v5litepod-16"
    assert "v5e-16" not in TPU_TYPES


@pytest.mark.parametrize("spelling", ["V4-16", " v4-16 ", "\tV4-16\n"])
def test_lookup_ignores_case_and_surrounding_whitespace(spelling):
    assert get_topology(spelling) is get_topology("v4-16")


def test_alias_lookup_ignores_case():
    assert get_topology(" V5E-16 ") is get_topology("v5litepod-16")


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_type_lists_every_valid_type():
    with pytest.raises(ValueError, match=r"unknown TPU type 'v9-8'; valid types: v4-8, v4-16") as e:
        get_topology("v9-8")
    assert str(e.value).endswith(", v6e-256")
    assert all(name in str(e.value) for name in TPU_TYPES)
    assert "sizes are" not in str(e.value)


def test_unknown_size_of_a_known_generation_lists_its_sizes_first():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "unknown TPU type 'v5litepod-3'; v5litepod sizes are 1, 4, 8, 16, 32, 64, 128, 256; "
            "valid types: v4-8"
        ),
    ):
        get_topology("v5litepod-3")


def test_unknown_size_via_alias_and_v4_name_the_sizes():
    with pytest.raises(ValueError, match=r"'v5e-2'; v5litepod sizes are 1, 4, 8,"):
        get_topology("v5e-2")
    with pytest.raises(ValueError, match=r"'v4-4'; v4 sizes are 8, 16, 32, .*, 4096; valid"):
        get_topology("v4-4")
    with pytest.raises(ValueError, match=r"v5p sizes are 8, .*, 4096, 8192; valid"):
        get_topology("v5p-3")


@pytest.mark.parametrize("bad", [8, None, b"v4-8", ["v4-8"]])
def test_non_string_type_raises_type_error_naming_the_type(bad):
    with pytest.raises(TypeError, match=rf"TPU type must be a str .*got {type(bad).__name__}"):
        get_topology(bad)  # type: ignore[arg-type]


# -- check_topology --------------------------------------------------------------------------------
@pytest.mark.parametrize("given", [None, "2x2x2", "2X2X2", " 2x2x2 "])
def test_check_topology_accepts_none_or_the_matching_topology(given):
    assert check_topology("v4-16", given) is get_topology("v4-16")


def test_check_topology_mismatch_suggests_the_type_with_that_topology():
    expected = (
        "TPU type 'v4-16' has topology '2x2x2', not '2x2x1'; "
        "omit topology= or pick the type whose topology is '2x2x1' (v4-8)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_topology("v4-16", "2x2x1")


def test_check_topology_suggestion_stays_in_the_same_generation():
    with pytest.raises(ValueError, match=r"topology is '2x4' \(v5litepod-8\)$"):
        check_topology("v5e-16", "2x4")
    with pytest.raises(ValueError, match=r"topology is '2x2x1' \(v5p-8\)$"):
        check_topology("v5p-16", "2x2x1")


def test_check_topology_mismatch_without_a_matching_type_names_the_expected_one():
    with pytest.raises(
        ValueError, match=r"has topology '4x4', not '3x3'; omit topology= or pass topology='4x4'"
    ):
        check_topology("v6e-16", "3x3")


def test_check_topology_validates_the_type_first():
    with pytest.raises(ValueError, match=r"unknown TPU type 'v4-3'"):
        check_topology("v4-3", "2x2x1")


def test_check_topology_rejects_a_non_string_topology():
    with pytest.raises(
        TypeError, match=r"topology must be a str such as '2x2x2' or None, got tuple"
    ):
        check_topology("v4-16", (2, 2, 2))  # type: ignore[arg-type]


# -- import boundary -------------------------------------------------------------------------------
def test_importing_fray_dask_topology_does_not_import_dask_or_kubernetes():
    code = "import fray_dask.topology\nfray_dask.topology.get_topology('v4-8')\n"
    heavy = heavy_modules_loaded(code, ("dask", "distributed", "kubernetes"))
    assert heavy == [], f"heavy modules imported: {heavy}"


# -- multi-slice capability ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, ok",
    [
        ("v4-8", False),
        ("v5p-8", False),
        ("v5litepod-1", False),
        ("v5litepod-4", False),
        ("v6e-4", False),
        ("v5litepod-8", True),
        ("v6e-8", True),
        ("v4-16", True),
        ("v5litepod-16", True),
    ],
)
def test_multislice_capability(name, ok):
    assert get_topology(name).multislice is ok


def test_check_multislice_names_the_rule_and_a_fix():
    check_multislice(get_topology("v4-8"), 1)  # one slice of anything is fine
    check_multislice(get_topology("v4-16"), 4)
    with pytest.raises(ValueError, match=r"'v4-8' \(topology 2x2x1\) cannot .*v4-16"):
        check_multislice(get_topology("v4-8"), 2)
    with pytest.raises(ValueError, match=r"'v5litepod-4' \(topology 2x2\).*v5litepod-8"):
        check_multislice(get_topology("v5e-4"), 2)


# -- the names the tpu package shows -------------------------------------------------------------
def test_the_tpu_package_names_the_same_table():
    """README documents `tpu.get_topology`: the tpu package's names are this module's objects."""
    import tpu

    assert tpu.get_topology is get_topology and tpu.TpuTopology is TpuTopology
    assert tpu.TPU_TYPES is TPU_TYPES and tpu.all_topologies is all_topologies
    assert tpu.check_topology is check_topology and tpu.check_multislice is check_multislice
    assert tpu.get_topology("v5e-16").hosts == 4
