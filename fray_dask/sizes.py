"""Parsing memory and disk sizes ("16g", "8GB", "512MiB", bytes) for ResourceConfig.

Pure Python. Units are binary (k = 1024), as memory is sold; a bare number is bytes, and one too
small to be meant as bytes is an error that suggests the unit.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?b?)\s*$", re.I)

# A bare number below this is almost certainly a size in GB written without its unit
# (`ram="16"` meant 16 GB, not 16 bytes). No job runs in less than a mebibyte.
_SMALLEST_BARE = 1 << 20


def parse_size(value: str | int | float, *, what: str = "size") -> int:
    """Bytes in `value`: an int (bytes) or a string such as "16g", "16G", "8GB", "512MiB", "1.5t".

    Raises ValueError naming `what` for anything else, and for a bare number under 1 MiB
    (`"16"` -> "did you mean '16g'?").
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} must be a size such as '16g' or '512MiB', got {value!r}")
    if isinstance(value, int | float):
        number, unit, suffix = float(value), "", ""
    else:
        match = _SIZE.match(value)
        if not match:
            raise ValueError(
                f"{what}={value!r} is not a size; write a number with a unit: "
                "'512m', '16g', '8GB' or '512MiB' (binary units: 1g = 1024**3 bytes)"
            )
        number, unit, suffix = float(match.group(1)), match.group(2).lower(), match.group(3)
        if suffix.lower() == "i":  # "16Gi" is fine, a lone "i" without a unit is not
            if not unit:
                raise ValueError(f"{what}={value!r} is not a size; write '16g' or '16GiB'")
    if not unit and 0 < number < _SMALLEST_BARE:
        shown = f"{number:g}"
        raise ValueError(
            f"{what}={value!r} has no unit, so it means {shown} bytes, too little for any job; "
            f"did you mean '{shown}g'? (units: k, m, g, t; a bare number is bytes)"
        )
    return int(number * _UNITS[unit])


def format_size(n: int) -> str:
    """`n` bytes in the largest binary unit that keeps it readable ("16g", "512m", "1.5g")."""
    for unit in "ptgmk":
        scale = _UNITS[unit]
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)
