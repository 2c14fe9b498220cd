"""DenseIndex: a FAISS index with external ids, validation, filtering, locking and safe persistence.

The FAISS index is built as ``index_factory(dim, "IDMap2," + factory, metric)``
(IVF indexes, which keep ids natively, without the ``IDMap2``).
memret gives every vector a sequential internal int64 id and maps the
caller's ids (ints or strings) to it, so callers' ids survive ``remove`` and
``compact`` and FAISS never sees a duplicate. Index types that FAISS cannot
remove from (HNSW, NSG) get tombstones: removed ids are filtered out at
search time with an ``IDSelector`` and physically dropped by :meth:`compact`,
which renumbers their internal ids from 0 (no tombstone is left that could
hide a reused one). Other types never reuse an internal id.

Every call that raises has changed nothing. The FAISS build / GPU / search
parameter helpers live in :mod:`memret.index.faiss_ops`, the snapshot format
and its checks in :mod:`memret.index.storage`.

Thread safety: any number of concurrent :meth:`search` calls, or one writer
(:meth:`add`, :meth:`upsert`, :meth:`remove`, :meth:`train`, :meth:`compact`),
guarded by a writer-preferring :class:`~memret.index.locking.RWLock`.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Literal

import faiss
import numpy as np

from memret.index import faiss_ops
from memret.index.checks import MAX_PADDED_K, as_matrix, check_dim, check_k
from memret.index.idmap import IdMap, check_unique, normalize_ids
from memret.index.locking import RWLock
from memret.index.storage import FORMAT_VERSION, load_index, save_index

__all__ = ["DenseIndex", "Metric", "as_matrix", "FORMAT_VERSION"]

Metric = Literal["ip", "l2", "cosine"]


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    faiss.normalize_L2(x)
    return x


class DenseIndex:
    """A searchable vector memory backed by FAISS.

    Args:
        dim: vector dimension.
        factory: any FAISS factory string, e.g. ``"Flat"``, ``"HNSW32"``, ``"IVF1024,PQ16"``.
        metric: ``"ip"`` (inner product), ``"l2"`` (squared L2 distance, smaller is
            closer) or ``"cosine"`` (vectors and queries are L2-normalised, then ip).
        search_params: FAISS search-time parameters, e.g. ``{"nprobe": 16}`` or
            ``{"efSearch": 128}``; see :meth:`set_search_params`.

    Ids are all ints or all strings, fixed by the first :meth:`add`. Missing
    result slots are padded with id ``-1`` (int ids) or ``None`` (string ids)
    and score ``-inf`` (ip/cosine) or ``+inf`` (l2).
    """

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        metric: Metric = "ip",
        search_params: dict[str, float] | None = None,
    ) -> None:
        dim = check_dim(dim)
        if not isinstance(metric, str) or metric not in faiss_ops.METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {sorted(faiss_ops.METRICS)}")
        if not isinstance(factory, str):
            raise TypeError(f"factory must be a FAISS factory string, got {type(factory).__name__}")
        if factory.replace(" ", "").upper().startswith("IDMAP"):
            raise ValueError("pass the factory without an IDMap prefix: DenseIndex manages ids itself")
        try:
            index = faiss_ops.build(dim, factory, metric)
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot build factory string {factory!r}: {e}") from e
        if search_params:
            faiss_ops.set_search_params(index, dict(search_params), factory)
        self._init_state(dim, factory, metric, index)

    def _init_state(self, dim: int, factory: str, metric: str, index: faiss.Index) -> None:
        self.dim, self.factory, self.metric = dim, factory, metric
        self._index = index  # index_factory/read_index already return the concrete type (and own it)
        self._tombstone_mode = isinstance(faiss_ops.core(self._index), faiss_ops.NO_REMOVE)
        self._positional = faiss_ops.is_positional(self._index)
        self._lock = RWLock()
        self._ids = IdMap()
        self._tombstones: set[int] = set()
        self._gpu: bool | None = None  # None on CPU, else the ``shard`` flag it was moved with


    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: Any) -> bool:
        return key in self._ids

    def __repr__(self) -> str:
        return (f"DenseIndex(dim={self.dim}, factory={self.factory!r}, metric={self.metric!r}, "
                f"n={len(self)}, trained={self.is_trained})")

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def supports_remove(self) -> bool:
        """False where FAISS cannot remove (HNSW, NSG): removal then uses tombstones + :meth:`compact`."""
        return not self._tombstone_mode

    @property
    def n_tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index; its labels are memret's internal ids."""
        return self._index

    def ids(self) -> list:
        """The live ids, in insertion order."""
        with self._lock.read():
            return self._ids.live()[0]

    # ------------------------------------------------------------------ writes
    def train(self, vectors: Any) -> None:
        """Train the index (IVF centroids, PQ codebooks). A no-op for indexes needing none."""
        x = self._prep(as_matrix(vectors, self.dim, "training vectors"))
        with self._lock.write():
            if not self._index.is_trained:
                self._index.train(x)

    def add(self, ids: Iterable[Any], vectors: Any) -> None:
        """Add vectors under new ids.

        Args:
            ids: n ints or n strings, unique and not already in the index.
            vectors: (n, dim) real array without NaN/inf.

        Raises:
            RuntimeError: the index needs :meth:`train` first.
            KeyError: an id is already present (use :meth:`upsert`) or repeats in ``ids``.
            ValueError / TypeError: wrong shape, dtype, non-finite values or id types.
        """
        self._add(ids, vectors, upsert=False)

    def upsert(self, ids: Iterable[Any], vectors: Any) -> None:
        """Add vectors, replacing those of ids already present."""
        self._add(ids, vectors, upsert=True)

    def _add(self, ids: Iterable[Any], vectors: Any, upsert: bool) -> None:
        x = self._prep(as_matrix(vectors, self.dim))
        kind, keys = normalize_ids(ids)
        if len(keys) != x.shape[0]:
            raise ValueError(f"got {len(keys)} ids for {x.shape[0]} vectors")
        if not len(keys):
            return
        if kind == "int" and (keys == -1).any():
            raise ValueError("-1 cannot be an id: it is the padding id of search results (missing neighbours)")
        with self._lock.write():
            if not self._index.is_trained:
                raise RuntimeError(
                    f"index {self.factory!r} is not trained: call train(vectors) with representative data before add")
            iids, present = self._ids.plan_add(kind, keys, upsert)
            if self._positional:
                if iids.size and iids[0] != self._index.ntotal:
                    raise RuntimeError(f"internal ids out of step with positions ({iids[0]} != {self._index.ntotal})")
                self._index.add(x)
            else:
                self._index.add_with_ids(x, iids)
            # FAISS accepted the new vectors: only now drop the replaced ones and commit the id map.
            if present:
                self._remove_locked(present)
            self._ids.commit_add(kind, keys, iids)

    def remove(self, ids: Iterable[Any], missing: Literal["raise", "skip"] = "raise") -> int:
        """Remove ids; returns how many were removed.

        Raises:
            KeyError: an id is unknown (unless ``missing="skip"``) or repeats within ``ids``.
            ValueError: ``missing`` is neither ``"raise"`` nor ``"skip"``.
        """
        if missing not in ("raise", "skip"):
            raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
        kind, keys = normalize_ids(ids)
        check_unique(keys)
        with self._lock.write():
            self._ids.check_kind(kind)
            self._ids.lookup(keys, missing)  # validate before changing anything
            return self._remove_locked([k for k in keys if k in self._ids])

    def _remove_locked(self, keys: list) -> int:
        if not keys:
            return 0
        iids = self._ids.lookup(keys)
        if not self._tombstone_mode:
            try:
                self._index.remove_ids(faiss.IDSelectorBatch(iids))
            except RuntimeError:
                # An index type FAISS cannot remove from that we did not know of:
                # fall back to tombstones for good.
                self._tombstone_mode = True
        if self._tombstone_mode:
            self._tombstones.update(iids.tolist())
        self._ids.remove(keys)
        return int(iids.size)

    def compact(self) -> int:
        """Drop tombstoned vectors for good by rebuilding the index from the live ones.

        Vectors are reconstructed from the index (exact for Flat/HNSW-Flat
        storage, approximate for PQ/SQ codes) and re-added; callers' ids are
        unchanged. Returns the number of vectors dropped.
        """
        with self._lock.write():
            if not self._tombstones:
                return 0
            old = self._cpu_index()  # a GPU index is rebuilt on the CPU and moved back below
            faiss_ops.ensure_reconstructable(old)
            keys, live = self._ids.live()
            vecs = (np.stack([old.reconstruct(int(i)) for i in live]) if live.size
                    else np.empty((0, self.dim), np.float32))
            fresh = faiss_ops.build(self.dim, self.factory, self.metric)
            faiss_ops.copy_search_params(old, fresh)
            if not fresh.is_trained:
                fresh.train(vecs)
            ids, positional = self._ids, faiss_ops.is_positional(fresh)
            if positional:  # positions restart at 0: renumber the internal ids
                fresh.add(vecs)
                ids = IdMap.from_live(self._ids.kind, keys, np.arange(len(keys), dtype=np.int64), len(keys))
            elif live.size:
                fresh.add_with_ids(vecs, live)
            if self._gpu is not None:
                fresh = faiss_ops.cpu_to_gpus(fresh, self._gpu)
            dropped = len(self._tombstones)
            # Nothing above raised: commit. (An older IDMap2-wrapped HNSW snapshot comes back bare.)
            self._index, self._ids, self._tombstones, self._positional = fresh, ids, set(), positional
            return dropped

    # ------------------------------------------------------------------ reads
    def _prep(self, x: np.ndarray) -> np.ndarray:
        return _l2_normalize(x) if self.metric == "cosine" else x

    def search(self, queries: Any, k: int, allowed: Iterable[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k-nearest-neighbour search.

        Args:
            queries: (nq, dim) real array.
            k: neighbours per query (>= 1).
            allowed: optional ids to restrict the search to (filtered search via
                a FAISS ``IDSelector``; unknown ids in it are ignored).

        Returns:
            ``(scores, ids)``, both (nq, k): float32 scores (similarity for ip/cosine,
            squared distance for l2) best first, and the caller's ids (int64 array
            padded with -1, or object array padded with None). Zero queries give (0, k).

        Raises:
            TypeError / ValueError: ``k`` is not an int >= 1, or exceeds both the number of
                stored vectors and ``MAX_PADDED_K`` (4096); bad queries or ``allowed`` ids.
        """
        if type(k) is not int or k < 1:
            k = check_k(k, n_stored=MAX_PADDED_K)  # type and sign here; the upper bound under the lock
        xq = self._prep(as_matrix(queries, self.dim, "queries"))
        allowed_keys = None if allowed is None else normalize_ids(allowed)
        if xq.shape[0] == 0:
            return (np.empty((0, k), np.float32),
                    np.empty((0, k), dtype=object if self._ids.kind == "str" else np.int64))
        self._lock.acquire_read()
        try:
            if k > MAX_PADDED_K:  # allowed up to the number of stored vectors
                check_k(k, self._index.ntotal)
            params = None
            if allowed_keys is not None or self._tombstones:
                params = self._filter_params(allowed_keys)
            D, I = self._index.search(xq, int(k), params=params)
            keys = self._ids.to_keys(I)
        finally:
            self._lock.release_read()
        if I[:, -1].min() < 0:  # FAISS pads (at the row ends) with +-FLT_MAX; make pads unmistakable
            D[I < 0] = np.inf if self.metric == "l2" else -np.inf
        return D, keys

    def _filter_params(self, allowed: tuple | None) -> Any:
        if allowed is None:
            dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
            inner = faiss.IDSelectorBatch(dead)
            sel = faiss.IDSelectorNot(inner)
            sel.referenced_objects = [inner]  # IDSelectorNot does not own what it wraps
        else:
            kind, keys = allowed
            self._ids.check_kind(kind)
            iids = self._ids.lookup(keys, missing="skip")
            if self._tombstones:
                iids = iids[~np.isin(iids, np.fromiter(self._tombstones, dtype=np.int64))]
            sel = faiss.IDSelectorBatch(iids)
        return faiss_ops.search_params_with(self._index, sel)

    def get_vectors(self, ids: Iterable[Any]) -> np.ndarray:
        """Reconstruct stored vectors (normalised for cosine; approximate for compressed codes)."""
        kind, keys = normalize_ids(ids)
        with self._lock.write():  # may build the IVF direct map once
            self._ids.check_kind(kind)
            faiss_ops.ensure_reconstructable(self._index)
            iids = self._ids.lookup(keys)
            out = np.empty((iids.size, self.dim), dtype=np.float32)
            for row, iid in enumerate(iids.tolist()):
                out[row] = self._index.reconstruct(iid)
            return out

    def set_search_params(self, **params: float) -> None:
        """Set FAISS search-time parameters by name (``nprobe``, ``efSearch``, ...).

        All names and values are checked (on a fresh index of the same factory) before any is set.
        """
        faiss_ops.set_search_params(faiss_ops.build(self.dim, self.factory, self.metric), params, self.factory)
        with self._lock.write():
            faiss_ops.set_search_params(self._index, params, self.factory, gpu=self._gpu is not None)

    # ------------------------------------------------------------------ GPU
    def to_gpu(self, shard: bool = True) -> "DenseIndex":
        """Move the index to all visible GPUs (sharded across them when ``shard``); in place.

        Raises:
            RuntimeError: FAISS was built without GPU support or sees no GPU.
        """
        if faiss_ops.num_gpus() == 0:
            raise RuntimeError("FAISS sees no GPU (install faiss-gpu on a machine with CUDA GPUs); "
                               "the CPU index keeps working")
        with self._lock.write():
            if self._gpu is None:
                self._index = faiss_ops.cpu_to_gpus(self._index, bool(shard))
                self._gpu = bool(shard)
        return self

    @property
    def on_gpu(self) -> bool:
        """True once :meth:`to_gpu` moved the index (it stays there through :meth:`compact`)."""
        return self._gpu is not None

    def _cpu_index(self) -> faiss.Index:
        return faiss_ops.gpu_to_cpu(self._index) if self._gpu is not None else self._index

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Atomically save to the folder ``path`` (FAISS file + id map + JSON manifest, no pickle).

        Saves to one folder serialise (a lock file, across threads and processes); a crash or full
        disk mid-save leaves the previous save at ``path`` loadable (full disk: ``SnapshotWriteError``,
        an ``OSError``). The folder keeps the previous generation until the next save, so a concurrent
        :meth:`load` gets the old or the new snapshot.

        Raises:
            ValueError: an empty ``path``.
            SnapshotWriteError: writing failed; the previous save is intact.
        """
        with self._lock.read():
            save_index(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "DenseIndex":
        """Load a folder written by :meth:`save`, checking the manifest's fields, sizes and SHA-256 digests.

        Raises:
            FileNotFoundError: nothing saved at ``path``.
            CorruptSnapshotError: a truncated, corrupt, inconsistent or foreign snapshot (the message names
                the field or file).
        """
        return load_index(cls, path, verify)
