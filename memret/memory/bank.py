"""ExemplarBank: a fixed-budget, class-balanced exemplar memory you can search.

The bank keeps, per class, an ordered list of exemplars (feature, label,
reference to the raw sample). Order is the selection policy's priority, so a
class shrinks to a smaller quota by truncation (iCaRL's ReduceExemplarSet).
Budgets are either ``per_class`` (fixed m per class) or ``total`` (m = total //
classes seen, shrinking as classes arrive). kNN lookups go through an exact
:class:`~memret.index.DenseIndex` (``Flat``) that is rebuilt lazily after a change.

The bank knows nothing of Avalanche or torch: it takes numpy arrays. It also
satisfies Avalanche's structural ``post_adapt(agent, exp)`` protocol through
the plugin in :mod:`memret.incremental`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from memret.index.dense import DenseIndex, Metric, as_matrix
from memret.memory.policies import Policy, _normalize, get_policy
from memret.persist import CorruptSnapshotError, read_snapshot, write_snapshot

_KIND = "memret.ExemplarBank"
FORMAT_VERSION = 1


class ExemplarBank:
    """Fixed-budget exemplar memory with herding / random / closest / reservoir selection.

    Args:
        dim: feature dimension.
        per_class: exemplars kept per class (e.g. 20, the iCaRL protocol), or
        total: total budget (e.g. 2000); the per-class quota is ``total // classes seen``.
        policy: default selection policy for :meth:`update`.
        metric: kNN metric, ``"cosine"`` by default.
        seed: seeds the bank's own generator (random and reservoir policies).
    """

    def __init__(
        self,
        dim: int,
        per_class: int | None = None,
        total: int | None = None,
        policy: Policy = "herding",
        metric: Metric = "cosine",
        seed: int = 0,
    ) -> None:
        if (per_class is None) == (total is None):
            raise ValueError("give exactly one budget: per_class=m or total=M")
        for name, v in (("per_class", per_class), ("total", total)):
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if policy != "reservoir":
            get_policy(policy, np.random.default_rng(0))  # validates the name
        self.dim, self.per_class, self.total = int(dim), per_class, total
        self.policy, self.metric = policy, metric
        self._rng = np.random.default_rng(seed)
        self.features = np.empty((0, self.dim), dtype=np.float32)
        self.labels = np.empty(0, dtype=np.int64)
        self.refs = np.empty(0, dtype=np.int64)
        self._classes: list[int] = []  # in order of arrival
        self._seen = 0  # samples offered to the reservoir so far
        self._index: DenseIndex | None = None

    # ------------------------------------------------------------------ budget
    def __len__(self) -> int:
        return int(self.labels.size)

    def __repr__(self) -> str:
        budget = f"per_class={self.per_class}" if self.per_class else f"total={self.total}"
        return f"ExemplarBank(dim={self.dim}, {budget}, policy={self.policy!r}, n={len(self)}, classes={len(self._classes)})"

    @property
    def classes(self) -> np.ndarray:
        return np.asarray(self._classes, dtype=np.int64)

    @property
    def capacity(self) -> int:
        """Current total capacity (grows with classes seen under a per-class budget)."""
        return self.total if self.total is not None else self.per_class * max(len(self._classes), 1)

    def quota(self, n_classes: int | None = None) -> int:
        """Exemplars per class for ``n_classes`` classes (default: those seen)."""
        n = len(self._classes) if n_classes is None else n_classes
        return self.per_class if self.per_class is not None else self.total // max(n, 1)

    # ------------------------------------------------------------------ update
    def update(
        self,
        features: Any,
        labels: Any,
        refs: Sequence[Any] | np.ndarray | None = None,
        policy: Policy | None = None,
    ) -> None:
        """Offer a batch of samples (e.g. a whole task's data) to the memory.

        For per-class policies, each class present in ``labels`` is reselected
        from its current exemplars plus the new samples; then every class is cut
        to the (possibly smaller) quota. ``reservoir`` keeps a uniform sample of
        the whole stream in ``capacity`` slots.

        Args:
            features: (n, dim) float features.
            labels: (n,) int class labels.
            refs: (n,) references to the raw samples (ints or strings), e.g. dataset
                indices; used for leave-one-out in :meth:`knn`. Default: -1 ("no ref").
            policy: overrides the bank's default policy for this call.
        """
        x = as_matrix(features, self.dim, "features")
        y = np.asarray(labels)
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D int array of length {x.shape[0]}, got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
        r = self._as_refs(refs, x.shape[0])
        policy = policy or self.policy
        for c in dict.fromkeys(y.tolist()):  # arrival order, no repeats
            if c not in self._classes:
                self._classes.append(c)
        if policy == "reservoir":
            self._reservoir(x, y, r)
        else:
            self._reselect(x, y, r, get_policy(policy, self._rng))
        self._index = None

    def _as_refs(self, refs: Any, n: int) -> np.ndarray:
        if refs is None:
            return np.full(n, -1, dtype=np.int64)
        arr = np.asarray(refs)
        if arr.shape != (n,):
            raise ValueError(f"refs must have shape ({n},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(object)
        if self.refs.size and (self.refs.dtype == object) != (arr.dtype == object):
            raise TypeError("refs must keep one type (ints or strings) across updates")
        if self.refs.dtype != arr.dtype and len(self) == 0:
            self.refs = self.refs.astype(arr.dtype)
        return arr

    def _reselect(self, x: np.ndarray, y: np.ndarray, r: np.ndarray, select) -> None:
        m = self.quota()
        parts_f, parts_y, parts_r = [], [], []
        for c in self._classes:
            old = self.labels == c
            new = y == c
            if new.any():
                cf = np.concatenate([self.features[old], x[new]])
                cr = np.concatenate([self.refs[old], r[new]])
                order = select(cf, m)
                cf, cr = cf[order], cr[order]
            else:  # keep the existing priority order, truncated to the quota
                cf, cr = self.features[old][:m], self.refs[old][:m]
            parts_f.append(cf)
            parts_r.append(cr)
            parts_y.append(np.full(len(cf), c, dtype=np.int64))
        self.features = np.ascontiguousarray(np.concatenate(parts_f), dtype=np.float32)
        self.labels = np.concatenate(parts_y)
        self.refs = np.concatenate(parts_r)

    def _reservoir(self, x: np.ndarray, y: np.ndarray, r: np.ndarray) -> None:
        cap = self.capacity
        feats, labs, refs = list(self.features), self.labels.tolist(), list(self.refs)
        for i in range(x.shape[0]):
            if len(labs) < cap:
                feats.append(x[i]); labs.append(int(y[i])); refs.append(r[i])  # noqa: E702
            else:
                j = int(self._rng.integers(0, self._seen + 1))
                if j < cap:
                    feats[j], labs[j], refs[j] = x[i], int(y[i]), r[i]
            self._seen += 1
        self.features = np.asarray(feats, dtype=np.float32).reshape(-1, self.dim)
        self.labels = np.asarray(labs, dtype=np.int64)
        self.refs = np.asarray(refs, dtype=r.dtype if len(refs) else np.int64)

    def replace_features(self, features: Any) -> None:
        """Swap in re-computed features for the stored exemplars (same order), e.g. after the encoder changed."""
        self.features = as_matrix(features, self.dim, "features").copy()
        if self.features.shape[0] != len(self):
            raise ValueError(f"expected {len(self)} rows, got {self.features.shape[0]}")
        self._index = None

    # ------------------------------------------------------------------ lookups
    def _get_index(self) -> DenseIndex:
        if self._index is None:
            idx = DenseIndex(self.dim, "Flat", self.metric)
            if len(self):
                idx.add(np.arange(len(self), dtype=np.int64), self.features)
            self._index = idx
        return self._index

    def _ref_multiplicity(self) -> int:
        """How often the most repeated real ref (not the -1 placeholder) occurs; usually 1."""
        real = self.refs[self.refs != -1] if self.refs.dtype != object else self.refs
        if real.size == 0:
            return 1
        _, counts = np.unique(real.astype(str) if real.dtype == object else real, return_counts=True)
        return int(counts.max())

    def knn(self, queries: Any, k: int, exclude: Sequence[Any] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest exemplars of each query.

        Args:
            queries: (nq, dim) features.
            k: neighbours per query.
            exclude: optional (nq,) refs; exemplars whose ref equals query i's
                are never returned for query i (leave-one-out during training).

        Returns:
            ``(scores, rows)`` (nq, k); rows index ``features``/``labels``/``refs``,
            padded with -1 (score -inf, or +inf for l2) when too few remain.
        """
        idx = self._get_index()
        if exclude is None:
            return idx.search(queries, k)
        ex = np.asarray(exclude, dtype=self.refs.dtype if self.refs.size else None)
        nq = np.shape(queries)[0] if np.ndim(queries) == 2 else -1
        if ex.shape != (nq,):
            raise ValueError(f"exclude must have one ref per query, shape ({nq},), got {ex.shape}")
        # Search deep enough that k survive dropping every copy of the query's own ref.
        D, I = idx.search(queries, k + self._ref_multiplicity())
        drop = (I >= 0) & (self.refs[np.where(I >= 0, I, 0)] == ex[:, None]) & (ex[:, None] != -1)
        keep_first = np.argsort(drop, axis=1, kind="stable")[:, :k]
        D, I = np.take_along_axis(D, keep_first, 1), np.take_along_axis(I, keep_first, 1)
        gone = np.take_along_axis(drop, keep_first, 1)
        if gone.any():
            D[gone] = np.inf if self.metric == "l2" else -np.inf
            I[gone] = -1
        return D, I

    def class_means(self) -> tuple[np.ndarray, np.ndarray]:
        """iCaRL class means: the normalised mean of each class's normalised exemplar features.

        Returns:
            ``(classes (C,), means (C, dim) float32)``.
        """
        cls = self.classes
        phi = _normalize(self.features)
        means = np.stack([phi[self.labels == c].mean(0) for c in cls]) if len(cls) else np.empty((0, self.dim))
        return cls, _normalize(means).astype(np.float32)

    def predict_ncm(self, queries: Any) -> np.ndarray:
        """Nearest-class-mean labels (iCaRL's classifier) for (nq, dim) queries."""
        cls, means = self.class_means()
        q = _normalize(as_matrix(queries, self.dim, "queries"))
        return cls[np.argmax(q @ means.T, axis=1)]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Atomically save (npy arrays + JSON manifest, no pickle); a crash leaves the previous save."""
        str_refs = self.refs.dtype == object

        def write_refs(f: str) -> None:
            if str_refs:
                with open(f, "w") as fh:
                    json.dump(self.refs.tolist(), fh)
            else:
                np.save(f, self.refs, allow_pickle=False)

        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "per_class": self.per_class,
                "total": self.total, "policy": self.policy, "metric": self.metric,
                "classes": self._classes, "seen": self._seen, "str_refs": bool(str_refs),
                "rng_state": self._rng.bit_generator.state}
        write_snapshot(path, _KIND, meta, {
            "features": (".npy", lambda f: np.save(f, self.features, allow_pickle=False)),
            "labels": (".npy", lambda f: np.save(f, self.labels, allow_pickle=False)),
            "refs": (".json" if str_refs else ".npy", write_refs),
        })

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "ExemplarBank":
        """Load a bank written by :meth:`save` (sizes and digests checked)."""
        meta, files = read_snapshot(path, _KIND, verify=verify)
        if meta.get("format_version") != FORMAT_VERSION:
            raise CorruptSnapshotError(f"{path}: bank format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        bank = cls(meta["dim"], per_class=meta["per_class"], total=meta["total"],
                   policy=meta["policy"], metric=meta["metric"])
        try:
            bank.features = np.load(files["features"], allow_pickle=False)
            bank.labels = np.load(files["labels"], allow_pickle=False)
            bank.refs = (np.asarray(json.loads(files["refs"].read_text()), dtype=object) if meta["str_refs"]
                         else np.load(files["refs"], allow_pickle=False))
        except (ValueError, OSError) as e:
            raise CorruptSnapshotError(f"{path}: cannot read saved bank: {e}") from e
        if not (bank.features.shape == (bank.labels.size, bank.dim) and bank.refs.shape == bank.labels.shape):
            raise CorruptSnapshotError(f"{path}: features, labels and refs disagree in length")
        bank._classes = [int(c) for c in meta["classes"]]
        bank._seen = int(meta["seen"])
        bank._rng.bit_generator.state = meta["rng_state"]
        return bank

    def rows_of(self, classes: Iterable[int]) -> np.ndarray:
        """Row indices of the exemplars of the given classes."""
        return np.flatnonzero(np.isin(self.labels, np.fromiter(classes, dtype=np.int64)))
