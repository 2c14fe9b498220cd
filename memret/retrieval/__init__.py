"""Text retrieval attached to the memory core: BM25 (Pyserini), Contriever-style dense retrieval, fusion.

Needs ``pip install 'memret[text]'``; imports of torch/transformers/pyserini happen on use.
"""

from memret.retrieval.base import Hit, Retriever, doc_text
from memret.retrieval.bm25 import BM25Retriever, build_lucene_index
from memret.retrieval.corpus import corpus_checksum
from memret.retrieval.dense import DenseRetriever, HybridRetriever
from memret.retrieval.encoder import TextEncoder
from memret.retrieval.fusion import interpolate, rrf

__all__ = ["BM25Retriever", "DenseRetriever", "Hit", "HybridRetriever", "Retriever", "TextEncoder",
           "build_lucene_index", "corpus_checksum", "doc_text", "interpolate", "rrf"]
