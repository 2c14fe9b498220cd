"""Search for a Collection: filter in SQLite first, then rank (dense, BM25 or both fused by RRF)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from memret.collection import bm25, db
from memret.collection.filters import compile_where
from memret.collection.validate import utf8

if TYPE_CHECKING:
    from memret.collection.store import Collection, Hit

# A filter matching at most EXACT_MAX documents is ranked exactly over their vectors read from SQLite:
# always for approximate indexes (an IVF/HNSW search restricted to few ids may miss some), and for the
# exact "Flat" index only when that is cheaper than its full scan with an id selector (reading one
# vector from SQLite costs about as much as scanning EXACT_RATIO vectors in FAISS).
EXACT_MAX = 2048
EXACT_RATIO = 64
RRF_K = 60
# Read snapshots tried before a dense search falls back to exact search over SQLite (see VectorCache.sync).
SNAPSHOT_TRIES = 3


class FilterCache:
    """The rowids matching recent filters, valid for one database ``seq`` (any write anywhere empties it).

    An app tends to repeat a few filters; their SQL scan (a JSON test per document) then runs once per
    change of the collection instead of once per query. ``size`` 0 turns it off.
    """

    def __init__(self, size: int = 16) -> None:
        self.size, self.seq = size, -1
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, seq: int, key: tuple) -> np.ndarray | None:
        with self._lock:
            if seq != self.seq:
                self._d.clear()
                self.seq = seq
                return None
            hit = self._d.get(key) if self.size else None
            if hit is not None:
                self._d.move_to_end(key)
            return hit

    def put(self, seq: int, key: tuple, rids: np.ndarray) -> None:
        with self._lock:
            if seq == self.seq and self.size:
                self._d[key] = rids
                while len(self._d) > self.size:
                    self._d.popitem(last=False)


class RowCache:
    """Recently returned documents (rowid -> id, text, metadata JSON), valid for one database ``seq``.

    Any write anywhere bumps ``seq`` and empties it, so a hit is always the row as of the reader's
    snapshot. Documents that keep coming back then skip SQLite (a 10-row fetch costs ~0.1 ms of B-tree
    seeks and page reads on SciFact-sized rows, a third of a 5,000-vector FAISS scan). ``size`` 0 turns it off.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size, self.seq = size, -1
        self._d: dict[int, tuple[str, str, str]] = {}
        self._lock = threading.Lock()

    def get(self, seq: int, rids: list[int]) -> dict[int, tuple[str, str, str]]:
        with self._lock:
            if seq != self.seq:
                self._d.clear()
                self.seq = seq
                return {}
            d = self._d
            return {r: d[r] for r in rids if r in d} if self.size else {}

    def put(self, seq: int, rows: dict[int, tuple[str, str, str]]) -> None:
        with self._lock:
            if seq != self.seq or not self.size:
                return
            if len(self._d) + len(rows) > self.size:
                self._d.clear()  # cheaper than LRU bookkeeping on every hit; refills with what is asked for
            self._d.update(list(rows.items())[: self.size])


def run_search(col: "Collection", query: Any, k: int, where: Mapping[str, Any] | None, mode: str,
               depth: int | None) -> list["Hit"]:
    """See :meth:`Collection.search`."""
    from memret.collection.store import Hit  # noqa: PLC0415 (store imports this module: no cycle at import)

    if mode not in ("dense", "bm25", "hybrid"):
        raise ValueError(f"unknown mode {mode!r}; known: ['bm25', 'dense', 'hybrid']")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = int(k)
    depth = max(100, k) if depth is None else int(depth)
    if depth < k:
        raise ValueError(f"depth ({depth}) must be >= k ({k})")
    text = query if isinstance(query, str) else None
    if text is None and mode != "dense":
        raise ValueError(f"mode={mode!r} needs a text query; pass mode='dense' to search by vector")
    if text is not None:
        if len(text) > 100_000:
            raise ValueError("query longer than 100,000 characters")
        utf8(text, "query")
    sql, params = compile_where(where)
    qvec = _query_vector(col, query) if mode != "bm25" else None
    con = col._con()
    for attempt in range(SNAPSHOT_TRIES):
        with db.read_txn(con, col.timeout):
            seq = con.execute("SELECT seq FROM state").fetchone()[0]
            if mode == "bm25":
                ranked = bm25.search(con, text, k, sql, params)
            else:
                index = col._vectors_for(col.dim).sync(con, seq) if col.dim is not None else None
                if index is None and col.dim is not None and attempt + 1 < SNAPSHOT_TRIES:
                    continue  # another thread applied a write after this snapshot began: take a newer one
                dense = _dense(col, con, index, seq, qvec, depth if mode == "hybrid" else k, sql, params)
                if mode == "dense":
                    ranked = dense
                else:
                    ranked = _rrf([dense, bm25.search(con, text, depth, sql, params)], k)
            rids = [r for r, _ in ranked]
            docs = col._row_cache.get(seq, rids)
            if len(docs) < len(rids):
                fetched = _fetch(con, [r for r in rids if r not in docs])
                col._row_cache.put(seq, fetched)
                docs.update(fetched)
        return [Hit(docs[r][0], float(s), docs[r][1], json.loads(docs[r][2])) for r, s in ranked if r in docs]
    raise AssertionError("unreachable: the last attempt always searches")


