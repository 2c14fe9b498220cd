"""BEIR evaluation of any retriever: run it, drop each query's own id, score with pytrec_eval."""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

from memret.beir.data import BeirData
from memret.metrics.retrieval import per_query
from memret.persist import atomic_write
from memret.retrieval.base import Hit, Retriever

Run = dict[str, dict[str, float]]
NDCG_KS, RECALL_KS = (1, 3, 5, 10, 100), (10, 100, 1000)


def to_run(qids: Sequence[str], hits: Sequence[Sequence[Hit]], k: int, exclude_self: bool = True) -> Run:
    """TREC run dict from per-query hit lists, keeping k hits and never a query's own id (ArguAna convention)."""
    run: Run = {}
    for qid, hs in zip(qids, hits):
        kept = [h for h in hs if not (exclude_self and h.docid == qid)][:k]
        run[qid] = {h.docid: h.score for h in kept}
    return run


def retrieve(retriever: Retriever, data: BeirData, k: int = 1000, exclude_self: bool = True) -> list[list[Hit]]:
    """Index the corpus and search every query, one deeper than k so dropping the own id leaves k."""
    retriever.index(data.corpus)
    qids = list(data.queries)
    return retriever.search([data.queries[q] for q in qids], k + int(exclude_self))


def score_run(qrels: Mapping[str, Mapping[str, int]], run: Run) -> dict[str, float]:
    """Mean metrics named as pytrec_eval names them, computed by pytrec_eval, plus capped recall
    (``recall_cap_100``, BEIR's R_cap) and MRR@10 (``recip_rank_10``), which trec_eval lacks."""
    try:
        import pytrec_eval
    except ImportError:
        raise ImportError("pytrec_eval is needed: pip install 'memret[text]'") from None
    measures = {"ndcg_cut." + ",".join(map(str, NDCG_KS)), "recall." + ",".join(map(str, RECALL_KS)),
                "map_cut.100", "P.10"}
    ev = pytrec_eval.RelevanceEvaluator({q: dict(d) for q, d in qrels.items()}, measures)
    per_q = ev.evaluate(run)
    if not per_q:
        return {}
    names = sorted(next(iter(per_q.values())))
    out = {n: sum(m[n] for m in per_q.values()) / len(per_q) for n in names}
    extra = per_query(qrels, run, ks=(10, 100))
    for name in ("recall_cap_100", "recip_rank_10"):
        out[name] = sum(m[name] for m in extra.values()) / len(extra)
    return out


def evaluate(retriever: Retriever, data: BeirData, k: int = 1000, exclude_self: bool = True) -> tuple[dict, Run]:
    """Evaluate any object with ``index(corpus)`` and ``search(queries, k)`` on a BEIR data set.

    Returns:
        ``(metrics, run)``.
    """
    hits = retrieve(retriever, data, k, exclude_self)
    run = to_run(list(data.queries), hits, k, exclude_self)
    return score_run(data.qrels, run), run


def write_trec(run: Run, path: str | os.PathLike, tag: str = "memret") -> None:
    """Write a TREC run file (qid Q0 docid rank score tag), atomically."""
    lines = [f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n"
             for qid, docs in run.items()
             for rank, (docid, score) in enumerate(sorted(docs.items(), key=lambda t: (-t[1], t[0])), 1)]
    atomic_write(path, lambda f: f.write("".join(lines).encode()))


def average(per_dataset: Mapping[str, Mapping[str, float]], names: Iterable[str] | None = None) -> dict[str, float]:
    """Unweighted mean over data sets of each metric."""
    sets = list(per_dataset.values())
    names = list(names) if names is not None else list(sets[0]) if sets else []
    return {n: sum(m[n] for m in sets) / len(sets) for n in names}
