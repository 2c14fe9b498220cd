"""FAISS helpers behind DenseIndex: building from a factory string, wrapper unwrapping, search
parameters with an ``IDSelector``, GPU moves, and the check that a loaded file is what its manifest says."""

from __future__ import annotations

from typing import Any

import faiss

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
# FAISS index types whose remove_ids is not implemented: removal goes through tombstones.
NO_REMOVE = (faiss.IndexHNSW, faiss.IndexNSG, faiss.IndexNNDescent)
_ID_WRAPPERS = (faiss.IndexIDMap, faiss.IndexIDMap2)


def _layers(index: faiss.Index):
    """Each index from the outside in, through IDMap / pre-transform / refine wrappers (downcast)."""
    index = faiss.downcast_index(index)
    while True:
        yield index
        if isinstance(index, (*_ID_WRAPPERS, faiss.IndexPreTransform)):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        else:
            return


def core(index: faiss.Index) -> faiss.Index:
    """The index doing the search, under IDMap / pre-transform / refine wrappers."""
    *_, last = _layers(index)
    return last


def build(dim: int, factory: str, metric: str) -> faiss.Index:
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
    index = faiss.index_factory(dim, factory, METRICS[metric])
    if isinstance(core(index), faiss.IndexIVF) or is_positional(index):
        return index
    return faiss.index_factory(dim, f"IDMap2,{factory}", METRICS[metric])


def is_positional(index: faiss.Index) -> bool:
    """True for a bare (no IDMap) index whose ids are insertion positions: the non-removable types."""
    return not isinstance(index, _ID_WRAPPERS) and isinstance(core(index), NO_REMOVE)


def ensure_reconstructable(index: faiss.Index) -> None:
    """IVF reconstructs by id only through a direct map; a hash map survives removals."""
    c = core(index)
    if isinstance(c, faiss.IndexIVF) and c.direct_map.type == faiss.DirectMap.NoMap:
        c.set_direct_map_type(faiss.DirectMap.Hashtable)


def search_params_with(index: faiss.Index, sel: Any) -> Any:
    """SearchParameters of the type the core index expects, carrying its current knobs and ``sel``."""
    c = core(index)
    if isinstance(c, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe, params.max_codes = c.nprobe, c.max_codes
    elif isinstance(c, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = c.hnsw.efSearch
    else:
        params = faiss.SearchParameters()
    params.sel = sel
    params._memret_sel = sel  # keep the selector (and what it wraps) alive during the search
    return params


def copy_search_params(src: faiss.Index, dst: faiss.Index) -> None:
    a, b = core(src), core(dst)
    if isinstance(a, faiss.IndexIVF) and isinstance(b, faiss.IndexIVF):
        b.nprobe = a.nprobe
    if isinstance(a, faiss.IndexHNSW) and isinstance(b, faiss.IndexHNSW):
        b.hnsw.efSearch = a.hnsw.efSearch


def set_search_params(index: faiss.Index, params: dict[str, Any], factory: str, gpu: bool = False) -> None:
    """Set FAISS search-time parameters by name (``nprobe``, ``efSearch``, ...) on ``index``."""
    ps = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"search parameter {name!r} must be a number, got {value!r}")
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError as e:
            raise ValueError(f"index {factory!r} has no search parameter {name!r}: {e}") from e


# ---------------------------------------------------------------------- loaded files
def _chain(index: faiss.Index) -> list[type]:
    """Classes from the outside in, ignoring IDMap wrappers (whether memret adds one changed over time)."""
    return [type(layer) for layer in _layers(index) if not isinstance(layer, _ID_WRAPPERS)]


def _same_kind(a: type, b: type) -> bool:
    # e.g. IndexFlat vs IndexFlatIP: the factory and a GPU->CPU copy may pick either of a pair
    return issubclass(a, b) or issubclass(b, a)


def mismatch(index: faiss.Index, dim: int, factory: str, metric: str) -> str | None:
    """Why a loaded FAISS ``index`` is not a ``factory`` index of ``dim`` / ``metric`` (None if it is)."""
    if index.d != dim:
        return f"the index file has dimension {index.d}, the manifest says dim={dim}"
    if index.metric_type != METRICS[metric]:
        return f"the index file's metric type {index.metric_type} is not {metric!r}"
    try:
        expected = build(dim, factory, metric)
    except RuntimeError:
        return f"FAISS cannot build the manifest's factory string {factory!r}"
    got, want = _chain(index), _chain(expected)
    if len(got) != len(want) or not all(_same_kind(a, b) for a, b in zip(got, want)):
        show = lambda kinds: "/".join(k.__name__ for k in kinds)  # noqa: E731
        return f"the index file is {show(got)}, factory {factory!r} builds {show(want)}"
    return None


# ---------------------------------------------------------------------- GPU
def num_gpus() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def cpu_to_gpus(index: faiss.Index, shard: bool) -> faiss.Index:
    """A copy of a CPU ``index`` on all visible GPUs (sharded across them when ``shard``)."""
    co = faiss.GpuMultipleClonerOptions()
    co.shard = shard
    return faiss.index_cpu_to_all_gpus(index, co=co)


def gpu_to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index)
