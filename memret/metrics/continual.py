"""Continual-learning metrics as pure functions of an accuracy matrix.

``R[i, j]`` is the accuracy on task j's test data after training on tasks 0..i
(entries with j > i are ignored; NaN is fine there). Shapes: (T, T).
"""

from __future__ import annotations

import numpy as np


def _check(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square (T, T) with T >= 1, got shape {R.shape}")
    return R


def seen_accuracy(R: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """(T,) accuracy over all tasks seen after each step, weighted by test-set ``sizes`` (default equal)."""
    R = _check(R)
    T = R.shape[0]
    w = np.ones(T) if sizes is None else np.asarray(sizes, dtype=np.float64)
    return np.array([np.average(R[i, : i + 1], weights=w[: i + 1]) for i in range(T)])


def average_incremental_accuracy(R: np.ndarray, sizes: np.ndarray | None = None) -> float:
    """iCaRL's average incremental accuracy: the mean over steps of the accuracy on all classes seen."""
    return float(seen_accuracy(R, sizes).mean())


def last_accuracy(R: np.ndarray, sizes: np.ndarray | None = None) -> float:
    """Accuracy on all tasks after the last step."""
    return float(seen_accuracy(R, sizes)[-1])


def forgetting(R: np.ndarray) -> float:
    """Average forgetting (Chaudhry et al. 2018): mean over j < T-1 of max_{l<T-1} R[l, j] - R[T-1, j]."""
    R = _check(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def bwt(R: np.ndarray) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017): mean over j < T-1 of R[T-1, j] - R[j, j]."""
    R = _check(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def summarize(R: np.ndarray, sizes: np.ndarray | None = None) -> dict[str, float]:
    """All of the above in one dict (fractions in [0, 1])."""
    return {
        "average_incremental_accuracy": average_incremental_accuracy(R, sizes),
        "last_accuracy": last_accuracy(R, sizes),
        "forgetting": forgetting(R),
        "bwt": bwt(R),
    }
