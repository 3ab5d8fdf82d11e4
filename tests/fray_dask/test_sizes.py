"""fray_dask.sizes: the one size vocabulary (Dask's, with Kubernetes' spellings meaning what they
mean there), accepted and refused alike by every place that reads a size."""

from __future__ import annotations

import argparse

import pytest

from fray_dask import ResourceConfig, parse_size
from fray_dask.kube_spec import KubeSpec, parse_kube_spec
from fray_dask.sizes import UNITS, format_size
from tests.imports import heavy_modules_loaded
from zephyr import DaskBackend, parse_memory
from zephyr.cli import build_parser


@pytest.mark.parametrize(
    "text, expected",
    [
        ("16g", 16 * 10**9),
        ("16G", 16 * 10**9),
        ("8GB", 8 * 10**9),
        ("512MiB", 512 << 20),
        ("128m", 128 * 10**6),
        ("1.5t", int(1.5 * 10**12)),
        ("16Gi", 16 << 30),
        ("16gib", 16 << 30),
        (" 2 g ", 2 * 10**9),
        (17179869184, 16 << 30),
        ("0", 0),
    ],
)
def test_sizes_parse_like_kubernetes_and_dask(text, expected):
    """g/GB are decimal and Gi/GiB binary, as in `dask worker --resources MEMORY=16e9` and
    Kubernetes, so ram="16g" fits a worker started with MEMORY=16e9."""
    assert parse_size(text) == expected


def test_a_bare_number_too_small_to_mean_bytes_suggests_the_unit():
    with pytest.raises(ValueError, match=r"ram='16' has no unit.*did you mean '16g'"):
        ResourceConfig(ram="16")
    with pytest.raises(ValueError, match="did you mean '16g'"):
        ResourceConfig(ram=16)


@pytest.mark.parametrize("bad", ["lots", "16x", "g", "-1g", "16 gigs", "16i", None, True, [16]])
def test_bad_size_strings_are_errors_naming_the_field(bad):
    with pytest.raises(ValueError, match="disk"):
        ResourceConfig(disk=bad)


def test_the_unit_table_is_dasks_own():
    """Every unit `dask.utils.parse_bytes` knows, with the same factor, and no other."""
    from dask.utils import byte_sizes, parse_bytes

    assert UNITS == byte_sizes
    for unit in byte_sizes:
        for number in ("3", "1.5", "2e3"):
            text = f"{number}{unit}"
            if float(number) * byte_sizes[unit] >= 10**6:  # our bare-number rule aside
                assert parse_size(text) == parse_bytes(text), text


def test_the_size_module_loads_no_dask():
    code = "import fray_dask.sizes\nfray_dask.sizes.parse_size('16Gi')\n"
    assert heavy_modules_loaded(code, ("dask", "distributed")) == []


def _readers():
    """Every place a user writes a size, each returning bytes or raising ValueError."""

    def cli(text):
        parser = build_parser()
        try:
            args = parser.parse_args(["--memory", text, "script.py"])
        except SystemExit:
            raise ValueError(text) from None
        return parse_memory(args.memory)

    return {
        "parse_size": parse_size,
        "ResourceConfig(ram=)": lambda text: ResourceConfig(ram=text).ram_bytes,
        "zephyr parse_memory": parse_memory,
        "DaskBackend(memory=)": lambda text: DaskBackend(memory=text).config.memory,
        "zephyr --memory": cli,
        "KubeSpec(memory=)": lambda text: KubeSpec(memory=text).memory,
        "kube?memory=": lambda text: parse_kube_spec(f"kube?memory={text}").memory,
    }


@pytest.mark.parametrize(
    "text, expected",
    [
        ("16g", 16 * 10**9),
        ("16GB", 16 * 10**9),
        ("16G", 16 * 10**9),
        ("16Gi", 16 << 30),
        ("16GiB", 16 << 30),
        ("1000000000", 10**9),
        ("16e9", 16 * 10**9),
        ("512MiB", 512 << 20),
    ],
)
def test_every_reader_of_a_size_gives_the_same_bytes(text, expected):
    got = {name: read(text) for name, read in _readers().items()}
    assert got == dict.fromkeys(got, expected)


@pytest.mark.parametrize("text", ["16i", "16", "lots", "-1g", "g", "16 gigs"])
def test_every_reader_of_a_size_refuses_the_same_strings(text):
    refused = []
    for name, read in _readers().items():
        try:
            read(text)
        except (ValueError, argparse.ArgumentTypeError):
            refused.append(name)
    assert refused == list(_readers())


@pytest.mark.parametrize(
    "n, text",
    [(16 * 10**9, "16GB"), (64 * 10**12, "64TB"), (12_884_901_888, "12.88GB"), (999, "999B")],
)
def test_sizes_are_shown_in_decimal_units_that_parse_back(n, text):
    assert format_size(n) == text
    assert abs(parse_size(text) - n) <= n * 1e-3
