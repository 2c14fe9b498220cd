"""Hybrid retrieval: fusion as pure functions over result lists, and the retriever that fuses others."""

from __future__ import annotations

from typing import Literal, Sequence

from memret.retrieval.base import Corpus, Hit, Retriever


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


class HybridRetriever:
    """Fuse several retrievers' rankings per query (RRF by default), e.g. BM25 + dense.

    Args:
        retrievers: the retrievers to fuse (each is indexed with the same corpus).
        method: ``"rrf"`` (k = ``rrf_k``) or ``"interpolate"`` (a ``weights``-weighted sum of each run's
            scores after ``norm``: ``"minmax"``, ``"zscore"`` or ``"none"``).
        depth: how deep each retriever is read before fusing (default: max(k, 100)).

    Retrievers that are already indexed need no :meth:`index` call; when their hit lists are at hand
    already (e.g. each was evaluated on its own), :meth:`fuse` combines them without searching again.
    """

    def __init__(self, retrievers: Sequence[Retriever], method: str = "rrf", rrf_k: int = 60,
                 weights: Sequence[float] | None = None, depth: int | None = None,
                 norm: Literal["minmax", "zscore", "none"] = "minmax") -> None:
        if method not in ("rrf", "interpolate"):
            raise ValueError(f"unknown fusion {method!r}; known: ['interpolate', 'rrf']")
        if norm not in ("minmax", "zscore", "none"):
            raise ValueError(f"unknown score normalisation {norm!r}; known: ['minmax', 'none', 'zscore']")
        self.norm = norm
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        self.retrievers, self.method, self.rrf_k, self.depth = list(retrievers), method, rrf_k, depth
        self.weights = list(weights) if weights is not None else [1.0 / len(self.retrievers)] * len(self.retrievers)
        if len(self.weights) != len(self.retrievers):
            raise ValueError(f"{len(self.retrievers)} retrievers but {len(self.weights)} weights")

    def index(self, corpus: Corpus) -> None:
        for r in self.retrievers:
            r.index(corpus)

    def search_depth(self, k: int) -> int:
        """How many hits each retriever is asked for when the fused list is to hold k."""
        return self.depth or max(k, 100)

    def fuse(self, runs: Sequence[Sequence[Sequence[Hit]]], k: int) -> list[list[Hit]]:
        """Fuse per-retriever results: ``runs[r][q]`` is retriever r's hit list for query q (best first).

        Returns:
            For each query, the top k fused hits.
        """
        if len(runs) != len(self.retrievers):
            raise ValueError(f"{len(runs)} runs for {len(self.retrievers)} retrievers")
        if len({len(r) for r in runs}) > 1:
            raise ValueError(f"runs cover different numbers of queries: {[len(r) for r in runs]}")
        out = []
        for per_q in zip(*runs):
            if self.method == "rrf":
                out.append(rrf(per_q, self.rrf_k, k))
            else:
                out.append(interpolate(per_q, self.weights, self.norm, depth=k))
        return out

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        depth = self.search_depth(k)
        return self.fuse([r.search(queries, depth) for r in self.retrievers], k)
