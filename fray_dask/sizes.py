"""Sizes in bytes: the one parser and the one formatter every size in the project goes through
(fray's `ram=`/`disk=`, zephyr's `memory=` and `--memory`, the `kube?memory=` spec, and the
MEMORY resource in messages).

The vocabulary is Dask's (`dask.utils.parse_bytes`, what `dask worker --memory-limit` reads):
k, m, g, t, p with or without B are decimal (16g = 16GB = 16e9 bytes), Ki, Mi, Gi, Ti, Pi with or
without B binary (16Gi = 16GiB = 2**34), case-insensitive, so Kubernetes' spellings (16G, 16Gi)
mean what they mean there. Added to Dask's rules: a size must start with a number, must not be
negative, and a bare number under 1 MB is an error that suggests the unit ("16" meant "16g").
Pure Python: importing `dask.utils` loads dask (about 0.3 s and 60 modules), which the pure cores
(fray_dask.types, tpu.manifests) must not; tests/fray_dask/test_sizes.py checks that this table
is Dask's own.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_size", "parse_size"]

_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}
# Dask's `byte_sizes` table: each unit with and without its trailing "b", and bytes themselves.
UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    **_DECIMAL,
    **{f"{u}b": n for u, n in _DECIMAL.items()},
    **_BINARY,
    **{f"{u}b": n for u, n in _BINARY.items()},
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?|\.\d+(?:e\d+)?)\s*([a-z]*)\s*$", re.I)

# A bare number below this is almost certainly a size in GB written without its unit
# (`ram="16"` meant 16 GB, not 16 bytes). No job runs in less than a megabyte.
SMALLEST_BARE = 10**6


def parse_size(value: str | int | float, *, what: str = "size") -> int:
    """Bytes in `value`: an int or float (bytes) or a string such as "16g", "16GB" (decimal:
    16e9), "512MiB", "16Gi" (binary: 16 * 2**30), "1.5t" or "16e9".

    Raises ValueError naming `what` for anything else (a unit with no number, a negative size,
    "16i"), and for a bare number under 1 MB (`"16"` -> "did you mean '16g'?").
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} must be a size such as '16g' or '512Mi', got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
        if number < 0 or not math.isfinite(number):
            raise ValueError(f"{what}={value!r} is not a size; a size is a number of bytes >= 0")
    else:
        match = _SIZE.match(value)
        if not match or match.group(2).lower() not in UNITS:
            raise ValueError(
                f"{what}={value!r} is not a size; write a number with a unit: '512m', '16g', "
                "'8GB' (decimal, 8e9 bytes) or '512Mi', '16GiB' (binary, 16 * 2**30 bytes)"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    if not unit and 0 < number < SMALLEST_BARE:
        shown = f"{number:g}"
        raise ValueError(
            f"{what}={value!r} has no unit, so it means {shown} bytes, too little for any job; "
            f"did you mean '{shown}g'? (units: k, m, g, t; a bare number is bytes)"
        )
    return int(number * UNITS[unit])


def format_size(n: float) -> str:
    """`n` bytes as people write them, in the largest decimal unit that keeps it readable, with at
    most four significant digits: "16GB", "512MB", "12.88GB", "999B". The text parses back with
    `parse_size` (and `dask.utils.parse_bytes`) to `n` up to that rounding."""
    for unit in ("PB", "TB", "GB", "MB", "kB"):
        scale = UNITS[unit.lower()]
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{int(n)}B"
