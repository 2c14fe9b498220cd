"""The vector side of a Collection: a :class:`~memret.DenseIndex` kept as a derived cache of SQLite.

The index is keyed by SQLite rowids and labelled with the ``seq`` it reflects. It is saved to
``<collection>/vectors/`` (DenseIndex's atomic snapshot) plus ``vectors.json`` naming the saved ``seq``,
written only after the snapshot is complete. A crash between the two leaves a label that lags the
snapshot, which is harmless because catching up (see :mod:`memret.collection.db`) is an idempotent
replay; a label is never ahead of its snapshot. A missing, truncated or foreign snapshot is rebuilt
from the vectors in SQLite, and the reason is kept in :attr:`VectorCache.damage`.

Saving and loading take an advisory file lock (``vectors.lock``), so processes sharing a collection
never read a half-swapped snapshot or delete each other's files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from memret.collection.db import read_txn
from memret.index import DenseIndex
from memret.persist import CorruptSnapshotError, atomic_write

log = logging.getLogger(__name__)
_BATCH = 4096


@contextmanager
def file_lock(path: Path, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
    """An advisory ``flock`` on ``path``; yields False when non-blocking and someone else holds it."""
    fd = open(path, "a+")
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        fd.close()


class VectorCache:
    """A DenseIndex over a collection's vectors, caught up from SQLite on demand. Thread-safe.

    Args:
        root: the collection folder.
        dim: vector dimension.
        factory, metric: passed to :class:`~memret.DenseIndex`.
        timeout: SQLite lock timeout for catch-up reads.
    """

    def __init__(self, root: Path, dim: int, factory: str, metric: str, timeout: float) -> None:
        self.root, self.dim, self.factory, self.metric, self.timeout = root, dim, factory, metric, timeout
        self.folder, self.label, self.lockfile = root / "vectors", root / "vectors.json", root / "vectors.lock"
        self.index: DenseIndex | None = None
        self.seq = -1  # the seq the in-memory index reflects; -1 = not loaded
        self.saved_seq = -1
        self.damage: list[str] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ load / save
    def _fresh(self) -> DenseIndex:
        return DenseIndex(self.dim, factory=self.factory, metric=self.metric)

    def _load(self, prune_seq: int) -> None:
        """Load the saved snapshot, or start empty (seq 0) when there is none or it is unusable."""
        self.index, self.seq = self._fresh(), 0
        if not self.label.exists() and not self.folder.exists():
            return
        with file_lock(self.lockfile, exclusive=False):
            try:
                label = json.loads(self.label.read_text())
                seq = int(label["seq"])
                index = DenseIndex.load(self.folder)
            except FileNotFoundError as e:
                self._damaged(f"vector index file missing ({e.filename or e})")
                return
            except (CorruptSnapshotError, ValueError, KeyError, TypeError, OSError) as e:
                self._damaged(f"vector index unreadable ({e})")
                return
        if index.dim != self.dim or index.metric != self.metric or index.factory != self.factory:
            self._damaged(f"vector index is {index!r}, the collection needs dim={self.dim}, "
                          f"factory={self.factory!r}, metric={self.metric!r}")
            return
        if seq < prune_seq:
            log.info("vector index at seq %d predates pruned deletions (seq %d): rebuilding", seq, prune_seq)
            return
        self.index, self.seq, self.saved_seq = index, seq, seq

    def _damaged(self, what: str) -> None:
        msg = f"{self.root}: {what}; rebuilt from the documents in SQLite (nothing lost)"
        log.warning(msg)
        self.damage.append(msg)

    def save(self, con: sqlite3.Connection) -> bool:
        """Catch up and save the index with its seq label; False if another process is saving right now."""
        with self._lock:
            self._catch_up(con)
            if self.seq == self.saved_seq or self.index is None:
                return True
            with file_lock(self.lockfile, exclusive=True, blocking=False) as got:
                if not got:
                    return False
                if self.label.exists():  # never overwrite a newer snapshot with an older one
                    try:
                        if int(json.loads(self.label.read_text())["seq"]) >= self.seq:
                            return True
                    except (ValueError, KeyError, TypeError, OSError):
                        pass
                self.index.save(self.folder)
                atomic_write(self.label, lambda f: f.write(json.dumps({"seq": self.seq}).encode()))
                self.saved_seq = self.seq
        return True

    # ------------------------------------------------------------------ catch-up
    def sync(self, con: sqlite3.Connection, seq: int | None = None) -> DenseIndex | None:
        """The index, caught up with the database (cheap when nothing changed).

        ``seq`` is the caller's view of the database (read inside its read transaction). Returns None
        when the index is already past it: another thread of this process committed and applied a write
        after the caller's snapshot began, and the caller should start a newer snapshot (the index never
        goes back: rolling it back would mean reloading it).
        """
        if seq is not None and seq == self.seq and self.index is not None:
            return self.index
        with self._lock:
            if seq is not None and self.index is not None and self.seq > seq:
                return None
            self._catch_up(con)
            return self.index

    def apply(self, con: sqlite3.Connection, seq: int, rids: np.ndarray, vectors: np.ndarray | None,
              removed: np.ndarray | None = None) -> None:
        """Apply this process's own committed write at ``seq`` directly when the index is at seq-1.

        Otherwise (another writer committed in between) fall back to a catch-up from the database.
        """
        with self._lock:
            if self.index is None or self.seq != seq - 1:
                self._catch_up(con)
                return
            if removed is not None and removed.size:
                self.index.remove(removed, missing="skip")
            if vectors is not None and rids.size:
                self.index.upsert(rids, vectors)
            self.seq = seq

    def _catch_up(self, con: sqlite3.Connection) -> None:
        with read_txn(con, self.timeout):
            db_seq, prune_seq = con.execute("SELECT seq, prune_seq FROM state").fetchone()
            if self.index is None or self.seq < prune_seq or self.seq > db_seq:
                self._load(prune_seq)
                if self.seq > db_seq:
                    self._damaged(f"saved vector index is at seq {self.seq}, ahead of the database ({db_seq})")
                    self.index, self.seq = self._fresh(), 0
            if self.seq == db_seq:
                return
            gone = np.fromiter((r for (r,) in con.execute("SELECT rid FROM deleted WHERE seq > ?", (self.seq,))),
                               dtype=np.int64)
            if gone.size:
                self.index.remove(gone, missing="skip")
            cur = con.execute("SELECT rid, vector FROM docs WHERE seq > ? ORDER BY rid", (self.seq,))
            while rows := cur.fetchmany(_BATCH):
                rids = np.fromiter((r for r, _ in rows), dtype=np.int64, count=len(rows))
                vecs = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), self.dim)
                self.index.upsert(rids, vecs)
            self.seq = db_seq
