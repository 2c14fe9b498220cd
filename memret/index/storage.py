"""DenseIndex snapshots: what is written, and every check a loaded snapshot must pass.

A snapshot folder (see :mod:`memret.persist`) holds four files: the FAISS index,
the live caller ids (``.npy``, or JSON for string ids), their internal ids and
the tombstones, plus the manifest's fields ``dim``, ``factory``, ``metric``,
``id_type``, ``next_iid`` and ``count``. Loading checks each field's type and
range and that the files agree with it and with each other; anything else is
:class:`~memret.persist.CorruptSnapshotError` naming the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from memret.index import faiss_ops
from memret.index.checks import is_int
from memret.index.idmap import IdMap
from memret.persist import CorruptSnapshotError, load_snapshot, write_snapshot

if TYPE_CHECKING:
    from memret.index.dense import DenseIndex

FORMAT_VERSION = 1
KIND = "memret.DenseIndex"
ROLES = ("index", "keys", "iids", "tombstones")
MAX_NEXT_IID = 2**62  # internal ids stay far from int64 overflow


def save_index(ix: "DenseIndex", path: str | os.PathLike) -> None:
    """Write ``ix`` as a snapshot folder at ``path``; the caller holds ``ix``'s read lock."""
    cpu = ix._cpu_index()
    tomb = np.fromiter(ix._tombstones, dtype=np.int64, count=len(ix._tombstones))
    live_keys, live_iids = ix._ids.live()
    str_ids = ix._ids.kind == "str"
    meta = {"format_version": FORMAT_VERSION, "dim": ix.dim, "factory": ix.factory, "metric": ix.metric,
            "id_type": ix._ids.kind, "next_iid": ix._ids.next_iid, "count": len(live_keys)}

    def write_keys(f: str) -> None:
        if str_ids:
            with open(f, "w") as fh:
                json.dump(live_keys, fh)
        else:
            np.save(f, np.asarray(live_keys, dtype=np.int64), allow_pickle=False)

    write_snapshot(path, KIND, meta, {
        "index": (".faiss", lambda f: _write_faiss(cpu, f)),
        "keys": (".json" if str_ids else ".npy", write_keys),
        "iids": (".npy", lambda f: np.save(f, live_iids, allow_pickle=False)),
        "tombstones": (".npy", lambda f: np.save(f, tomb, allow_pickle=False)),
    })


