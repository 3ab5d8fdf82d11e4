"""cloudpickle that keeps each function's source file name, so tracebacks from another process
point at the user's file and line.

cloudpickle replaces `co_filename` with "<dynamic-code>" in every function it pickles by value
(those of `__main__` and of scripts), so a failure on a worker would show `File "<dynamic-code>"`.
Here code objects keep their file name; loading needs only this module importable (plain
`pickle.loads` / `cloudpickle.loads` work). No Dask import.
"""

from __future__ import annotations

import io
import types
from collections import ChainMap
from typing import Any

import cloudpickle

# cloudpickle's reducer for code objects (private, stable since 2.x); without it, plain dumps.
_code_reduce = getattr(getattr(cloudpickle, "cloudpickle", None), "_code_reduce", None)


def _restore_code(constructor: Any, args: tuple, filename: str) -> types.CodeType:
    """Rebuild a code object from cloudpickle's reduction and give it back its file name."""
    return constructor(*args).replace(co_filename=filename)


def _code_with_filename(code: types.CodeType) -> tuple:
    constructor, args = _code_reduce(code)
    return _restore_code, (constructor, args, code.co_filename)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap(
        {types.CodeType: _code_with_filename}, cloudpickle.Pickler.dispatch_table
    )


def dumps(obj: Any) -> bytes:
    """`cloudpickle.dumps(obj)`, except that functions pickled by value keep their source file name
    (their tracebacks name the user's file and line wherever they run)."""
    if _code_reduce is None:  # pragma: no cover - a cloudpickle without the private reducer
        return cloudpickle.dumps(obj)
    with io.BytesIO() as f:
        _Pickler(f, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
        return f.getvalue()
