"""DenseIndex: a FAISS index with external ids, validation, filtering, locking and safe persistence.

The FAISS index is built as ``index_factory(dim, "IDMap2," + factory, metric)``
(IVF indexes, which keep ids natively, without the ``IDMap2``).
memret gives every vector a sequential internal int64 id (never reused) and
maps the caller's ids (ints or strings) to it, so ids survive ``remove`` and
``compact`` and FAISS never sees a duplicate. Index types that FAISS cannot
remove from (HNSW, NSG) get tombstones: removed ids are filtered out at
search time with an ``IDSelector`` and physically dropped by :meth:`compact`.

Thread safety: any number of concurrent :meth:`search` calls, or one writer
(:meth:`add`, :meth:`upsert`, :meth:`remove`, :meth:`train`, :meth:`compact`),
guarded by a writer-preferring :class:`~memret.index.locking.RWLock`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Literal

import faiss
import numpy as np

from memret.index.idmap import IdMap, normalize_ids
from memret.index.locking import RWLock
from memret.persist import CorruptSnapshotError, read_snapshot, write_snapshot

Metric = Literal["ip", "l2", "cosine"]
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
FORMAT_VERSION = 1
_KIND = "memret.DenseIndex"
# FAISS index types whose remove_ids is not implemented: removal goes through tombstones.
_NO_REMOVE = (faiss.IndexHNSW, faiss.IndexNSG, faiss.IndexNNDescent)


def as_matrix(x: Any, dim: int, name: str = "vectors") -> np.ndarray:
    """Check ``x`` is a finite real (n, dim) matrix and return it as C-contiguous float32."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == dim and x.flags.c_contiguous:
        arr = x  # the hot path (searches): nothing to convert
    else:
        arr = _convert(x, dim, name)
    # NaN and inf survive a sum, so one pass finds them; a finite sum can overflow to inf in
    # float32, so the exact check confirms before raising. (Not a BLAS call: numpy's OpenBLAS
    # threads spin after a call and would steal the cores from the FAISS search that follows.)
    if not math.isfinite(arr.sum()):
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise ValueError(f"{name} contain NaN or inf in {bad.size} row(s), first at row {bad[0]}")
    return arr


