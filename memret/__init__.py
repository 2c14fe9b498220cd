"""memret: a memory you can search — dense indexes and exemplar memories for continual learning and retrieval.

The core (this namespace) needs only numpy and faiss. Attached parts import
their heavy dependencies lazily: ``memret.retrieval`` / ``memret.beir`` (transformers,
pyserini), ``memret.encoders`` (timm), ``memret.incremental`` (avalanche-lib).
"""

try:
    import faiss  # noqa: F401
except ImportError as e:  # faiss-cpu and faiss-gpu are extras: they install the same module
    raise ImportError("memret needs FAISS: pip install 'memret[cpu]' (or 'memret[gpu]' on a machine with "
                      "CUDA 12 GPUs)") from e

from memret.index import DenseIndex, exact_search  # noqa: E402
from memret.memory import ExemplarBank  # noqa: E402
from memret.persist import CorruptSnapshotError, SnapshotWriteError  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name: str):
    # memret.incremental / memret.encoders / ... load on first use, so `import memret` stays light.
    import importlib

    if name == "Collection":
        from memret.collection import Collection

        return Collection
    if name in ("incremental", "encoders", "retrieval", "beir", "aggregator", "metrics", "memory", "index",
                "train", "pretrain", "heads", "collection"):
        return importlib.import_module(f"memret.{name}")
    raise AttributeError(f"module 'memret' has no attribute {name!r}")
__all__ = ["CorruptSnapshotError", "DenseIndex", "SnapshotWriteError", "ExemplarBank", "exact_search", "__version__"]
