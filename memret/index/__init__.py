"""The dense index: FAISS with external ids, filtering, locking and crash-safe persistence."""

from memret.index.dense import DenseIndex, as_matrix
from memret.index.exact import exact_search
from memret.index.locking import RWLock

__all__ = ["DenseIndex", "RWLock", "as_matrix", "exact_search"]
