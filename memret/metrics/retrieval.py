"""Retrieval metrics over TREC-style dicts, in pure Python.

``qrels = {qid: {docid: relevance}}``, ``run = {qid: {docid: score}}``. Ranking
follows trec_eval: score descending, ties broken by docid descending. Gains are
linear in relevance and the discount is ``log2(rank + 1)``, as in trec_eval's
``ndcg_cut`` (and so pytrec_eval and BEIR). Averages are over the queries that
appear in both ``qrels`` and ``run`` (BEIR's convention). pytrec_eval is the
reference these are tested against; this module needs only the standard library.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Docids in trec_eval order: score descending, then docid descending."""
    return [d for d, _ in sorted(scores.items(), key=lambda t: (t[1], t[0]), reverse=True)]


def _ndcg(rels: Mapping[str, int], docs: list[str], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs[:k]) if rels.get(d, 0) > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def per_query(qrels: Qrels, run: Run, ks: Iterable[int] = (1, 3, 5, 10, 100, 1000)) -> dict[str, dict[str, float]]:
    """Per-query metrics named as pytrec_eval names them.

    Returns:
        ``{qid: {"ndcg_cut_10": ..., "recall_100": ..., "recall_cap_100": ..., "P_10": ...,
        "recip_rank_10": ..., "map_cut_100": ...}}`` for every qid in both inputs.
    """
    out: dict[str, dict[str, float]] = {}
    for qid, scores in run.items():
        if qid not in qrels:
            continue
        rels = qrels[qid]
        n_rel = sum(1 for r in rels.values() if r > 0)
        docs = ranked(scores)
        hit = [rels.get(d, 0) > 0 for d in docs]
        m: dict[str, float] = {}
        for k in ks:
            hits_k = sum(hit[:k])
            m[f"ndcg_cut_{k}"] = _ndcg(rels, docs, k)
            m[f"recall_{k}"] = hits_k / n_rel if n_rel else 0.0
            m[f"recall_cap_{k}"] = hits_k / min(k, n_rel) if n_rel else 0.0
            m[f"P_{k}"] = hits_k / k
            first = next((i for i, h in enumerate(hit[:k]) if h), None)
            m[f"recip_rank_{k}"] = 1.0 / (first + 1) if first is not None else 0.0
            ap = sum(sum(hit[: i + 1]) / (i + 1) for i in range(min(k, len(hit))) if hit[i])
            m[f"map_cut_{k}"] = ap / n_rel if n_rel else 0.0
        out[qid] = m
    return out


def mean_metrics(per_q: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over queries."""
    if not per_q:
        return {}
    names = next(iter(per_q.values())).keys()
    return {n: sum(m[n] for m in per_q.values()) / len(per_q) for n in names}


def evaluate(qrels: Qrels, run: Run, ks: Iterable[int] = (1, 3, 5, 10, 100, 1000)) -> dict[str, float]:
    """Mean metrics over queries; see :func:`per_query`."""
    return mean_metrics(per_query(qrels, run, ks))
