"""Dense retrieval: a TextEncoder in front of a DenseIndex, with corpus embeddings cached on disk."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from memret.index import DenseIndex
from memret.retrieval.base import Corpus, Hit, doc_text
from memret.retrieval.bm25 import corpus_checksum
from memret.persist import atomic_write
from memret.retrieval.encoder import TextEncoder

log = logging.getLogger(__name__)


class DenseRetriever:
    """Encode the corpus once, search it by inner product (or cosine, if the encoder normalises).

    Args:
        encoder: a :class:`TextEncoder` (or anything with ``encode_queries``,
            ``encode_passages``, ``embed_dim`` and ``cache_key``).
        factory: FAISS factory string of the index (exact ``"Flat"`` by default).
        cache_dir: corpus embeddings are cached as ``emb-<corpus sha>-<encoder key>.npy``;
            ``None`` disables the cache.
        show_progress: progress bar while encoding the corpus.
    """

    def __init__(self, encoder: TextEncoder, factory: str = "Flat", cache_dir: str | os.PathLike | None = "indices",
                 show_progress: bool = True) -> None:
        self.encoder, self.factory = encoder, factory
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.show_progress = show_progress
        self.dense_index: DenseIndex | None = None

    def embed_corpus(self, corpus: Corpus) -> tuple[list[str], np.ndarray]:
        """(docids, (n, d) embeddings), from the cache when this corpus and encoder were seen before."""
        docids = list(corpus)
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"emb-{corpus_checksum(corpus)}-{self.encoder.cache_key}.npy"
            if path.is_file():
                emb = np.load(path, allow_pickle=False)
                if emb.shape == (len(docids), self.encoder.embed_dim):
                    log.info("corpus embeddings from cache %s", path)
                    return docids, emb
        emb = self.encoder.encode_passages([doc_text(corpus[d]) for d in docids], show_progress=self.show_progress)
        if path is not None:
            atomic_write(path, lambda f: np.save(f, emb, allow_pickle=False))
        return docids, emb

    def index(self, corpus: Corpus) -> None:
        docids, emb = self.embed_corpus(corpus)
        idx = DenseIndex(self.encoder.embed_dim, self.factory, "ip")
        idx.train(emb)
        idx.add(docids, emb)
        self.dense_index = idx

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if self.dense_index is None:
            raise RuntimeError("no index: call index(corpus) first")
        q = self.encoder.encode_queries(list(queries))
        D, I = self.dense_index.search(q, k)
        return [[Hit(d, float(s)) for d, s in zip(ids, sc) if d is not None] for ids, sc in zip(I, D)]


class HybridRetriever:
    """Fuse several retrievers' rankings per query (RRF by default), e.g. BM25 + dense.

    Args:
        retrievers: the retrievers to fuse (each is indexed with the same corpus).
        method: ``"rrf"`` (k = ``rrf_k``) or ``"interpolate"`` (min-max normalised, ``weights``).
        depth: how deep each retriever is read before fusing (default: max(k, 100)).
    """

    def __init__(self, retrievers: Sequence, method: str = "rrf", rrf_k: int = 60,
                 weights: Sequence[float] | None = None, depth: int | None = None) -> None:
        if method not in ("rrf", "interpolate"):
            raise ValueError(f"unknown fusion {method!r}; known: ['interpolate', 'rrf']")
        self.retrievers, self.method, self.rrf_k, self.depth = list(retrievers), method, rrf_k, depth
        self.weights = list(weights) if weights is not None else [1.0 / len(self.retrievers)] * len(self.retrievers)

    def index(self, corpus: Corpus) -> None:
        for r in self.retrievers:
            r.index(corpus)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        from memret.retrieval.fusion import interpolate, rrf

        depth = self.depth or max(k, 100)
        runs = [r.search(queries, depth) for r in self.retrievers]
        out = []
        for per_q in zip(*runs):
            fused = rrf(per_q, self.rrf_k, k) if self.method == "rrf" else interpolate(per_q, self.weights, depth=k)
            out.append(fused)
        return out
