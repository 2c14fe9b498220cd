"""Collection: a persistent, multi-process document store with dense, BM25 and hybrid search.

Layout of a collection folder::

    collection.sqlite (+ -wal, -shm)   documents, metadata, vectors, FTS5 index, change counter: the truth
    vectors/, vectors.json              a saved DenseIndex and the change counter it reflects (a cache)

Every add / upsert / delete is one SQLite transaction covering text, metadata, vector and the BM25
index, so a crash leaves the collection before or after it, never between. The DenseIndex is derived
from SQLite and caught up on open and before each search (see :mod:`memret.collection.db`), so other
processes' writes are visible to the next search. Filters run in SQLite first and restrict both the
dense and the BM25 ranking to the matching documents.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from memret.collection import db
from memret.collection.embed import DefaultEncoder, encoder_identity
from memret.collection.filters import compile_where
from memret.collection.search import FilterCache, RowCache, run_search
from memret.collection.validate import check_ids, check_metadata, check_texts, check_vectors
from memret.collection.vectors import VectorCache

log = logging.getLogger(__name__)
Mode = Literal["dense", "bm25", "hybrid"]
_MODES = ("dense", "bm25", "hybrid")
CACHE_KIB = 32768  # SQLite page cache per connection (PRAGMA cache_size), KiB


@dataclass(frozen=True)
class Hit:
    """One search result: the document's id, its score (higher is better), text and metadata."""

    id: str
    score: float
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """A stored document, as returned by :meth:`Collection.get`."""

    id: str
    text: str
    metadata: dict


