"""Parsing memory and disk sizes ("16g", "8GB", "512MiB", bytes) for ResourceConfig.

Pure Python. Units follow Kubernetes and Dask (`dask worker --memory-limit`, `--resources
MEMORY=16e9`, zephyr's `--memory`): k, m, g, t (with or without B) are decimal, 16g = 16e9 bytes;
Ki, Mi, Gi, Ti (with or without B) are binary, 16Gi = 16 * 2**30. A bare number is bytes, and one
too small to be meant as bytes is an error that suggests the unit.
"""

from __future__ import annotations

import re

_SCALE = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$", re.I)

# A bare number below this is almost certainly a size in GB written without its unit
# (`ram="16"` meant 16 GB, not 16 bytes). No job runs in less than a megabyte.
_SMALLEST_BARE = 10**6


def parse_size(value: str | int | float, *, what: str = "size") -> int:
    """Bytes in `value`: an int (bytes) or a string such as "16g", "16G", "8GB" (decimal:
    8e9), "512MiB", "16Gi" (binary: 16 * 2**30), "1.5t".

    Raises ValueError naming `what` for anything else, and for a bare number under 1 MB
    (`"16"` -> "did you mean '16g'?").
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} must be a size such as '16g' or '512Mi', got {value!r}")
    if isinstance(value, int | float):
        number, unit, binary = float(value), "", False
    else:
        match = _SIZE.match(value)
        if not match or (match.group(3) and not match.group(2)):  # "16i" has no unit
            raise ValueError(
                f"{what}={value!r} is not a size; write a number with a unit: '512m', '16g', "
                "'8GB' (decimal, 8e9 bytes) or '512Mi', '16GiB' (binary, 16 * 2**30 bytes)"
            )
        number, unit, binary = float(match.group(1)), match.group(2).lower(), bool(match.group(3))
    if not unit and 0 < number < _SMALLEST_BARE:
        shown = f"{number:g}"
        raise ValueError(
            f"{what}={value!r} has no unit, so it means {shown} bytes, too little for any job; "
            f"did you mean '{shown}g'? (units: k, m, g, t; a bare number is bytes)"
        )
    return int(number * (1024 if binary else 1000) ** _SCALE[unit])


def format_size(n: int) -> str:
    """`n` bytes in the largest decimal unit that keeps it readable ("16g", "512m", "1.5g")."""
    for unit in "ptgmk":
        scale = 1000 ** _SCALE[unit]
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)
