"""Exemplar selection policies as pure functions over one class's features.

Each returns row indices in *priority order*: the first m of an ordering of
length M >= m is that policy's choice for a budget of m. This is what lets the
bank shrink a class to a smaller quota by truncation, exactly as iCaRL's
``ReduceExemplarSet`` does.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

Policy = Literal["herding", "random", "closest", "reservoir"]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def herding(features: np.ndarray, m: int, normalize: bool = True) -> np.ndarray:
    """iCaRL herding (Rebuffi et al. 2017, Alg. 4): greedy mean matching.

    Step k picks, among rows not yet chosen, ``argmin_i || mu - (phi_i + sum_{j<k} phi_{p_j}) / k ||``
    with ``mu`` the mean of all (L2-normalised, as in iCaRL) features.
    The squared distance expands to terms that need one matrix-vector
    product per step: O(m * n * d) in all, no (n, d) temporaries per step.

    Args:
        features: (n, d) features of one class.
        m: how many to pick (clipped to n).
        normalize: L2-normalise rows first (iCaRL does).

    Returns:
        (min(m, n),) int64 row indices, in selection order.
    """
    phi = _normalize(features) if normalize else np.asarray(features, dtype=np.float64)
    n = phi.shape[0]
    m = min(int(m), n)
    mu = phi.mean(axis=0)
    phi_mu = phi @ mu  # (n,)
    sq = np.einsum("ij,ij->i", phi, phi)  # (n,)
    running = np.zeros_like(mu)
    phi_running = np.zeros(n)  # phi @ running, kept up to date incrementally
    taken = np.zeros(n, dtype=bool)
    order = np.empty(m, dtype=np.int64)
    for k in range(1, m + 1):
        # k^2 * ||mu - (running + phi_i)/k||^2 minus the terms constant in i
        cost = -2.0 * k * phi_mu + 2.0 * phi_running + sq
        cost[taken] = np.inf
        i = int(np.argmin(cost))
        order[k - 1] = i
        taken[i] = True
        running += phi[i]
        phi_running += phi @ phi[i]
    return order


def closest_to_mean(features: np.ndarray, m: int, normalize: bool = True) -> np.ndarray:
    """Rows nearest the class mean first (the 'closest' baseline of iCaRL-style studies)."""
    phi = _normalize(features) if normalize else np.asarray(features, dtype=np.float64)
    d = np.linalg.norm(phi - phi.mean(axis=0), axis=1)
    return np.argsort(d, kind="stable")[: min(int(m), len(d))].astype(np.int64)


def random_order(features: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random subset of m rows, in random order."""
    n = len(features)
    return rng.permutation(n)[: min(int(m), n)].astype(np.int64)


def get_policy(name: str, rng: np.random.Generator) -> Callable[[np.ndarray, int], np.ndarray]:
    """The per-class selection function for ``name`` (``reservoir`` is stream-level, see the bank)."""
    table: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
        "herding": herding,
        "closest": closest_to_mean,
        "random": lambda f, m: random_order(f, m, rng),
    }
    if name not in table:
        raise ValueError(f"unknown per-class policy {name!r}; known: {sorted(table) + ['reservoir']}")
    return table[name]
