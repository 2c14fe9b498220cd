"""Argument checks shared by DenseIndex and ExemplarBank: matrices, dimensions, k."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# k may exceed the number of stored vectors (the result is padded) up to this many columns;
# beyond both, the padded (nq, k) result would be memory asked for by mistake.
MAX_PADDED_K = 4096


def is_int(x: Any) -> bool:
    """A Python or numpy int that is not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_dim(dim: Any) -> int:
    """``dim`` as an int; ``ValueError`` unless it is a positive int (a bool is not)."""
    if not is_int(dim) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {type(dim).__name__} {dim!r}")
    return int(dim)


def check_k(k: Any, n_stored: int) -> int:
    """``k`` as an int: at least 1, and at most ``max(n_stored, MAX_PADDED_K)``."""
    if not is_int(k):
        raise TypeError(f"k must be a positive int, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > max(n_stored, MAX_PADDED_K):
        raise ValueError(f"k={k} is more than the {n_stored} stored vectors (results are padded up to "
                         f"k={MAX_PADDED_K} at most): ask for k <= {max(n_stored, MAX_PADDED_K)}")
    return int(k)


def as_matrix(x: Any, dim: int, name: str = "vectors") -> np.ndarray:
    """Check ``x`` is a finite real (n, dim) matrix and return it as C-contiguous float32."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == dim and x.flags.c_contiguous:
        arr = x  # the hot path (searches): nothing to convert
    else:
        arr = _convert(x, dim, name)
    # NaN and inf survive a sum, so one pass finds them; a finite sum can overflow to inf in
    # float32, so the exact check confirms before raising. (Not a BLAS call: numpy's OpenBLAS
    # threads spin after a call and would steal the cores from the FAISS search that follows.)
    if not math.isfinite(arr.sum()):
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise ValueError(f"{name} contain NaN or inf in {bad.size} row(s), first at row {bad[0]}")
    return arr


def _convert(x: Any, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (use x.reshape(1, -1) for a single vector)" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n, {dim}), got shape {arr.shape}{hint}")
    if arr.shape[1] != dim:
        raise ValueError(f"{name} have dimension {arr.shape[1]}, the index has dim={dim}")
    return np.ascontiguousarray(arr, dtype=np.float32)
