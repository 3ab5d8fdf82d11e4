"""Import-boundary checks shared by the packages' tests: run code in a fresh interpreter and list
the heavy top-level modules it loaded."""

from __future__ import annotations

import subprocess
import sys


def heavy_modules_loaded(code: str, heavy: tuple[str, ...]) -> list[str]:
    """Runs `code` in a new `python -c` and returns the modules of the `heavy` packages it left
    in sys.modules (the code itself must succeed)."""
    probe = (
        f"{code}\n"
        "import sys\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [m for m in result.stdout.strip().split(",") if m]