def _query_vector(col: "Collection", query: Any) -> np.ndarray | None:
    if isinstance(query, str):
        if col.encoder is None:
            raise ValueError(f"collection {col.path} has no encoder to embed a text query (it was built with "
                             f"{col.meta.get('encoder')!r}): open it with encoder=..., search by vector, "
                             "or use mode='bm25'")
        return np.asarray(col.encoder.encode_queries([query]), np.float32).reshape(1, -1)
    q = np.asarray(query)
    if q.dtype == object or not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)):
        raise TypeError(f"a query vector must be numeric, got dtype {q.dtype}")
    q = q.astype(np.float32).reshape(1, -1) if q.ndim == 1 else q.astype(np.float32)
    if q.shape != (1, col.dim):
        raise ValueError(f"a query vector must have shape ({col.dim},), got {np.shape(query)}")
    if not np.isfinite(q).all():
        raise ValueError("the query vector contains NaN or inf")
    return q


def _dense(col: "Collection", con, index, seq: int, q: np.ndarray, k: int, sql: str,
           params: list) -> list[tuple[int, float]]:
    """Dense top-k in the read snapshot at ``seq``; ``index`` is None when the vector index cannot serve that
    snapshot (no vectors yet, or another thread moved it past the snapshot): exact search over SQLite."""
    if col.dim is None:
        return []
    if index is None and sql == "1":
        return _exact(col, con, q, k, None)
    if sql == "1":
        n = len(index)
        D, I = index.search(q, min(k, max(n, 1)))
        ranked = _pairs(col, D[0], I[0])
        if len(ranked) >= min(k, n):
            return ranked
        return _exact(col, con, q, k, None)  # an approximate index came back short
    key = (sql, tuple(params))
    allowed = col._filter_cache.get(seq, key)
    if allowed is None:
        cur = con.execute(f"SELECT rid FROM docs WHERE {sql}", params)
        allowed = np.fromiter((r for (r,) in cur), np.int64)
        col._filter_cache.put(seq, key, allowed)
    if not allowed.size:
        return []
    if index is None or (len(allowed) <= EXACT_MAX and
                         (col.factory != "Flat" or len(allowed) * EXACT_RATIO <= len(index))):
        return _exact(col, con, q, k, allowed)
    D, I = index.search(q, k, allowed=allowed)
    ranked = _pairs(col, D[0], I[0])
    if len(ranked) >= min(k, len(allowed)):
        return ranked
    return _exact(col, con, q, k, allowed)


def _pairs(col: "Collection", D: np.ndarray, I: np.ndarray) -> list[tuple[int, float]]:
    sign = -1.0 if col.metric == "l2" else 1.0
    return [(int(r), sign * float(d)) for r, d in zip(I.tolist(), D.tolist()) if r is not None and r >= 0]


def _exact(col: "Collection", con, q: np.ndarray, k: int, rids: np.ndarray | None) -> list[tuple[int, float]]:
    """Brute-force top-k over the stored vectors of the documents ``rids`` (None: all)."""
    if rids is None:
        rows = con.execute("SELECT rid, vector FROM docs").fetchall()
    else:
        rows = db.execute_in(con, "SELECT rid, vector FROM docs", "rid", rids.tolist())
    if not rows:
        return []
    rids = np.fromiter((r for r, _ in rows), np.int64, len(rows))
    X = np.frombuffer(b"".join(v for _, v in rows), np.float32).reshape(len(rows), -1)
    q = q[0]
    if col.metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        q = q / max(float(np.linalg.norm(q)), 1e-30)
    scores = -((X - q) ** 2).sum(1) if col.metric == "l2" else X @ q
    top = np.lexsort((rids, -scores))[:k]
    return [(int(rids[i]), float(scores[i])) for i in top]


def _rrf(runs: list[list[tuple[int, float]]], k: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion (Cormack et al. 2009) of rowid rankings; ties broken by rowid."""
    fused: dict[int, float] = {}
    for run in runs:
        for rank, (rid, _) in enumerate(run, start=1):
            fused[rid] = fused.get(rid, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda t: (-t[1], t[0]))[:k]


def _fetch(con, rids: list[int]) -> dict[int, tuple[str, str, str]]:
    return {r: (i, t, m) for r, i, t, m in db.execute_in(con, "SELECT rid, id, text, metadata FROM docs", "rid", rids)}
