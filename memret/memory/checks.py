"""Argument and snapshot checks for :class:`~memret.memory.ExemplarBank`.

Every check here is pure: it returns the converted value or raises, so the bank can
validate a whole call before it changes anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memret.persist import CorruptSnapshotError

POLICIES = ("herding", "random", "closest", "reservoir")
METRICS = ("ip", "l2", "cosine")
_INT64_MAX = np.iinfo(np.int64).max


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; bools and non-integers raise (``TypeError`` / ``ValueError``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, known: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in known:
        raise ValueError(f"unknown {name} {value!r}; known: {sorted(known)}")
    return value


def _ints(arr: np.ndarray, name: str) -> np.ndarray:
    """An integer-dtype array as int64, refusing values that would wrap."""
    if arr.size and arr.dtype.kind == "u" and int(arr.max()) > _INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {int(arr.max())}")
    return arr.astype(np.int64)


def as_labels(labels: Any, n: int) -> np.ndarray:
    """(n,) non-negative int class labels as int64 (an empty batch may come as an empty list)."""
    y = np.asarray(labels)
    if y.ndim == 1 and y.shape[0] == n == 0:
        return np.empty(0, dtype=np.int64)
    if y.ndim != 1 or y.shape[0] != n or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-D int array of length {n}, got {y.dtype} {y.shape}")
    y = _ints(y, "labels")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be non-negative class ids, got {int(y.min())}")
    return y


def as_refs(refs: Any, n: int, name: str = "refs") -> np.ndarray:
    """(n,) refs as int64 or as an object array of str; anything else raises ``TypeError``."""
    arr = np.asarray(refs)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.dtype.kind in "iu":
        return _ints(arr, name)
    if arr.dtype.kind == "U" or (arr.dtype == object and all(isinstance(r, str) for r in arr.tolist())):
        return arr.astype(object)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    raise TypeError(f"{name} must be ints or strings, got dtype {arr.dtype}")


def same_ref_kind(stored: np.ndarray, new: np.ndarray, name: str = "refs") -> None:
    """Refs keep one kind (ints or strings) for the life of a non-empty bank."""
    if stored.size and new.size and (stored.dtype == object) != (new.dtype == object):
        kind = "strings" if stored.dtype == object else "ints"
        raise TypeError(f"{name} must be {kind} like the refs already in the bank")


# ---------------------------------------------------------------------- snapshot manifest
def meta_field(meta: Any, key: str, path: Any, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    """``meta[key]`` checked against ``kind`` (bools are never ints); ``CorruptSnapshotError`` names the field."""
    if not isinstance(meta, dict):
        raise CorruptSnapshotError(f"{path}: bank metadata must be a JSON object, got {type(meta).__name__}")
    if key not in meta:
        if optional:
            return None
        raise CorruptSnapshotError(f"{path}: bank metadata has no field {key!r}")
    value = meta[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise CorruptSnapshotError(f"{path}: bank metadata field {key!r} has type {type(value).__name__}")
    return value


def int_list(meta: Any, key: str, path: Any, length: int | None = None, optional: bool = False) -> list[int] | None:
    """A list of non-negative ints in ``meta[key]`` (of ``length`` items when given)."""
    value = meta_field(meta, key, path, list, optional)
    if value is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT64_MAX for v in value):
        raise CorruptSnapshotError(f"{path}: bank metadata field {key!r} must hold non-negative ints")
    if length is not None and len(value) != length:
        raise CorruptSnapshotError(f"{path}: bank metadata field {key!r} has {len(value)} items, expected {length}")
    return list(value)
