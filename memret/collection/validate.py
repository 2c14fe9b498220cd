"""Input checks for Collection writes: each raises a clear error before anything is changed."""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import numpy as np


def check_ids(ids: Any) -> list[str]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError("ids must be a list of strings")
    ids = list(ids)
    for i in ids:
        if not isinstance(i, str) or not i:
            raise TypeError(f"ids must be non-empty strings, got {i!r}")
        utf8(i, "id")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"id {dup!r} appears more than once in one call")
    return ids


def utf8(s: str, what: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {s[:40]!r} is not valid Unicode (lone surrogate)") from None


def check_metadata(metadata: Any, n: int) -> list[str]:
    if metadata is None:
        return ["{}"] * n
    metadata = list(metadata)
    if len(metadata) != n:
        raise ValueError(f"got {len(metadata)} metadata dicts for {n} documents")
    out = []
    for i, m in enumerate(metadata):
        if m is None:
            m = {}
        if not isinstance(m, Mapping):
            raise TypeError(f"metadata[{i}] must be a dict, got {type(m).__name__}")
        try:
            text = json.dumps(dict(m), allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            raise ValueError(f"metadata[{i}] is not JSON-serialisable with finite numbers and valid Unicode: "
                             f"{e}") from None
        out.append(text)
    return out


def check_texts(texts: Any, n: int) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise TypeError("texts must be a list of strings")
    texts = list(texts)
    if len(texts) != n:
        raise ValueError(f"got {len(texts)} texts for {n} ids")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        utf8(t, "text")
    return texts


def check_vectors(vecs: Any, n: int, dim: int | None, metric: str) -> np.ndarray:
    """``vecs`` as a C-contiguous float32 (n, dim) array of finite values (non-zero rows for cosine)."""
    vecs = np.asarray(vecs)
    if vecs.dtype == object or vecs.ndim != 2 or vecs.shape[0] != n:
        raise ValueError(f"vectors must be a ({n}, dim) numeric array, got shape {vecs.shape}")
    if not (np.issubdtype(vecs.dtype, np.floating) or np.issubdtype(vecs.dtype, np.integer)):
        raise TypeError(f"vectors must be numeric, got dtype {vecs.dtype}")
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    if dim is not None and vecs.shape[1] != dim:
        raise ValueError(f"vectors have dimension {vecs.shape[1]}, the collection holds {dim}-d")
    if vecs.shape[1] == 0:
        raise ValueError("vectors must have at least one dimension")
    if not np.isfinite(vecs).all():
        raise ValueError(f"vectors contain NaN or inf (row {int(np.flatnonzero(~np.isfinite(vecs).all(1))[0])})")
    if metric == "cosine" and (np.linalg.norm(vecs, axis=1) == 0).any():
        raise ValueError("a zero vector has no direction (metric='cosine')")
    return vecs
