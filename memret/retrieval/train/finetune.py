"""Supervised fine-tuning data: (query, positive) pairs from BEIR qrels or a JSONL file, and hard negatives
mined with BM25 or with the current dense model, a query's known positives always excluded.

Batches are a pure function of (seed, step): the queries of step ``s`` are a slice of the seeded permutation
of its epoch; each query's positive and hard negatives are drawn with ``example_rng``-style generators.
So a resumed run and a ``torchrun`` run see the same global batches as an uninterrupted single process.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from memret.jsonl import iter_json_objects
from memret.retrieval.base import doc_text


@dataclass
class Pairs:
    """Training queries, their positives, and the corpus they point into.

    ``queries[qid] = text``; ``positives[qid] = [docid, ...]`` (every known positive);
    ``corpus[docid] = {"title", "text"}``; ``negatives[qid] = [docid, ...]`` hard negatives, best first.
    """

    queries: dict[str, str]
    positives: dict[str, list[str]]
    corpus: dict[str, dict[str, str]]
    negatives: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = sorted({d for ds in self.positives.values() for d in ds if d not in self.corpus})
        if missing:
            raise ValueError(f"{len(missing)} positive docid(s) are not in the corpus, e.g. {missing[:3]}")
        empty = [q for q in self.queries if not self.positives.get(q)]
        if empty:
            raise ValueError(f"{len(empty)} query(ies) have no positive, e.g. {empty[:3]}")

    def __len__(self) -> int:
        return len(self.queries)


def pairs_from_beir(folder: str | os.PathLike, split: str = "train") -> Pairs:
    """Queries with a relevance > 0 in ``qrels/<split>.tsv`` and those documents as their positives."""
    from memret.beir import load_beir

    data = load_beir(folder, split)
    pos = {q: [d for d, r in sorted(rel.items()) if r > 0] for q, rel in data.qrels.items()}
    pos = {q: ds for q, ds in pos.items() if ds}
    return Pairs({q: data.queries[q] for q in pos}, pos, data.corpus)


def _docid(text: str) -> str:
    return "h" + hashlib.sha1(text.encode()).hexdigest()[:16]


def pairs_from_jsonl(path: str | os.PathLike) -> Pairs:
    """Lines ``{"query": str, "positives": [str, ...], "negatives": [str, ...] (optional)}``.

    Every passage in the file becomes a document of the mining corpus; given negatives come first among a
    query's hard negatives.

    Raises:
        ValueError: a malformed line (with its number).
    """
    queries, pos, negs, corpus = {}, {}, {}, {}
    for n, obj in iter_json_objects(path):
        try:
            q, ps, ns = obj["query"], list(obj["positives"]), list(obj.get("negatives", []))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected {{'query': str, 'positives': [str, ...]}} ({e!r})") from None
        if not isinstance(q, str) or not ps or not all(isinstance(t, str) for t in ps + ns):
            raise ValueError(f"{path}:{n}: 'query' must be a string, 'positives' a non-empty list of strings")
        qid = f"q{n}"
        queries[qid] = q
        pos[qid] = [_docid(t) for t in ps]
        negs[qid] = [_docid(t) for t in ns]
        for t in ps + ns:
            corpus[_docid(t)] = {"title": "", "text": t}
    if not queries:
        raise ValueError(f"{path} holds no pairs")
    out = Pairs(queries, pos, corpus)
    out.negatives = {q: exclude_known(ns, pos[q]) for q, ns in negs.items() if ns}
    return out


def holdout(pairs: Pairs, fraction: float, seed: int = 0) -> tuple[Pairs, list[str]]:
    """Carve a seeded ``fraction`` of the queries out for validation.

    Returns:
        ``(pairs without them, held-out query ids)``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    qids = sorted(pairs.queries)
    n = int(round(fraction * len(qids)))
    held = sorted(np.random.default_rng([seed, 11]).choice(qids, n, replace=False).tolist()) if n else []
    keep = [q for q in qids if q not in set(held)]
    return Pairs({q: pairs.queries[q] for q in keep}, {q: pairs.positives[q] for q in keep}, pairs.corpus,
                 {q: pairs.negatives[q] for q in keep if q in pairs.negatives}), held


