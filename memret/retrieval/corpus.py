"""Identity of a corpus: the checksum every on-disk artefact built from one (Lucene index, embeddings) is keyed by."""

from __future__ import annotations

import hashlib
import json

from memret.retrieval.base import Corpus


def corpus_checksum(corpus: Corpus) -> str:
    """SHA-256 (16 hex digits) over docids, titles and texts in docid order.

    The order of ``corpus`` does not change it, so whatever is cached under this key must record its own
    document order (the dense embedding cache stores its docids beside the vectors).
    """
    h = hashlib.sha256()
    for docid in sorted(corpus):
        d = corpus[docid]
        h.update(json.dumps([docid, d.get("title") or "", d.get("text") or ""]).encode())
    return h.hexdigest()[:16]
