"""The map between callers' ids (ints or strings) and FAISS's internal int64 ids.

Internal ids are sequential and never reused between compactions, so an id
removed and added again gets a fresh internal id and a tombstone can never hide
a live vector. (HNSW/NSG ``compact()`` renumbers them from 0, with no tombstone
left; callers' ids never change.)

Fast path: while a caller adds int ids 0, 1, 2, ... in order (the common case:
row numbers), caller id == internal id, and the map keeps no dict at all:
membership is a range check minus a set of removed ids, and search results need
no translation. The first add that breaks the pattern (an out-of-order id, a
string id, an upsert of an existing id) builds the explicit dict once.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal

import numpy as np

IdKind = Literal["int", "str"]
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def normalize_ids(ids: Iterable[Any]) -> tuple[IdKind | None, np.ndarray | list]:
    """Turn ids into an int64 array (int ids) or a list of str, checking they are all of one kind.

    Raises:
        TypeError: not a sequence, or mixed / unsupported id types.
        ValueError: not 1-D, or an int id outside int64 (it would wrap around).
    """
    if isinstance(ids, (str, bytes)) or np.ndim(ids) == 0:
        raise TypeError("ids must be a sequence (list or 1-D array) of ints or strings")
    try:
        arr = np.asarray(ids)
    except OverflowError:  # ints beyond 64 bits in some numpy versions
        arr = np.asarray(list(ids), dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return None, []
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.uint64 and int(arr.max()) > _I64_MAX:
            raise ValueError(f"int ids must fit in int64 (< 2**63), got {int(arr.max())}")
        return "int", arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "U" and (isinstance(ids, np.ndarray) or all(isinstance(k, str) for k in ids)):
        return "str", arr.tolist()
    items = list(ids)
    if all(isinstance(k, str) for k in items):
        return "str", items
    if all(isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) for k in items):
        bad = [int(k) for k in items if not _I64_MIN <= int(k) <= _I64_MAX]
        if bad:
            raise ValueError(f"int ids must fit in int64 (-2**63 <= id < 2**63), got {bad[0]}")
        return "int", np.asarray(items, dtype=np.int64)
    kinds = sorted({type(k).__name__ for k in items})
    raise TypeError(f"ids must be all ints or all strings, got {kinds}")


def check_unique(keys: np.ndarray | list) -> None:
    """Raise ``KeyError`` if an id repeats within one call."""
    n = len(keys)
    distinct = np.unique(keys).size if isinstance(keys, np.ndarray) else len(set(keys))
    if distinct != n:
        raise KeyError(f"ids repeat within this call ({n - distinct} repeat(s))")


class IdMap:
    """Caller ids <-> internal ids; see the module docstring."""

    def __init__(self) -> None:
        self.kind: IdKind | None = None
        self.next_iid = 0
        self._identity = True
        self._removed: set[int] = set()  # identity mode: removed internal ids
        self._fwd: dict[Any, int] = {}  # explicit mode: key -> internal id
        self._rev = np.empty(0, dtype=np.int64)  # explicit mode: internal id -> key
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # explicit int mode: sorted keys, their iids

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return self.next_iid - len(self._removed) if self._identity else len(self._fwd)

    def __contains__(self, key: Any) -> bool:
        if self.kind is None:
            return False
        try:
            key = self.norm_key(key)
        except TypeError:
            return False
        if self._identity:
            return 0 <= key < self.next_iid and key not in self._removed
        return key in self._fwd

    def norm_key(self, key: Any) -> Any:
        if self.kind == "int":
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
                raise TypeError(f"this index has int ids; got {type(key).__name__} {key!r}")
            return int(key)
        if not isinstance(key, str):
            raise TypeError(f"this index has string ids; got {type(key).__name__} {key!r}")
        return key

    def check_kind(self, kind: IdKind | None) -> None:
        if kind is not None and self.kind is not None and kind != self.kind:
            raise TypeError(f"this index has {self.kind} ids; got {kind} ids")

    def lookup(self, keys: np.ndarray | list, missing: Literal["raise", "skip"] = "raise") -> np.ndarray:
        """Internal ids of ``keys``; unknown keys raise ``KeyError`` or are skipped."""
        if len(keys) == 0:
            return np.empty(0, dtype=np.int64)
        if self.kind is None:  # nothing was ever added: every key is unknown, whatever its type
            unknown, found = keys.tolist() if isinstance(keys, np.ndarray) else list(keys), np.empty(0, np.int64)
        elif self._identity:
            k = np.asarray(keys, dtype=np.int64)
            ok = (k >= 0) & (k < self.next_iid)
            if self._removed:
                ok &= ~np.isin(k, np.fromiter(self._removed, np.int64, len(self._removed)))
            unknown = k[~ok].tolist()
            found = k[ok]
        elif (self.kind == "int" and isinstance(keys, np.ndarray) and keys.dtype.kind in "iu"
              and (self._sorted is not None or 8 * len(keys) >= len(self._fwd))):
            sk, si = self._sorted_keys()  # many keys (a filter's allowed ids): one vectorised lookup
            k = np.asarray(keys, dtype=np.int64)
            pos = np.minimum(np.searchsorted(sk, k), max(sk.size - 1, 0))
            ok = sk[pos] == k if sk.size else np.zeros(k.size, dtype=bool)
            unknown, found = k[~ok].tolist(), si[pos[ok]]
        else:
            keys = keys.tolist() if isinstance(keys, np.ndarray) else keys
            got = [self._fwd.get(k) for k in keys]
            unknown = [k for k, g in zip(keys, got) if g is None]
            found = np.asarray([g for g in got if g is not None], dtype=np.int64)
        if unknown and missing == "raise":
            raise KeyError(f"{len(unknown)} unknown id(s), e.g. {unknown[:5]!r}")
        return found

    def _sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted int keys, their internal ids) of the explicit map; kept until the next add or remove."""
        if self._sorted is None:
            n = len(self._fwd)
            k = np.fromiter(self._fwd.keys(), dtype=np.int64, count=n)
            i = np.fromiter(self._fwd.values(), dtype=np.int64, count=n)
            order = np.argsort(k, kind="stable")
            self._sorted = (k[order], i[order])
        return self._sorted

    def live(self) -> tuple[list, np.ndarray]:
        """``(keys, internal ids)`` of every live entry, in insertion order."""
        if self._identity:
            iids = np.arange(self.next_iid, dtype=np.int64)
            if self._removed:
                iids = np.setdiff1d(iids, np.fromiter(self._removed, np.int64, len(self._removed)))
            return iids.tolist(), iids
        return list(self._fwd), np.fromiter(self._fwd.values(), dtype=np.int64, count=len(self._fwd))

    def to_keys(self, I: np.ndarray) -> np.ndarray:
        """Translate a (nq, k) array of internal ids (-1 = missing) into caller ids (-1 / None pads)."""
        if self._identity:
            return I
        if I.size == 0 or I[:, -1].min() >= 0:  # no pads (they sit at row ends): one gather, no masking
            return self._rev[I] if self._rev.size else np.zeros(I.shape, self._rev.dtype)
        miss = I < 0
        keys = self._rev[np.where(miss, 0, I)] if self._rev.size else np.zeros(I.shape, self._rev.dtype)
        if self.kind == "str":
            keys[miss] = None
            return keys
        return np.where(miss, -1, keys)

    # ------------------------------------------------------------------ updates
    def plan_add(self, kind: IdKind, keys: np.ndarray | list, upsert: bool) -> tuple[np.ndarray, list]:
        """Check an add and allot internal ids; changes nothing.

        Returns:
            ``(new internal ids, keys already present)``.
        """
        self.check_kind(kind)
        n = len(keys)
        if self._identity and kind == "int" and np.array_equal(keys, np.arange(self.next_iid, self.next_iid + n)):
            return np.arange(self.next_iid, self.next_iid + n, dtype=np.int64), []
        klist = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
        check_unique(klist)
        present = [k for k in klist if k in self]
        if present and not upsert:
            raise KeyError(f"{len(present)} id(s) already in the index, e.g. {present[:5]!r}; use upsert()")
        return np.arange(self.next_iid, self.next_iid + n, dtype=np.int64), present

    def commit_add(self, kind: IdKind, keys: np.ndarray | list, iids: np.ndarray) -> None:
        self._sorted = None
        if self.kind is None:
            self.kind = kind
            self._identity = kind == "int"
            self._rev = self._rev.astype(object if kind == "str" else np.int64)
        if self._identity and not (kind == "int" and np.array_equal(keys, iids)):
            self._materialize()
        if not self._identity:
            klist = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
            # _rev covers internal ids up to the largest live one (after a load it may stop short of next_iid)
            gap = np.zeros(self.next_iid - self._rev.size, dtype=self._rev.dtype)
            self._rev = np.concatenate([self._rev, gap, np.asarray(klist, dtype=self._rev.dtype)])
            self._fwd.update(zip(klist, iids.tolist()))
        self.next_iid += len(iids)

    def remove(self, keys: list | np.ndarray) -> np.ndarray:
        """Forget ``keys`` (all present); returns their internal ids."""
        iids = self.lookup(keys)
        self._sorted = None
        if self._identity:
            self._removed.update(iids.tolist())
        else:
            for k in keys.tolist() if isinstance(keys, np.ndarray) else keys:
                del self._fwd[k]
        return iids

    def _materialize(self) -> None:
        live_keys, live_iids = self.live()
        self._rev = np.arange(self.next_iid, dtype=np.int64)
        self._fwd = dict(zip(live_keys, live_iids.tolist()))
        self._removed = set()
        self._identity = False

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_live(cls, kind: IdKind | None, keys: list, iids: np.ndarray, next_iid: int) -> "IdMap":
        """Rebuild from the live ``(keys, internal ids)`` (distinct, ``0 <= iid < next_iid``)."""
        m = cls()
        m.kind, m.next_iid = kind, int(next_iid)
        # The identity form keeps a set of the removed ids below next_iid: only when that set is small.
        if (kind == "int" and np.array_equal(np.asarray(keys, dtype=np.int64), iids)
                and m.next_iid - len(keys) <= 4 * len(keys) + 4096):
            m._removed = set(range(m.next_iid)) - set(iids.tolist())
            return m
        m._identity = False
        m._rev = np.zeros(int(iids.max()) + 1 if iids.size else 0, dtype=object if kind == "str" else np.int64)
        if len(keys):
            m._rev[iids] = np.asarray(keys, dtype=m._rev.dtype)
        m._fwd = dict(zip(keys, iids.tolist()))
        return m