def exclude_known(ranked: list[str], known: list[str] | set[str]) -> list[str]:
    """``ranked`` without any known positive (order kept, duplicates dropped)."""
    known = set(known)
    return list(dict.fromkeys(d for d in ranked if d not in known))


def mine(pairs: Pairs, retriever, depth: int = 30) -> dict[str, list[str]]:
    """Hard negatives of every query: the top ``depth`` documents of ``retriever`` (any memret retriever:
    ``BM25Retriever``, ``DenseRetriever`` over the current model, ``HybridRetriever``), known positives excluded.

    Returns:
        ``{qid: [docid, ...]}``, best first, at most ``depth`` each, never a positive of that query.
    """
    qids = list(pairs.queries)
    retriever.index(pairs.corpus)
    hits = retriever.search([pairs.queries[q] for q in qids], depth + max(len(p) for p in pairs.positives.values()))
    return {q: exclude_known([h.docid for h in hs], pairs.positives[q])[:depth] for q, hs in zip(qids, hits)}


class FinetuneBatches:
    """Global batches for fine-tuning, a pure function of the step.

    Args:
        pairs: the training pairs (``pairs.negatives`` holds the mined hard negatives).
        batch_size: queries per global batch (incomplete last batches of an epoch are dropped).
        hard_negatives: hard negatives per query (drawn from the first ``depth`` mined, skipping ``skip``).
        seed: fixes permutations and draws.
    """

    def __init__(self, pairs: Pairs, batch_size: int, hard_negatives: int = 1, depth: int = 30, skip: int = 0,
                 seed: int = 0) -> None:
        if len(pairs) < batch_size:
            raise ValueError(f"{len(pairs)} training queries cannot fill a batch of {batch_size}")
        self.pairs, self.batch_size, self.hard, self.depth, self.skip, self.seed = (
            pairs, batch_size, hard_negatives, depth, skip, seed)
        self.qids = sorted(pairs.queries)
        self.steps_per_epoch = len(self.qids) // batch_size
        if hard_negatives and not any(pairs.negatives.get(q) for q in self.qids):
            raise ValueError("hard negatives requested but none were mined")

    def batch(self, step: int) -> dict:
        """``{"q": [query text], "k": [positive text], "n": [negative text] (B * hard), "exclude": (B, K) bool}``,
        where K = B * (1 + hard) candidates ordered ``[positives | negatives]``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch, 3]).permutation(len(self.qids))
        rows = [self.qids[r] for r in perm[i * self.batch_size:(i + 1) * self.batch_size]]
        pos_ids, neg_ids = [], []
        for j, q in enumerate(rows):
            g = np.random.default_rng([self.seed, step, j])
            pos_ids.append(self.pairs.positives[q][int(g.integers(len(self.pairs.positives[q])))])
            pool = self.pairs.negatives.get(q, [])[self.skip:self.skip + self.depth]
            if self.hard:
                if not pool:  # no mined negative for this query: random documents stand in
                    pool = exclude_known(list(self.pairs.corpus)[:1000], self.pairs.positives[q])
                take = g.choice(len(pool), self.hard, replace=len(pool) < self.hard)
                neg_ids += [pool[int(t)] for t in take]
        cand = pos_ids + neg_ids
        known = [set(self.pairs.positives[q]) for q in rows]
        exclude = np.array([[d in known[j] for d in cand] for j in range(len(rows))], dtype=bool)
        text = lambda d: doc_text(self.pairs.corpus[d])  # noqa: E731
        return {"q": [self.pairs.queries[q] for q in rows], "k": [text(d) for d in pos_ids],
                "n": [text(d) for d in neg_ids], "exclude": exclude, "qids": rows, "pos": pos_ids, "neg": neg_ids}


def write_pairs_info(path: Path, pairs: Pairs, held: list[str]) -> None:
    """Record what a run trained on: query ids, held-out ids, and mined negatives (JSON)."""
    path.write_text(json.dumps({"train_qids": sorted(pairs.queries), "holdout_qids": held,
                                "negatives": pairs.negatives}, indent=0))
