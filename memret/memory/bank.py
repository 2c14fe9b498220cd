"""ExemplarBank: a fixed-budget, class-balanced exemplar memory you can search.

The bank keeps, per class, an ordered list of exemplars (feature, label,
reference to the raw sample). Order is the selection policy's priority, so a
class shrinks to a smaller quota by truncation (iCaRL's ReduceExemplarSet).
Budgets are either ``per_class`` (fixed m per class) or ``total`` (m = total //
classes seen, shrinking as classes arrive). kNN lookups go through an exact
:class:`~memret.index.DenseIndex` (``Flat``) that is rebuilt lazily after a change.

Every public call validates all of its arguments before it changes anything: a
call that raises leaves the bank (arrays, classes, counters, generator) as it was.

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
from memret.memory import checks
from memret.memory.policies import Policy, _normalize, get_policy
from memret.memory.reservoir import reservoir_slots, reservoir_take
from memret.persist import CorruptSnapshotError, load_snapshot, write_snapshot

_KIND = "memret.ExemplarBank"
FORMAT_VERSION = 1


class ExemplarBank:
    """Fixed-budget exemplar memory with herding / random / closest / reservoir selection.

    Args:
        dim: feature dimension (>= 1).
        per_class: exemplars kept per class (e.g. 20, the iCaRL protocol), or
        total: total budget (e.g. 2000); the per-class quota is ``total // classes seen``.
            The per-class policies need one slot per class: an update that would bring
            the classes seen past ``total`` raises ``ValueError`` (and changes nothing).
        policy: default selection policy for :meth:`update`.
        metric: kNN metric, ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        seed: seeds the bank's own generator (random and reservoir policies); None: fresh entropy.
    """

    def __init__(
        self,
        dim: int,
        per_class: int | None = None,
        total: int | None = None,
        policy: Policy = "herding",
        metric: Metric = "cosine",
        seed: int | None = 0,
    ) -> None:
        dim = checks.check_int("dim", dim, 1)
        if (per_class is None) == (total is None):
            raise ValueError("give exactly one budget: per_class=m or total=M")
        per_class = None if per_class is None else checks.check_int("per_class", per_class, 1)
        total = None if total is None else checks.check_int("total", total, 1)
        checks.check_choice("policy", policy, checks.POLICIES)
        checks.check_choice("metric", metric, checks.METRICS)
        if seed is not None:
            seed = checks.check_int("seed", seed, 0)
        self.dim, self.per_class, self.total = dim, per_class, total
        self.policy, self.metric = policy, metric
        self._rng = np.random.default_rng(seed)
        self.features = np.empty((0, self.dim), dtype=np.float32)
        self.labels = np.empty(0, dtype=np.int64)
        self.refs = np.empty(0, dtype=np.int64)
        self._classes: list[int] = []  # in order of arrival
        self._class_seen: dict[int, int] = {}  # samples of each class offered so far (its reservoir's stream)
        self._seen = 0  # samples offered so far (the stream of a total-budget reservoir)
        self._index: DenseIndex | None = None
        self._multiplicity = 1

    # ------------------------------------------------------------------ budget
    def __len__(self) -> int:
        return int(self.labels.size)

    def __repr__(self) -> str:
        budget = f"per_class={self.per_class}" if self.per_class else f"total={self.total}"
        return f"ExemplarBank(dim={self.dim}, {budget}, policy={self.policy!r}, n={len(self)}, classes={len(self._classes)})"

    @property
    def classes(self) -> np.ndarray:
        """Every class seen, in order of arrival (some may hold no exemplar under a total-budget reservoir)."""
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
        each class's stream in ``per_class`` slots, or of the whole stream in
        ``total`` slots (classes it no longer holds are left out of :meth:`class_means`).

        Args:
            features: (n, dim) float features.
            labels: (n,) non-negative int class labels.
            refs: (n,) references to the raw samples (ints or strings, one kind per bank), e.g.
                dataset indices; used for leave-one-out in :meth:`knn`. Default: -1 ("no ref").
            policy: overrides the bank's default policy for this call.

        Raises:
            ValueError / TypeError: on any bad argument, before anything changes.
        """
        # ============ validate everything, change nothing ============
        policy = self.policy if policy is None else checks.check_choice("policy", policy, checks.POLICIES)
        x = as_matrix(features, self.dim, "features")
        y = checks.as_labels(labels, x.shape[0])
        r = np.full(x.shape[0], -1, dtype=np.int64) if refs is None else checks.as_refs(refs, x.shape[0])
        checks.same_ref_kind(self.refs, r)
        classes = self._classes + [c for c in dict.fromkeys(y.tolist()) if c not in self._class_seen]
        if policy != "reservoir" and self.total is not None and len(classes) > self.total:
            raise ValueError(f"total={self.total} cannot keep one exemplar for each of {len(classes)} classes with "
                             f"policy {policy!r}: use total >= {len(classes)}, a per_class budget or 'reservoir'")
        # ============ select into new arrays; commit only if that finishes ============
        rng_state = self._rng.bit_generator.state
        try:
            if policy == "reservoir" and self.per_class is None:
                new = self._stream_reservoir(x, y, r)
            else:
                new = self._per_class(x, y, r, classes, policy)
        except BaseException:
            self._rng.bit_generator.state = rng_state
            raise
        self.features, self.labels, self.refs = new
        for c, n in zip(*np.unique(y, return_counts=True)):
            self._class_seen[int(c)] = self._class_seen.get(int(c), 0) + int(n)
        self._classes, self._seen = classes, self._seen + int(y.size)
        self._index = None

    def _concat(self, r: np.ndarray) -> np.ndarray:
        """Dtype of the refs after an update: the bank's, or the new batch's while the bank is empty."""
        return self.refs if self.refs.size or not r.size else self.refs.astype(r.dtype)

    def _per_class(self, x, y, r, classes: list[int], policy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reselect (or reservoir-sample) each class present, cut every class to the quota; grouped by class."""
        m = self.per_class if self.per_class is not None else self.total // max(len(classes), 1)
        select = None if policy == "reservoir" else get_policy(policy, self._rng)
        old_refs = self._concat(r)
        parts_f, parts_y, parts_r = [], [], []
        for c in classes:
            old, new = self.labels == c, y == c
            cf = np.concatenate([self.features[old], x[new]])
            cr = np.concatenate([old_refs[old], r[new]])
            if not new.any():  # keep the existing priority order, truncated to the quota
                order = np.arange(min(m, int(old.sum())))
            elif select is not None:
                order = select(cf, m)
            else:  # this class's own reservoir of m slots over its stream
                slots = reservoir_slots(int(old.sum()), self._class_seen.get(c, 0), int(new.sum()), m, self._rng)
                order = reservoir_take(int(old.sum()), slots)
            parts_f.append(cf[order])
            parts_r.append(cr[order])
            parts_y.append(np.full(len(order), c, dtype=np.int64))
        if not classes:  # an empty update of an empty bank
            return self.features, self.labels, old_refs
        feats = np.ascontiguousarray(np.concatenate(parts_f), dtype=np.float32)
        return feats, np.concatenate(parts_y), np.concatenate(parts_r).astype(old_refs.dtype)

    def _stream_reservoir(self, x, y, r) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One reservoir of ``total`` slots over the whole stream (slot order)."""
        take = reservoir_take(len(self), reservoir_slots(len(self), self._seen, x.shape[0], self.total, self._rng))
        old_refs = self._concat(r)
        feats = np.concatenate([self.features, x])[take]
        refs = np.concatenate([old_refs, r])[take].astype(old_refs.dtype)
        return np.ascontiguousarray(feats, dtype=np.float32), np.concatenate([self.labels, y])[take], refs

    def replace_features(self, features: Any) -> None:
        """Swap in re-computed features for the stored exemplars (same order), e.g. after the encoder changed."""
        x = as_matrix(features, self.dim, "features")
        if x.shape[0] != len(self):
            raise ValueError(f"expected {len(self)} rows, got {x.shape[0]}")
        self.features = x.copy()
        self._index = None

    # ------------------------------------------------------------------ lookups
    def _get_index(self) -> DenseIndex:
        if self._index is None:
            idx = DenseIndex(self.dim, "Flat", self.metric)
            if len(self):
                idx.add(np.arange(len(self), dtype=np.int64), self.features)
            self._multiplicity = self._ref_multiplicity()
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
            queries: (nq, dim) features (nq may be 0).
            k: neighbours per query (>= 1).
            exclude: optional (nq,) refs, of the bank's kind; exemplars whose ref equals
                query i's are never returned for query i (leave-one-out during training).
                A -1 entry excludes nothing.

        Returns:
            ``(scores, rows)`` (nq, k); rows index ``features``/``labels``/``refs``,
            padded with -1 (score -inf, or +inf for l2) when too few remain.
        """
        k = checks.check_int("k", k, 1)
        q = as_matrix(queries, self.dim, "queries")
        nq = q.shape[0]
        ex = None
        if exclude is not None:
            if np.shape(exclude) != (nq,):
                raise ValueError(f"exclude must have one ref per query, shape ({nq},), got {np.shape(exclude)}")
            ex = checks.as_refs(exclude, nq, "exclude")
            checks.same_ref_kind(self.refs, ex, "exclude")
        D = np.full((nq, k), np.inf if self.metric == "l2" else -np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0 or len(self) == 0:
            return D, I
        idx = self._get_index()
        if ex is None:
            d, i = idx.search(q, min(k, len(self)))
        else:  # search deep enough that k survive dropping every copy of the query's own ref
            d, i = idx.search(q, min(k + self._multiplicity, len(self)))
            drop = (i >= 0) & (self.refs[np.where(i >= 0, i, 0)] == ex[:, None]) & (ex[:, None] != -1)
            keep_first = np.argsort(drop, axis=1, kind="stable")[:, :k]
            d, i = np.take_along_axis(d, keep_first, 1), np.take_along_axis(i, keep_first, 1)
            gone = np.take_along_axis(drop, keep_first, 1)
            d[gone], i[gone] = D[0, 0], -1
        D[:, : d.shape[1]], I[:, : i.shape[1]] = d, i
        return D, I

    def class_means(self) -> tuple[np.ndarray, np.ndarray]:
        """iCaRL class means: the normalised mean of each class's normalised exemplar features.

        Returns:
            ``(classes (C,), means (C, dim) float32)`` for the classes holding at least one
            exemplar, in order of arrival.
        """
        held = [c for c in self._classes if (self.labels == c).any()]
        phi = _normalize(self.features)
        means = np.stack([phi[self.labels == c].mean(0) for c in held]) if held else np.empty((0, self.dim))
        return np.asarray(held, dtype=np.int64), _normalize(means).astype(np.float32)

    def predict_ncm(self, queries: Any) -> np.ndarray:
        """Nearest-class-mean labels (iCaRL's classifier): (nq,) int64 for (nq, dim) queries.

        Raises:
            ValueError: the bank holds no exemplar yet.
        """
        q = as_matrix(queries, self.dim, "queries")
        cls, means = self.class_means()
        if not len(cls):
            raise ValueError("predict_ncm needs exemplars: the bank is empty")
        if q.shape[0] == 0:
            return np.empty(0, dtype=np.int64)
        return cls[np.argmax(_normalize(q) @ means.T, axis=1)]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Atomically save (npy arrays + JSON manifest, no pickle); a crash leaves the previous save."""
        str_refs = self.refs.dtype == object
        features, labels, refs = self.features, self.labels, self.refs

        def write_refs(f: str) -> None:
            if str_refs:
                with open(f, "w") as fh:
                    json.dump(refs.tolist(), fh)
            else:
                np.save(f, refs, allow_pickle=False)

        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "per_class": self.per_class,
                "total": self.total, "policy": self.policy, "metric": self.metric,
                "classes": list(self._classes), "class_seen": [self._class_seen[c] for c in self._classes],
                "seen": self._seen, "str_refs": bool(str_refs), "rng_state": self._rng.bit_generator.state}
        write_snapshot(path, _KIND, meta, {
            "features": (".npy", lambda f: np.save(f, features, allow_pickle=False)),
            "labels": (".npy", lambda f: np.save(f, labels, allow_pickle=False)),
            "refs": (".json" if str_refs else ".npy", write_refs),
        })

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "ExemplarBank":
        """Load a bank written by :meth:`save` (sizes, digests and every metadata field checked).

        Raises:
            CorruptSnapshotError: naming the file or metadata field that is missing or wrong.
        """
        # load_snapshot retries when a concurrent save moves the manifest on: old or new, never an error.
        return load_snapshot(path, _KIND, lambda meta, files: cls._from_snapshot(path, meta, files), verify=verify)

    @classmethod
    def _from_snapshot(cls, path: str | os.PathLike, meta: dict[str, Any], files: dict) -> "ExemplarBank":
        if checks.meta_field(meta, "format_version", path, int) != FORMAT_VERSION:
            raise CorruptSnapshotError(f"{path}: bank format {meta['format_version']}, expected {FORMAT_VERSION}")
        try:
            bank = cls(checks.meta_field(meta, "dim", path, int),
                       per_class=checks.meta_field(meta, "per_class", path, (int, type(None))),
                       total=checks.meta_field(meta, "total", path, (int, type(None))),
                       policy=checks.meta_field(meta, "policy", path, str),
                       metric=checks.meta_field(meta, "metric", path, str))
        except (TypeError, ValueError) as e:
            raise CorruptSnapshotError(f"{path}: bank metadata: {e}") from e
        classes = checks.int_list(meta, "classes", path)
        if len(set(classes)) != len(classes):
            raise CorruptSnapshotError(f"{path}: bank metadata field 'classes' repeats a class")
        # banks saved before per-class reservoirs have no class_seen: count the exemplars held instead
        class_seen = checks.int_list(meta, "class_seen", path, len(classes), optional=True)
        seen = checks.meta_field(meta, "seen", path, int)
        str_refs = checks.meta_field(meta, "str_refs", path, bool)
        rng_state = checks.meta_field(meta, "rng_state", path, dict)
        missing = {"features", "labels", "refs"} - set(files)
        if missing:
            raise CorruptSnapshotError(f"{path}: bank snapshot has no {sorted(missing)} file")
        try:
            features = np.load(files["features"], allow_pickle=False)
            labels = np.load(files["labels"], allow_pickle=False)
            refs = json.loads(files["refs"].read_text()) if str_refs else np.load(files["refs"], allow_pickle=False)
            bank._rng.bit_generator.state = rng_state
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise CorruptSnapshotError(f"{path}: cannot read saved bank: {e}") from e
        if str_refs and not (isinstance(refs, list) and all(isinstance(s, str) for s in refs)):
            raise CorruptSnapshotError(f"{path}: string refs must be a JSON list of strings")
        refs = np.asarray(refs, dtype=object) if str_refs else refs
        if not (features.dtype == np.float32 and labels.dtype == np.int64 and (str_refs or refs.dtype == np.int64)):
            raise CorruptSnapshotError(f"{path}: saved arrays have dtypes {features.dtype}, {labels.dtype}, {refs.dtype}")
        if not (features.shape == (labels.size, bank.dim) and refs.shape == labels.shape):
            raise CorruptSnapshotError(f"{path}: features, labels and refs disagree in length")
        if not np.isin(labels, classes).all() or not np.isfinite(features).all():
            raise CorruptSnapshotError(f"{path}: labels outside the saved classes, or non-finite features")
        bank.features, bank.labels, bank.refs = features, labels, refs
        bank._classes, bank._seen = classes, seen
        counts = class_seen or [int((labels == c).sum()) for c in classes]
        bank._class_seen = dict(zip(classes, counts))
        if len(bank) > bank.capacity:
            raise CorruptSnapshotError(f"{path}: {len(bank)} exemplars exceed the budget of {bank.capacity}")
        return bank

    def rows_of(self, classes: Iterable[int]) -> np.ndarray:
        """Row indices of the exemplars of the given classes."""
        return np.flatnonzero(np.isin(self.labels, np.fromiter(classes, dtype=np.int64)))
