"""Shuffle keys: a hash that is the same in every process (never Python's salted `hash()` of
str), and the error for keys that cannot be ordered. Pure: no I/O, no Dask."""

from __future__ import annotations

import numbers
import pickle
import zlib
from typing import Any

import msgspec

_encode = msgspec.msgpack.Encoder(order="sorted").encode


class KeyOrderError(TypeError):
    """Keys (or sort_by values) of two types that cannot be compared met in one output shard."""


def key_bytes(key: Any) -> bytes:
    """Bytes that are equal for equal keys in every process: UTF-8 for str, the digits for
    integers (and for bools and integral floats, which compare equal to them, numpy's included),
    the parts' bytes for tuples and lists, msgpack for dicts of those (keys sorted), pickle for
    other objects. Sets are refused: their order, hence their bytes, differs between processes."""
    kind = type(key)
    if kind is str:
        return key.encode("utf-8", "surrogatepass")
    if kind is int or kind is bool:
        return b"%d" % key
    if isinstance(key, str):  # numpy.str_ and other subclasses: equal to their str
        return str.encode(key, "utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + bytes(key)
    if isinstance(key, numbers.Real):  # numpy numbers and Fractions equal Python's ints/floats
        value = float(key) if not isinstance(key, numbers.Integral) else int(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return b"%d" % value if isinstance(value, int) else repr(value).encode()
    if isinstance(key, (tuple, list)):
        return b"\x1e".join([key_bytes(part) for part in key]) + b"\x1d"
    if isinstance(key, (set, frozenset)):
        raise TypeError(
            f"a shuffle key must hash the same in every process, and a {kind.__name__} does not "
            f"(its order differs between processes), got {key!r}; use a sorted tuple instead"
        )
    try:
        return _encode(key)
    except (TypeError, msgspec.EncodeError):
        return pickle.dumps(key, protocol=5)


def partition_of(key: Any, partitions: int) -> int:
    """The output shard of `key`: a CRC-32 of its stable bytes, modulo `partitions`."""
    return zlib.crc32(key_bytes(key)) % partitions


def unorderable(keys: list, what: str = "keys") -> KeyOrderError:
    """The error for `keys` that cannot be sorted: it names two types that do not compare."""
    seen: dict[type, Any] = {}
    for key in keys:
        seen.setdefault(type(key), key)
    kinds = list(seen.items())
    for i, (a, x) in enumerate(kinds):
        for b, y in kinds[i + 1 :]:
            try:
                x < y  # noqa: B015 - only whether the comparison works
                y < x  # noqa: B015
            except TypeError:
                return _order_error(what, a.__name__, b.__name__, x, y)
    first = keys[0] if keys else None
    return KeyOrderError(
        f"{what} cannot be ordered, and they must be (within an output shard, records come out "
        f"sorted by key): e.g. {first!r}; make the function return one orderable type (str, int, "
        "or tuples of those)"
    )


def _order_error(what: str, a: str, b: str, x: Any, y: Any) -> KeyOrderError:
    return KeyOrderError(
        f"{what} of types {a!r} and {b!r} cannot be ordered (e.g. {x!r} and {y!r}), and they must "
        "be: within an output shard records come out sorted by key; make the function return one "
        "type, e.g. str(...)"
    )