def _convert(x: Any, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (use x.reshape(1, -1) for a single vector)" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n, {dim}), got shape {arr.shape}{hint}")
    if arr.shape[1] != dim:
        raise ValueError(f"{name} have dimension {arr.shape[1]}, the index has dim={dim}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    faiss.normalize_L2(x)
    return x


def _core(index: faiss.Index) -> faiss.Index:
    """The index doing the search, under IDMap / pre-transform / refine wrappers."""
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        else:
            return index


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
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if metric not in _METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {sorted(_METRICS)}")
        if factory.replace(" ", "").upper().startswith("IDMAP"):
            raise ValueError("pass the factory without an IDMap prefix: DenseIndex manages ids itself")
        try:
            index = _build(int(dim), factory, metric)
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot build factory string {factory!r}: {e}") from e
        self._init_state(int(dim), factory, metric, index)
        if search_params:
            self.set_search_params(**search_params)

    def _init_state(self, dim: int, factory: str, metric: str, index: faiss.Index) -> None:
        self.dim, self.factory, self.metric = dim, factory, metric
        self._index = index  # index_factory/read_index already return the concrete type (and own it)
        self._tombstone_mode = isinstance(_core(self._index), _NO_REMOVE)
        self._positional = _is_positional(self._index)
        self._lock = RWLock()
        self._ids = IdMap()
        self._tombstones: set[int] = set()
        self._gpu = False

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
        with self._lock.write():
            if not self._index.is_trained:
                raise RuntimeError(
                    f"index {self.factory!r} is not trained: call train(vectors) with representative data before add")
            iids, present = self._ids.plan_add(kind, keys, upsert)
            if present:
                self._remove_locked(present)
            if self._positional:
                if iids.size and iids[0] != self._index.ntotal:
                    raise RuntimeError(f"internal ids out of step with positions ({iids[0]} != {self._index.ntotal})")
                self._index.add(x)
            else:
                self._index.add_with_ids(x, iids)
            # Commit the id map only once FAISS has accepted the vectors.
            self._ids.commit_add(kind, keys, iids)

    def remove(self, ids: Iterable[Any], missing: Literal["raise", "skip"] = "raise") -> int:
        """Remove ids; returns how many were removed. Unknown ids raise unless ``missing="skip"``."""
        kind, keys = normalize_ids(ids)
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
            _ensure_reconstructable(self._index)
            keys, live = self._ids.live()
            vecs = (np.stack([self._index.reconstruct(int(i)) for i in live]) if live.size
                    else np.empty((0, self.dim), np.float32))
            fresh = _build(self.dim, self.factory, self.metric)
            _copy_search_params(self._index, fresh)
            if not fresh.is_trained:
                fresh.train(vecs)
            if _is_positional(fresh):  # positions restart at 0: renumber the internal ids
                fresh.add(vecs)
                self._ids = IdMap.from_live(self._ids.kind, keys, np.arange(len(keys), dtype=np.int64), len(keys))
            elif live.size:
                fresh.add_with_ids(vecs, live)
            dropped = len(self._tombstones)
            self._index, self._tombstones = fresh, set()
            self._positional = _is_positional(fresh)  # an older IDMap2-wrapped HNSW snapshot comes back bare
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
            padded with -1, or object array padded with None).
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        xq = self._prep(as_matrix(queries, self.dim, "queries"))
        allowed_keys = None if allowed is None else normalize_ids(allowed)
        self._lock.acquire_read()
        try:
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
        return _search_params_with(self._index, sel)

    def get_vectors(self, ids: Iterable[Any]) -> np.ndarray:
        """Reconstruct stored vectors (normalised for cosine; approximate for compressed codes)."""
        kind, keys = normalize_ids(ids)
        with self._lock.write():  # may build the IVF direct map once
            self._ids.check_kind(kind)
            _ensure_reconstructable(self._index)
            iids = self._ids.lookup(keys)
            out = np.empty((iids.size, self.dim), dtype=np.float32)
            for row, iid in enumerate(iids.tolist()):
                out[row] = self._index.reconstruct(iid)
            return out

    def set_search_params(self, **params: float) -> None:
        """Set FAISS search-time parameters by name (``nprobe``, ``efSearch``, ...)."""
        ps = faiss.ParameterSpace()
        with self._lock.write():
            for name, value in params.items():
                try:
                    ps.set_index_parameter(self._index, name, value)
                except RuntimeError as e:
                    raise ValueError(f"index {self.factory!r} has no search parameter {name!r}: {e}") from e

    # ------------------------------------------------------------------ GPU
    def to_gpu(self, shard: bool = True) -> "DenseIndex":
        """Move the index to all visible GPUs (sharded across them when ``shard``); in place.

        Raises:
            RuntimeError: FAISS was built without GPU support or sees no GPU.
        """
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if ngpu == 0:
            raise RuntimeError("FAISS sees no GPU (install faiss-gpu on a machine with CUDA GPUs); "
                               "the CPU index keeps working")
        co = faiss.GpuMultipleClonerOptions()
        co.shard = shard
        with self._lock.write():
            self._index = faiss.index_cpu_to_all_gpus(self._index, co=co)
            self._gpu = True
        return self

    def _cpu_index(self) -> faiss.Index:
        return faiss.index_gpu_to_cpu(self._index) if self._gpu else self._index

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Atomically save to the folder ``path`` (FAISS file + id map + JSON manifest, no pickle).

        A crash or full disk mid-save leaves the previous save at ``path`` loadable.
        """
        with self._lock.read():
            cpu = self._cpu_index()
            tomb = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
            live_keys, live_iids = self._ids.live()
            str_ids = self._ids.kind == "str"
            meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "factory": self.factory,
                    "metric": self.metric, "id_type": self._ids.kind, "next_iid": self._ids.next_iid,
                    "count": len(live_keys)}

            def write_keys(f: str) -> None:
                if str_ids:
                    with open(f, "w") as fh:
                        json.dump(live_keys, fh)
                else:
                    np.save(f, np.asarray(live_keys, dtype=np.int64), allow_pickle=False)

            write_snapshot(path, _KIND, meta, {
                "index": (".faiss", lambda f: faiss.write_index(cpu, f)),
                "keys": (".json" if str_ids else ".npy", write_keys),
                "iids": (".npy", lambda f: np.save(f, live_iids, allow_pickle=False)),
                "tombstones": (".npy", lambda f: np.save(f, tomb, allow_pickle=False)),
            })

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "DenseIndex":
        """Load a folder written by :meth:`save`, checking sizes and SHA-256 digests.

        Raises:
            FileNotFoundError: nothing saved at ``path``.
            CorruptSnapshotError: a truncated, corrupt or foreign file.
        """
        meta, files = read_snapshot(path, _KIND, verify=verify)
        if meta.get("format_version") != FORMAT_VERSION:
            raise CorruptSnapshotError(
                f"{path}: format version {meta.get('format_version')}, this memret reads {FORMAT_VERSION}")
        try:
            index = faiss.read_index(str(files["index"]))
            iids = np.load(files["iids"], allow_pickle=False)
            tomb = np.load(files["tombstones"], allow_pickle=False)
            if meta["id_type"] == "str":
                keys = json.loads(files["keys"].read_text())
            else:
                keys = np.load(files["keys"], allow_pickle=False).tolist()
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            raise CorruptSnapshotError(f"{path}: cannot read saved index: {e}") from e
        if len(keys) != len(iids) or index.d != meta["dim"]:
            raise CorruptSnapshotError(f"{path}: id map and index disagree")
        self = cls.__new__(cls)
        self._init_state(meta["dim"], meta["factory"], meta["metric"], index)
        self._ids = IdMap.from_live(meta["id_type"], keys, iids, meta["next_iid"])
        self._tombstones = set(tomb.tolist())
        self._tombstone_mode = self._tombstone_mode or bool(self._tombstones)
        return self


def _build(dim: int, factory: str, metric: str) -> faiss.Index:
    """The FAISS index for ``factory``.

    - IVF indexes store arbitrary int64 ids natively (an ``IDMap`` over them would corrupt the id map on
      ``remove_ids``, which IVF does not renumber).
    - Index types that cannot remove (HNSW, NSG) are used bare: their ids are insertion positions, which
      never shift because nothing is ever removed from them (removal is by tombstone), so memret's
      sequential internal ids are those positions. No ``IDMap`` wrapper also means no OpenMP region per
      search for translating labels, which costs a single HNSW query up to 5x on a busy 2-core machine.
    - Everything else is wrapped in ``IDMap2``, which keeps ids through ``remove_ids`` and gives
      ``reconstruct`` by id.
    """
    index = faiss.index_factory(dim, factory, _METRICS[metric])
    if isinstance(_core(index), faiss.IndexIVF) or _is_positional(index):
        return index
    return faiss.index_factory(dim, f"IDMap2,{factory}", _METRICS[metric])


def _is_positional(index: faiss.Index) -> bool:
    """True for a bare (no IDMap) index whose ids are insertion positions: the non-removable types."""
    return (not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2))
            and isinstance(_core(index), _NO_REMOVE))


def _ensure_reconstructable(index: faiss.Index) -> None:
    """IVF reconstructs by id only through a direct map; a hash map survives removals."""
    core = _core(index)
    if isinstance(core, faiss.IndexIVF) and core.direct_map.type == faiss.DirectMap.NoMap:
        core.set_direct_map_type(faiss.DirectMap.Hashtable)


def _search_params_with(index: faiss.Index, sel: Any) -> Any:
    """SearchParameters of the type the core index expects, carrying its current knobs and ``sel``."""
    core = _core(index)
    if isinstance(core, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe, params.max_codes = core.nprobe, core.max_codes
    elif isinstance(core, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = core.hnsw.efSearch
    else:
        params = faiss.SearchParameters()
    params.sel = sel
    params._memret_sel = sel  # keep the selector (and what it wraps) alive during the search
    return params


def _copy_search_params(src: faiss.Index, dst: faiss.Index) -> None:
    a, b = _core(src), _core(dst)
    if isinstance(a, faiss.IndexIVF) and isinstance(b, faiss.IndexIVF):
        b.nprobe = a.nprobe
    if isinstance(a, faiss.IndexHNSW) and isinstance(b, faiss.IndexHNSW):
        b.hnsw.efSearch = a.hnsw.efSearch
