"""The retriever contract shared by sparse and dense retrieval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable

Corpus = Mapping[str, Mapping[str, str]]  # docid -> {"title": ..., "text": ...}


@dataclass(frozen=True)
class Hit:
    """One retrieved document."""

    docid: str
    score: float


@runtime_checkable
class Retriever(Protocol):
    """What BM25, dense and hybrid retrievers (and users' own models) implement.

    ``index(corpus)`` makes the corpus searchable; ``search(queries, k)`` returns,
    for each query text, up to k hits best first.
    """

    def index(self, corpus: Corpus) -> None: ...

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]: ...


def doc_text(doc: Mapping[str, str], sep: str = " ") -> str:
    """A BEIR document as one string: title and text joined, as BEIR's dense models and Pyserini's flat
    BM25 indexes do."""
    title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
    return f"{title}{sep}{text}" if title else text
