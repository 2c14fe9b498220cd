"""BM25 through Pyserini (Lucene), with the index built from a BEIR corpus and cached under ``indices/``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from memret.retrieval.base import Corpus, Hit, doc_text
from memret.retrieval.corpus import corpus_checksum

log = logging.getLogger(__name__)
_DONE = "memret-index.json"


def build_lucene_index(corpus: Corpus, out_dir: str | os.PathLike, threads: int = 2) -> Path:
    """Index ``corpus`` with Anserini's ``IndexCollection`` in Pyserini's BEIR "flat" layout
    (title and text in one ``contents`` field; positions, doc vectors and raw docs stored).

    The index is written to a temporary folder and renamed into place when complete,
    so a crash never leaves a half-built index at ``out_dir``.
    """
    from memret.retrieval.java import start_jvm

    out = Path(out_dir)
    if (out / _DONE).is_file():
        return out
    start_jvm()
    from jnius import autoclass

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".bm25-build-") as tmp:
        coll = Path(tmp) / "collection"
        coll.mkdir()
        with open(coll / "docs.jsonl", "w") as f:
            for docid, doc in corpus.items():
                f.write(json.dumps({"id": docid, "contents": doc_text(doc)}) + "\n")
        idx = Path(tmp) / "index"
        args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
                "-input", str(coll), "-index", str(idx), "-threads", str(threads),
                "-storePositions", "-storeDocvectors", "-storeRaw", "-quiet"]
        autoclass("io.anserini.index.IndexCollection").main(args)
        (idx / _DONE).write_text(json.dumps({"documents": len(corpus), "layout": "beir-flat"}))
        if out.exists():  # a stale, unfinished folder from an older crash
            shutil.rmtree(out)
        os.replace(idx, out)
    return out


class BM25Retriever:
    """BM25 over a Lucene index through Pyserini's ``LuceneSearcher``.

    Args:
        index_dir: an existing Lucene index; or build one with :meth:`index`.
        k1, b: BM25 parameters (Pyserini's BEIR defaults 0.9 / 0.4).
        threads: search and indexing threads.
        cache_dir: where :meth:`index` keeps indexes, keyed by corpus checksum.
    """

    def __init__(self, index_dir: str | os.PathLike | None = None, k1: float = 0.9, b: float = 0.4,
                 threads: int = 2, cache_dir: str | os.PathLike = "indices") -> None:
        self.k1, self.b, self.threads = k1, b, threads
        self.cache_dir = Path(cache_dir)
        self._searcher = None
        self.index_dir: Path | None = None
        if index_dir is not None:
            self._open(Path(index_dir))

    def _open(self, path: Path) -> None:
        from memret.retrieval.java import lucene_searcher_cls

        if not path.is_dir():
            raise FileNotFoundError(f"no Lucene index at {path}")
        searcher = lucene_searcher_cls()(str(path))
        searcher.set_bm25(self.k1, self.b)
        self._searcher, self.index_dir = searcher, path

    def index(self, corpus: Corpus) -> None:
        """Build (or reuse, if this corpus was indexed before) the Lucene index and open it."""
        path = self.cache_dir / f"bm25-{corpus_checksum(corpus)}"
        self._open(build_lucene_index(corpus, path, self.threads))

    @property
    def searcher(self):
        """Pyserini's ``LuceneSearcher`` in use."""
        if self._searcher is None:
            raise RuntimeError("no index: call index(corpus) or pass index_dir")
        return self._searcher

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        qids = [str(i) for i in range(len(queries))]
        res = self.searcher.batch_search(list(queries), qids, k=k, threads=self.threads)
        return [[Hit(h.docid, float(h.score)) for h in res[q]] for q in qids]