def _write_faiss(index: faiss.Index, fname: str) -> None:
    # Through a Python file: FAISS's own file writer only prints a failed close (a full disk with a small
    # index), while Python's raises OSError(ENOSPC) and the save is abandoned, the previous one intact.
    with open(fname, "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))


def load_index(cls: type["DenseIndex"], path: str | os.PathLike, verify: bool = True) -> "DenseIndex":
    """Load and check a snapshot written by :func:`save_index`; see the module docstring."""
    return load_snapshot(path, KIND, lambda meta, files: _from_files(cls, path, meta, files), verify, ROLES)


def _bad(path: Any, field: str, what: str) -> CorruptSnapshotError:
    return CorruptSnapshotError(f"{path}: {field} {what}")


def _check_meta(path: Any, meta: dict[str, Any]) -> None:
    def need(cond: bool, field: str, what: str) -> None:
        if not cond:
            raise _bad(path, f"manifest field {field!r}", f"{what} (got {str(meta.get(field))[:60]!r})")

    need(meta.get("format_version") == FORMAT_VERSION, "format_version", f"must be {FORMAT_VERSION}")
    need(is_int(meta.get("dim")) and meta["dim"] > 0, "dim", "must be a positive int")
    need(isinstance(meta.get("factory"), str), "factory", "must be a string")
    need(isinstance(meta.get("metric"), str) and meta["metric"] in faiss_ops.METRICS, "metric",
         f"must be one of {sorted(faiss_ops.METRICS)}")
    need(meta.get("id_type", "missing") in ("int", "str", None), "id_type", "must be 'int', 'str' or null")
    need(is_int(meta.get("next_iid")) and 0 <= meta["next_iid"] <= MAX_NEXT_IID, "next_iid",
         f"must be an int in [0, 2**62]")
    need(is_int(meta.get("count")) and meta["count"] >= 0, "count", "must be a non-negative int")


def _int_array(path: Any, file: Path, role: str) -> np.ndarray:
    arr = np.load(file, allow_pickle=False)
    if arr.ndim != 1 or arr.dtype != np.int64:
        raise _bad(path, f"data file {role!r}", f"must be a 1-D int64 array, got {arr.dtype} {arr.shape}")
    return arr


def _read_keys(path: Any, file: Path, id_type: str | None) -> list:
    if id_type == "str":
        keys = json.loads(file.read_text())
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _bad(path, "data file 'keys'", "must be a JSON list of strings")
        return keys
    keys = _int_array(path, file, "keys")
    if (keys == -1).any():
        raise _bad(path, "data file 'keys'", "holds -1, the padding id")
    return keys.tolist()


def _from_files(cls: type["DenseIndex"], path: Any, meta: dict[str, Any], files: dict[str, Path]) -> "DenseIndex":
    _check_meta(path, meta)
    dim, factory, metric, id_type = meta["dim"], meta["factory"], meta["metric"], meta["id_type"]
    try:
        index = faiss.read_index(str(files["index"]))
        iids = _int_array(path, files["iids"], "iids")
        tomb = _int_array(path, files["tombstones"], "tombstones")
        keys = _read_keys(path, files["keys"], id_type)
    except (RuntimeError, ValueError, OSError, RecursionError, MemoryError) as e:
        if isinstance(e, CorruptSnapshotError):
            raise
        raise CorruptSnapshotError(f"{path}: cannot read saved index: {type(e).__name__}: {str(e)[:200]}") from e
    # ============ the manifest and the files agree ============
    if (why := faiss_ops.mismatch(index, dim, factory, metric)) is not None:
        raise _bad(path, "manifest field 'factory' / 'dim' / 'metric'", f"does not match the index file: {why}")
    if not len(keys) == iids.size == meta["count"]:
        raise _bad(path, "manifest field 'count'",
                   f"is {meta['count']}, the files hold {len(keys)} ids and {iids.size} internal ids")
    if id_type is None and (keys or tomb.size or index.ntotal):
        raise _bad(path, "manifest field 'id_type'", "is null but the snapshot holds vectors")
    if len(set(keys)) != len(keys):
        raise _bad(path, "data file 'keys'", "repeats an id")
    used = np.concatenate([iids, tomb])
    if np.unique(used).size != used.size:
        raise _bad(path, "data files 'iids' / 'tombstones'", "repeat an internal id")
    next_iid = meta["next_iid"]
    if used.size and not (used.min() >= 0 and used.max() < next_iid):
        raise _bad(path, "manifest field 'next_iid'", f"is {next_iid}, not above every internal id")
    if index.ntotal != used.size:
        raise _bad(path, "manifest field 'count'",
                   f"and tombstones ({meta['count']} + {tomb.size}) disagree with the {index.ntotal} vectors in the index file")
    if faiss_ops.is_positional(index):  # ids are positions: exactly 0..ntotal-1
        if next_iid != index.ntotal:
            raise _bad(path, "manifest field 'next_iid'", f"is {next_iid}, the index holds {index.ntotal} positions")
    elif isinstance(faiss.downcast_index(index), faiss.IndexIDMap2):
        labels = faiss.vector_to_array(faiss.downcast_index(index).id_map)
        if not np.array_equal(np.sort(labels), np.sort(used)):
            raise _bad(path, "data files 'iids' / 'tombstones'", "do not match the index file's labels")
    # Internal ids above every stored one belong to nothing (removed from FAISS for good): a large gap
    # need not be carried, and carrying it would make the id map allocate for it.
    top = int(used.max()) + 1 if used.size else 0
    if next_iid - top > len(keys) + tomb.size + (1 << 20) and not faiss_ops.is_positional(index):
        next_iid = top
    # ============ build ============
    self = cls.__new__(cls)
    self._init_state(dim, factory, metric, index)
    self._ids = IdMap.from_live(id_type, keys, iids, next_iid)
    self._tombstones = set(tomb.tolist())
    self._tombstone_mode = self._tombstone_mode or bool(self._tombstones)
    return self
