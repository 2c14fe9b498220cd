"""memret: a memory you can search — dense indexes and exemplar memories for continual learning and retrieval.

The core (this namespace) needs only numpy and faiss. Attached parts import
their heavy dependencies lazily: ``memret.retrieval`` / ``memret.beir`` (transformers,
pyserini), ``memret.encoders`` (timm), ``memret.incremental`` (avalanche-lib).
"""

from memret.index import DenseIndex, exact_search
from memret.memory import ExemplarBank
from memret.persist import CorruptSnapshotError

__version__ = "0.1.0"


def __getattr__(name: str):
    # memret.incremental / memret.encoders / ... load on first use, so `import memret` stays light.
    import importlib

    if name in ("incremental", "encoders", "retrieval", "beir", "aggregator", "metrics", "memory", "index"):
        return importlib.import_module(f"memret.{name}")
    raise AttributeError(f"module 'memret' has no attribute {name!r}")
__all__ = ["CorruptSnapshotError", "DenseIndex", "ExemplarBank", "exact_search", "__version__"]