class Collection:
    """A persistent document collection; create or open one with :meth:`open`.

    Thread-safe; any number of processes may open the same folder. Close it (or use ``with``) to save
    the vector index for a fast next open; without ``close`` nothing is lost, the next open catches up.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use Collection.open(path, ...) to create or open a collection")

    @classmethod
    def open(cls, path: str | os.PathLike, encoder: Any = None, *, factory: str = "Flat",
             metric: Literal["cosine", "ip", "l2"] = "cosine", dim: int | None = None,
             timeout: float = 60.0, durability: Literal["full", "normal"] = "full") -> "Collection":
        """Create the collection at folder ``path``, or open it if it exists.

        Args:
            path: a folder (created if missing).
            encoder: object with ``encode_passages(texts)`` and ``encode_queries(texts)`` returning (n, d)
                float32 arrays, ``embed_dim`` and an ``identity`` string (e.g. :class:`OnnxEncoder`,
                :class:`memret.retrieval.TextEncoder`). ``None``: the one the collection was created with
                when that is the packaged all-MiniLM-L6-v2, which is also the default for a new collection
                where installed; else texts need explicit ``vectors`` and queries vectors. ``False``: no
                encoder (vectors only).
            factory, metric, dim: the vector index, fixed at creation (``dim`` defaults to the encoder's).
            timeout: seconds a write waits for other writers before :class:`StoreBusyError`.
            durability: ``"full"`` survives power loss; ``"normal"`` survives a killed process only.

        Raises:
            ValueError: ``encoder`` embeds into another space than the collection was built with.
            StoreCorruptError: the database file is damaged.
        """
        if metric not in ("cosine", "ip", "l2"):
            raise ValueError(f"unknown metric {metric!r}; known: ['cosine', 'ip', 'l2']")
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        self = object.__new__(cls)
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        self.timeout, self._durability = float(timeout), durability
        self._local = threading.local()
        self._cons: list = []
        self._cons_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        new = not (self.path / db.DB_FILE).exists()
        if encoder is None and new:
            encoder = _try_default()
        proposed = {"factory": factory, "metric": metric}
        if encoder:
            proposed["encoder"] = encoder_identity(encoder)
            proposed["dim"] = str(int(dim or encoder.embed_dim))
        elif dim:
            proposed["dim"] = str(int(dim))
        self.meta = db.init_schema(self._con(), self.timeout, proposed)
        stored_enc = self.meta.get("encoder")
        if encoder is None and stored_enc:
            default = _try_default()
            encoder = default if default is not None and default.identity == stored_enc else None
            if encoder is None:
                log.info("collection %s was built with encoder %r: pass it to search by text", self.path, stored_enc)
        if encoder and stored_enc and encoder_identity(encoder) != stored_enc:
            raise ValueError(f"{self.path} was built with encoder {stored_enc!r}, got {encoder_identity(encoder)!r}: "
                             "vectors from different models are not comparable")
        if encoder and not stored_enc:
            if int(self.meta.get("dim", encoder.embed_dim)) != int(encoder.embed_dim):
                raise ValueError(f"{self.path} holds {self.meta['dim']}-d vectors, the encoder makes "
                                 f"{encoder.embed_dim}-d ones")
            with db.write_txn(self._con(), self.timeout):
                db.set_meta(self._con(), "encoder", encoder_identity(encoder))
            self.meta["encoder"] = encoder_identity(encoder)
        self.encoder = encoder or None
        self.factory, self.metric = self.meta["factory"], self.meta["metric"]
        self._vectors: VectorCache | None = None
        self._vec_lock = threading.Lock()
        self._filter_cache, self._row_cache = FilterCache(), RowCache()
        if "dim" in self.meta:
            self._vectors_for(int(self.meta["dim"])).sync(self._con())
        return self

    # ------------------------------------------------------------------ plumbing
    def _con(self):
        """This thread's SQLite connection (connections are per thread and per process)."""
        if self._closed:
            raise RuntimeError(f"collection {self.path} is closed")
        if os.getpid() != self._pid:  # forked: never reuse the parent's connections
            self._pid, self._local, self._cons = os.getpid(), threading.local(), []
            self._vectors, self._filter_cache, self._row_cache = None, FilterCache(), RowCache()
        con = getattr(self._local, "con", None)
        if con is None:
            con = db.connect(self.path / db.DB_FILE, self.timeout, self._durability)
            # SQLite's page cache, per connection, allocated as used: 2 MiB by default, under the size of a
            # few thousand documents with their vectors; 32 MiB cut a 10-document fetch by ~25% on SciFact.
            con.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._local.con = con
            with self._cons_lock:
                self._cons.append(con)
        return con

    def _vectors_for(self, dim: int) -> VectorCache:
        with self._vec_lock:
            if self._vectors is None:
                self._vectors = VectorCache(self.path, dim, self.factory, self.metric, self.timeout)
            return self._vectors

    @property
    def dim(self) -> int | None:
        """The vector dimension (None until the first vectors arrive; another process may set it)."""
        if "dim" not in self.meta:
            row = self._con().execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
            if row is not None:
                self.meta["dim"] = row[0]
        return int(self.meta["dim"]) if "dim" in self.meta else None

    @property
    def damage(self) -> list[str]:
        """What was found damaged (and repaired) since open, e.g. a truncated vector index file."""
        return list(self._vectors.damage) if self._vectors else []

    def __len__(self) -> int:
        return self._con().execute("SELECT count(*) FROM docs").fetchone()[0]

    def __contains__(self, doc_id: str) -> bool:
        return self._con().execute("SELECT 1 FROM docs WHERE id = ?", (doc_id,)).fetchone() is not None

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, n={len(self)}, encoder={self.meta.get('encoder')!r})"

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Save the vector index (so the next open is fast) and close every connection."""
        if self._closed:
            return
        if self._vectors is not None and os.getpid() == self._pid:
            try:
                self._vectors.save(self._con())
            except OSError as e:  # a full disk: the previous snapshot stays, the next open catches up
                log.warning("could not save the vector index of %s: %s", self.path, e)
        self._closed = True
        with self._cons_lock:
            for con in self._cons:
                con.close()
            self._cons = []

    def checkpoint(self) -> None:
        """Save the vector index now (``close`` does it too)."""
        if self._vectors is not None:
            self._vectors.save(self._con())

    # ------------------------------------------------------------------ writes
    def add(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[Mapping] | None = None,
            vectors: Any = None) -> None:
        """Add new documents in one atomic transaction.

        Args:
            ids: unique non-empty strings, none already stored.
            texts: one string per id (searched by BM25; encoded when ``vectors`` is None).
            metadata: optional JSON-serialisable dicts, filterable with ``where``.
            vectors: optional (n, dim) array to store instead of encoding ``texts``.

        Raises:
            KeyError: an id is already stored (use :meth:`upsert`); nothing is added.
            ValueError / TypeError: malformed input; nothing is added.
        """
        self._write(ids, texts, metadata, vectors, upsert=False)

    def upsert(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[Mapping] | None = None,
               vectors: Any = None) -> None:
        """Add documents, replacing the text, metadata and vector of ids already stored (atomically)."""
        self._write(ids, texts, metadata, vectors, upsert=True)

    def _write(self, ids: Any, texts: Any, metadata: Any, vectors: Any, upsert: bool) -> None:
        ids = check_ids(ids)
        texts = check_texts(texts, len(ids))
        metas = check_metadata(metadata, len(ids))
        if not ids:
            return
        vecs = self._vectors_of(texts, vectors)
        con = self._con()
        with db.write_txn(con, self.timeout) as seq:
            row = con.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
            if row is None:  # the first vectors fix the dimension (checked again here: another process may
                db.set_meta(con, "dim", str(vecs.shape[1]))  # have added first)
            elif int(row[0]) != vecs.shape[1]:
                raise ValueError(f"vectors have dimension {vecs.shape[1]}, the collection holds {row[0]}-d")
            present = self._present(con, ids)
            if present and not upsert:
                raise KeyError(f"{len(present)} id(s) already stored, e.g. {sorted(present)[:3]}: use upsert")
            blobs = [v.tobytes() for v in vecs]
            con.executemany("UPDATE docs SET text = ?, metadata = ?, vector = ?, seq = ? WHERE id = ?",
                            [(t, m, b, seq, i) for i, t, m, b in zip(ids, texts, metas, blobs) if i in present])
            con.executemany("INSERT INTO docs(id, text, metadata, vector, seq) VALUES (?, ?, ?, ?, ?)",
                            [(i, t, m, b, seq) for i, t, m, b in zip(ids, texts, metas, blobs) if i not in present])
            rids = self._rids(con, ids)
        self.meta["dim"] = str(vecs.shape[1])
        self._vectors_for(vecs.shape[1]).apply(con, seq, np.asarray(rids, np.int64), vecs)

    def _vectors_of(self, texts: list[str], vectors: Any) -> np.ndarray:
        if vectors is None:
            if self.encoder is None:
                raise ValueError("this collection has no encoder: pass vectors=..., or open it with encoder=...")
            vecs = self.encoder.encode_passages(texts)
        else:
            vecs = vectors
        return check_vectors(vecs, len(texts), self.dim, self.metric)

    @staticmethod
    def _present(con, ids: list[str]) -> set[str]:
        return {r for (r,) in db.execute_in(con, "SELECT id FROM docs", "id", ids)}

    @staticmethod
    def _rids(con, ids: list[str]) -> list[int]:
        found = dict(db.execute_in(con, "SELECT id, rid FROM docs", "id", ids))
        return [found[i] for i in ids]

    def delete(self, ids: Sequence[str], missing: Literal["raise", "skip"] = "skip") -> int:
        """Delete documents atomically; returns how many were deleted.

        Raises:
            KeyError: with ``missing="raise"``, some id is not stored (nothing is deleted).
        """
        ids = check_ids(ids)
        if missing not in ("raise", "skip"):
            raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
        if not ids:
            return 0
        con = self._con()
        with db.write_txn(con, self.timeout) as seq:
            found = self._present(con, ids)
            if missing == "raise" and len(found) != len(ids):
                raise KeyError(f"{len(ids) - len(found)} id(s) not stored, e.g. {sorted(set(ids) - found)[:3]}")
            rids = self._rids(con, sorted(found))
            db.execute_in(con, "DELETE FROM docs", "rid", rids)
        if self._vectors is not None:
            self._vectors.apply(con, seq, np.empty(0, np.int64), None, removed=np.asarray(rids, np.int64))
        return len(rids)

    # ------------------------------------------------------------------ reads
    def get(self, ids: Sequence[str]) -> list[Document | None]:
        """The stored documents for ``ids``, in order (``None`` where an id is not stored)."""
        ids = check_ids(ids)
        con = self._con()
        found = {i: Document(i, t, json.loads(m))
                 for i, t, m in db.execute_in(con, "SELECT id, text, metadata FROM docs", "id", ids)}
        return [found.get(i) for i in ids]

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored (n, dim) float32 vectors of ``ids`` (as given or encoded; not normalised)."""
        ids = check_ids(ids)
        rows = dict(db.execute_in(self._con(), "SELECT id, vector FROM docs", "id", ids))
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not stored, e.g. {missing[:3]}")
        return np.stack([np.frombuffer(rows[i], np.float32) for i in ids]) if ids else np.empty((0, self.dim or 0))

    def ids(self, where: Mapping[str, Any] | None = None, limit: int | None = None) -> list[str]:
        """Ids of the stored documents matching ``where``, in insertion order."""
        sql, params = compile_where(where)
        q = f"SELECT id FROM docs WHERE {sql} ORDER BY rid" + (" LIMIT ?" if limit is not None else "")
        return [r for (r,) in self._con().execute(q, params + ([int(limit)] if limit is not None else []))]

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        """Number of documents matching ``where``."""
        sql, params = compile_where(where)
        return self._con().execute(f"SELECT count(*) FROM docs WHERE {sql}", params).fetchone()[0]

    def stats(self) -> dict[str, Any]:
        """Counts, settings and file sizes."""
        con = self._con()
        seq = con.execute("SELECT seq FROM state").fetchone()[0]
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {"path": str(self.path), "documents": len(self), "dim": self.dim, "encoder": self.meta.get("encoder"),
                "factory": self.factory, "metric": self.metric, "seq": seq, "bytes_on_disk": size,
                "damage": self.damage}

    def check(self) -> list[str]:
        """A full integrity check: SQLite's, the FTS index's and the vectors'. Returns problems ([] = sound)."""
        from memret.collection.maintenance import check  # noqa: PLC0415

        return check(self)

    def search(self, query: str | Any, k: int = 10, where: Mapping[str, Any] | None = None,
               mode: Mode = "hybrid", depth: int | None = None) -> list[Hit]:
        """Search the collection; filters restrict the candidates before ranking.

        Args:
            query: a text, or a (dim,) query vector (``mode="dense"`` only).
            k: hits to return; fewer only when fewer documents match ``where`` (and, for BM25, the query).
            where: a metadata filter (see :mod:`memret.collection.filters`).
            mode: ``"dense"`` (vector similarity), ``"bm25"`` (SQLite FTS5, Porter stemming) or
                ``"hybrid"`` (reciprocal rank fusion of both, k=60, over the top ``depth`` of each).
            depth: candidates per ranker for hybrid fusion (default ``max(100, k)``).

        Returns:
            Up to k hits, best first; scores are cosine/inner-product similarity, negated squared L2
            distance, BM25 score or RRF score, by mode and metric.
        """
        return run_search(self, query, k, where, mode, depth)


def _try_default() -> DefaultEncoder | None:
    try:
        return DefaultEncoder()
    except ImportError as e:
        log.info("no default encoder: %s", e)
        return None
