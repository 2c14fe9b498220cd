"""A persistent document collection for apps: SQLite (WAL) + DenseIndex + FTS5 BM25, filters, hybrid search.

```python
from memret.collection import Collection
col = Collection.open("my-docs")                      # the packaged all-MiniLM-L6-v2 where installed
col.add(["a", "b"], ["first text", "second text"], [{"year": 2021}, {"year": 2019}])
col.search("text", k=5, where={"year": {"$gte": 2020}}, mode="hybrid")
```

``python -m memret.collection`` is the command line (create, add, search, delete, stats, serve).
"""

from memret.collection.db import StoreBusyError, StoreCorruptError
from memret.collection.embed import OnnxEncoder
from memret.collection.filters import FilterError
from memret.collection.store import Collection, Document, Hit

__all__ = ["Collection", "Document", "FilterError", "Hit", "OnnxEncoder", "StoreBusyError", "StoreCorruptError"]
