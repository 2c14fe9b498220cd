"""Dense retrieval: a TextEncoder in front of a DenseIndex, with corpus embeddings cached on disk."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from memret.index import DenseIndex
from memret.persist import atomic_write
from memret.retrieval.base import Corpus, Hit, doc_text
from memret.retrieval.corpus import corpus_checksum
from memret.retrieval.encoder import TextEncoder
from memret.retrieval.fusion import HybridRetriever  # noqa: F401  (its home before fusion.py; kept importable)

log = logging.getLogger(__name__)


class DenseRetriever:
    """Encode the corpus once, search it by inner product (or cosine, if the encoder normalises).

    Args:
        encoder: a :class:`TextEncoder` (or anything with ``encode_queries``,
            ``encode_passages``, ``embed_dim`` and ``cache_key``).
        factory: FAISS factory string of the index (exact ``"Flat"`` by default).
        cache_dir: corpus embeddings are cached as ``emb-<corpus sha>-<encoder key>.npz`` (arrays ``ids``
            and ``emb``, no pickle), so a cached matrix is used only for the documents it was made from, in
            whatever order the corpus comes; ``None`` disables the cache.
        show_progress: progress bar while encoding the corpus.
    """

    def __init__(self, encoder: TextEncoder, factory: str = "Flat", cache_dir: str | os.PathLike | None = "indices",
                 show_progress: bool = True) -> None:
        self.encoder, self.factory = encoder, factory
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.show_progress = show_progress
        self.dense_index: DenseIndex | None = None

    def cache_path(self, corpus: Corpus) -> Path | None:
        """Where this corpus's embeddings by this encoder are cached (None: no cache)."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"emb-{corpus_checksum(corpus)}-{self.encoder.cache_key}.npz"

    def embed_corpus(self, corpus: Corpus) -> tuple[list[str], np.ndarray]:
        """(docids in corpus order, (n, d) embeddings row-aligned with them), from the cache when this corpus
        and encoder were seen before (in any document order)."""
        docids = list(corpus)
        path = self.cache_path(corpus)
        if path is not None and path.is_file():
            emb = _cached_rows(path, docids, self.encoder.embed_dim)
            if emb is not None:
                log.info("corpus embeddings from cache %s", path)
                return docids, emb
        emb = self.encoder.encode_passages([doc_text(corpus[d]) for d in docids], show_progress=self.show_progress)
        if path is not None:
            ids = np.array(docids, dtype=str)  # fixed-width unicode: no pickle needed to read it back
            atomic_write(path, lambda f: np.savez(f, ids=ids, emb=emb))
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


def _cached_rows(path: Path, docids: list[str], dim: int) -> np.ndarray | None:
    """The cached embeddings of ``docids`` in that order, or None (with a warning) when the file does not
    hold exactly these documents, one row each, of width ``dim``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, emb = z["ids"].tolist(), z["emb"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("re-encoding: unreadable embedding cache %s (%s)", path, e)
        return None
    if emb.ndim != 2 or emb.shape != (len(ids), dim) or not isinstance(ids, list):
        log.warning("re-encoding: embedding cache %s holds %s rows for %s ids", path, emb.shape, len(ids))
        return None
    row = {d: i for i, d in enumerate(ids)}
    if len(row) != len(ids) or len(ids) != len(docids) or any(d not in row for d in docids):
        log.warning("re-encoding: embedding cache %s was made for other documents", path)
        return None
    if ids == docids:
        return emb
    return emb[np.fromiter((row[d] for d in docids), np.int64, len(docids))]
