"""Brute-force numpy k-NN: the oracle the FAISS-backed index is tested against."""

from __future__ import annotations

import numpy as np


def exact_search(xb: np.ndarray, xq: np.ndarray, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN by a dense (nq, nb) score matrix, in float64.

    Args:
        xb: (nb, d) database vectors; xq: (nq, d) queries.
        k: neighbours per query; metric: "ip", "cosine" or "l2" (squared distance).

    Returns:
        ``(scores, rows)``, (nq, k) each, best first; rows index ``xb``, padded with -1
        when ``k > nb``.
    """
    xb = np.asarray(xb, dtype=np.float64)
    xq = np.asarray(xq, dtype=np.float64)
    if metric == "cosine":
        xb = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-12)
        xq = xq / np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-12)
    if metric == "l2":
        s = (xq**2).sum(1)[:, None] - 2 * xq @ xb.T + (xb**2).sum(1)[None, :]
        order = np.argsort(s, axis=1, kind="stable")
    elif metric in ("ip", "cosine"):
        s = xq @ xb.T
        order = np.argsort(-s, axis=1, kind="stable")
    else:
        raise ValueError(f"unknown metric {metric!r}; known: ['cosine', 'ip', 'l2']")
    kk = min(k, xb.shape[0])
    rows = order[:, :kk]
    scores = np.take_along_axis(s, rows, axis=1)
    if kk < k:
        pad = np.full((xq.shape[0], k - kk), np.inf if metric == "l2" else -np.inf)
        scores = np.hstack([scores, pad])
        rows = np.hstack([rows, np.full((xq.shape[0], k - kk), -1)])
    return scores.astype(np.float32), rows.astype(np.int64)
