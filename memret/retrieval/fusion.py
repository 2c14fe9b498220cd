"""Hybrid retrieval as pure functions over result lists."""

from __future__ import annotations

from typing import Literal, Sequence

from memret.retrieval.base import Hit


def rrf(runs: Sequence[Sequence[Hit]], k: int = 60, depth: int | None = None) -> list[Hit]:
    """Reciprocal rank fusion (Cormack et al. 2009): score(d) = sum over runs of 1 / (k + rank(d)).

    Args:
        runs: ranked hit lists for one query, best first.
        k: the RRF constant (60 in the paper and in Pyserini).
        depth: keep the top ``depth`` fused hits (default: all).

    Returns:
        Fused hits, best first; ties broken by docid for determinism.
    """
    scores: dict[str, float] = {}
    for run in runs:
        for rank, hit in enumerate(run, start=1):
            scores[hit.docid] = scores.get(hit.docid, 0.0) + 1.0 / (k + rank)
    fused = sorted(scores.items(), key=lambda t: (-t[1], t[0]))
    return [Hit(d, s) for d, s in fused[:depth]]


def _normalized(run: Sequence[Hit], norm: str) -> dict[str, float]:
    if not run:
        return {}
    s = [h.score for h in run]
    if norm == "minmax":
        lo, hi = min(s), max(s)
        span = hi - lo or 1.0
        return {h.docid: (h.score - lo) / span for h in run}
    if norm == "zscore":
        mu = sum(s) / len(s)
        sd = (sum((x - mu) ** 2 for x in s) / len(s)) ** 0.5 or 1.0
        return {h.docid: (h.score - mu) / sd for h in run}
    return {h.docid: h.score for h in run}


def interpolate(
    runs: Sequence[Sequence[Hit]],
    weights: Sequence[float],
    norm: Literal["minmax", "zscore", "none"] = "minmax",
    depth: int | None = None,
) -> list[Hit]:
    """Weighted sum of per-run normalised scores; a document missing from a run scores that run's minimum.

    Args:
        runs: ranked hit lists for one query.
        weights: one weight per run (e.g. ``[0.5, 0.5]``).
        norm: per-run score normalisation before mixing.
    """
    if len(runs) != len(weights):
        raise ValueError(f"{len(runs)} runs but {len(weights)} weights")
    normed = [_normalized(r, norm) for r in runs]
    docs = {d for n in normed for d in n}
    floor = [min(n.values()) if n else 0.0 for n in normed]
    scores = {d: sum(w * n.get(d, f) for w, n, f in zip(weights, normed, floor)) for d in docs}
    fused = sorted(scores.items(), key=lambda t: (-t[1], t[0]))
    return [Hit(d, s) for d, s in fused[:depth]]
