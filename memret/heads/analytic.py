"""Analytic class-incremental heads over frozen features: RanPAC and streaming LDA.

Both learn from sufficient statistics accumulated task by task in float64, so
they need no exemplars and forget nothing by construction:

- :class:`RanPAC` (McDonnell et al., NeurIPS 2023; the ridge head of ACIL, Zhuang et al. 2022):
  a frozen, seeded random projection ``h = ReLU(x W)`` to ``projection`` dimensions, the Gram
  matrix ``G = sum h h^T`` and class sums ``Q = sum h y^T``, and the ridge head
  ``W = (G + lam I)^-1 Q``. With a fixed ``lam`` the head after any stream equals the joint
  ridge solution on all the data, whatever the class order. ``lam`` is chosen on a held-out
  part of all the training data seen so far, read through held-out statistics
  (``G_h``, ``Q_h``, ``sum y^2``), so no sample is kept.
- :class:`SLDA` (Hayes & Kanan, CVPR-W 2020): class means and one shared covariance with
  shrinkage; scores ``x Lambda mu_c - mu_c Lambda mu_c / 2``. Means and the pooled within-class
  covariance are accumulated exactly (sums and the second moment) rather than by Hayes'
  per-sample streaming approximation, so they too are order-invariant. ``shrinkage="auto"``
  re-chooses the shrinkage after every task by the error expected on a held-out part of all the
  data seen so far, read from held-out sums and second moment (no sample kept).
- :class:`BlockSLDA`: one SLDA per block of feature columns (each its own covariance and shrinkage), scores
  summed: LDA with a block-diagonal covariance, for features that concatenate blocks of different kinds.

    head = RanPAC(n_classes=10)
    for X, y in tasks:            # X (N, D) float features, y (N,) int labels
        head.fit_task(X, y)
    pred = head.predict(X_test)   # among the classes seen so far
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(dtype)


def block_widths(blocks, what: str = "blocks") -> tuple[int, ...]:
    """``blocks`` as a tuple of positive int widths (:class:`BlockSLDA`, ``TrainConfig.slda_blocks``); anything else
    (a string, an int, no widths, a bool, a float, a width < 1) is refused with a ValueError naming ``what``."""
    if (isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__len__") or not len(blocks)
            or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in blocks)):
        raise ValueError(f"{what} must be a sequence of positive int widths, got {blocks!r}")
    return tuple(int(b) for b in blocks)


class _Predicts:
    """``predict`` for a head with ``seen`` and ``scores``: the best-scoring class among those seen so far."""

    def predict(self, features) -> np.ndarray:
        """(N,) predicted labels among the classes seen so far."""
        if not bool(self.seen.any()):
            raise RuntimeError(f"{type(self).__name__} has seen no data: call fit_task first")
        s = self.scores(features)
        s[:, ~self.seen.numpy()] = -np.inf
        return s.argmax(1)


class _AnalyticHead(_Predicts):
    """What RanPAC and SLDA share: the seen classes, prediction among them, input checks."""

    def __init__(self, n_classes: int, chunk: int = 4096) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.n_classes, self.chunk = int(n_classes), int(chunk)
        self.seen = torch.zeros(n_classes, dtype=torch.bool)
        self.dim: int | None = None

    def _check(self, features, labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        X = _as_tensor(features)
        if X.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(X.shape)}")
        if self.dim is not None and X.shape[1] != self.dim:
            raise ValueError(f"features have {X.shape[1]} dimensions, the head was fitted on {self.dim}")
        if labels is None:
            return X, None
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if y.shape != (len(X),):
            raise ValueError(f"labels must be ({len(X)},), got {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes}), got [{int(y.min())}, {int(y.max())}]")
        return X, y

    def _holdout_mask(self, n: int, holdout: np.ndarray | None, stream: int) -> torch.Tensor:
        """(n,) bool: ``holdout`` checked, or by default a seeded random ``self.holdout`` fraction of the task
        (``stream`` keeps the heads' default draws apart)."""
        if holdout is None:
            holdout = np.random.default_rng([self.seed, self.tasks, stream]).random(n) < self.holdout
        mask = torch.as_tensor(np.asarray(holdout, dtype=bool))
        if mask.shape != (n,):
            raise ValueError(f"holdout must be ({n},) bool, got {tuple(mask.shape)}")
        return mask

    def scores(self, features) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class RanPAC(_AnalyticHead):
    """Random projection + ReLU + ridge head, accumulated in float64.

    Args:
        n_classes: total number of classes of the stream (output width).
        projection: width M of the random projection (0: ridge on the raw features).
        ridge: a fixed ridge strength, or ``"auto"``: chosen after every task among ``ridges``
            (scaled by the mean diagonal of the Gram matrix) by the squared error on the held-out
            part of all the training data seen so far.
        ridges: the relative grid searched by ``"auto"``.
        holdout: fraction of each task's samples held out for choosing ``ridge`` (the final head
            is then solved on all samples, held-out ones included).
        seed: seeds the projection and the default held-out draw.
        chunk: rows per matrix product (bounds memory).
    """

    def __init__(self, n_classes: int, projection: int = 4096, ridge: float | str = "auto",
                 ridges: tuple[float, ...] = tuple(10.0 ** np.arange(-6, 1)), holdout: float = 0.2, seed: int = 0,
                 chunk: int = 4096) -> None:
        super().__init__(n_classes, chunk)
        if ridge != "auto" and not (isinstance(ridge, (int, float)) and ridge > 0):
            raise ValueError(f"ridge must be a positive number or 'auto', got {ridge!r}")
        if not 0 < holdout < 1:
            raise ValueError(f"holdout must lie in (0, 1), got {holdout}")
        self.projection, self.ridge, self.ridges = int(projection), ridge, tuple(float(r) for r in ridges)
        self.holdout, self.seed = float(holdout), int(seed)
        self.W_rand: torch.Tensor | None = None      # (D, M) float32
        self.G = self.Q = self.G_h = self.Q_h = None  # float64 (M, M), (M, C): fit part and held-out part
        self.yy_h = torch.zeros(n_classes, dtype=torch.float64)  # sum of squared one-hot targets, held-out
        self.weight: torch.Tensor | None = None      # (M, C) float32, the solved head
        self.lam: float | None = None                # the ridge strength used for ``weight``
        self.tasks = 0

    # ============ features ============
    def _init(self, dim: int) -> None:
        self.dim = dim
        M = self.projection or dim
        if self.projection:
            g = torch.Generator().manual_seed(self.seed)
            self.W_rand = torch.randn(dim, M, generator=g)
        self.G, self.G_h = torch.zeros(M, M, dtype=torch.float64), torch.zeros(M, M, dtype=torch.float64)
        self.Q = torch.zeros(M, self.n_classes, dtype=torch.float64)
        self.Q_h = torch.zeros(M, self.n_classes, dtype=torch.float64)

    def project(self, features) -> torch.Tensor:
        """(N, D) features -> (N, M) float32 ``ReLU(x W_rand)`` (the features themselves without projection)."""
        X, _ = self._check(features)
        if self.W_rand is None:
            return X
        return torch.cat([torch.relu(X[s:s + self.chunk] @ self.W_rand) for s in range(0, len(X), self.chunk)]) \
            if len(X) else X.new_zeros(0, self.W_rand.shape[1])

    # ============ learning ============
    def fit_task(self, features, labels, holdout: np.ndarray | None = None) -> "RanPAC":
        """Add one task's (N, D) features and (N,) labels, then re-solve the head.

        Args:
            holdout: optional (N,) bool mask of the samples held out for choosing ``ridge``;
                by default a seeded random ``holdout`` fraction of the task. Pass a mask that depends
                on the samples only (e.g. on dataset rows) to make the chosen ridge order-invariant.
        """
        X, y = self._check(features, labels)
        if self.dim is None:
            self._init(X.shape[1])
        holdout = self._holdout_mask(len(X), holdout, stream=1)
        for s in range(0, len(X), self.chunk):
            H = self.project(X[s:s + self.chunk]).double()
            Y = torch.nn.functional.one_hot(y[s:s + self.chunk], self.n_classes).double()
            h = holdout[s:s + self.chunk]
            self.G += H[~h].T @ H[~h]
            self.Q += H[~h].T @ Y[~h]
            self.G_h += H[h].T @ H[h]
            self.Q_h += H[h].T @ Y[h]
            self.yy_h += Y[h].sum(0)
        self.seen[y.unique()] = True
        self.tasks += 1
        self.lam = float(self.ridge) if self.ridge != "auto" else self.choose_ridge()
        self.weight = self.solve(self.lam)
        return self

    def _scale(self) -> float:
        G = self.G + self.G_h
        return float(G.diagonal().mean().clamp(min=1e-12))

    def choose_ridge(self) -> float:
        """The ridge strength (absolute) with the least held-out squared error among ``ridges`` x scale.

        The head is fitted on the non-held-out statistics only; its held-out squared error is
        ``tr(W^T G_h W) - 2 tr(W^T Q_h) + sum y^2`` restricted to the classes seen.
        """
        if float(self.G_h.diagonal().sum()) == 0.0:  # nothing held out (tiny task): fall back to the middle
            return self.ridges[len(self.ridges) // 2] * self._scale()
        seen = self.seen
        scale, best, best_err = self._scale(), None, np.inf
        for r in self.ridges:
            W = self._cholesky_solve(self.G, self.Q[:, seen], r * scale)
            err = float((W * (self.G_h @ W)).sum() - 2 * (W * self.Q_h[:, seen]).sum() + self.yy_h[seen].sum())
            if err < best_err:
                best, best_err = r * scale, err
        return float(best)

    @staticmethod
    def _cholesky_solve(G: torch.Tensor, Q: torch.Tensor, lam: float) -> torch.Tensor:
        A = G.clone()
        A.diagonal().add_(lam)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            return torch.linalg.solve(A, Q)
        return torch.cholesky_solve(Q, L)

    def solve(self, lam: float) -> torch.Tensor:
        """(M, C) float32 ridge head on all the statistics so far: ``(G + G_h + lam I)^-1 (Q + Q_h)``."""
        if self.G is None:
            raise RuntimeError("RanPAC has seen no data: call fit_task first")
        return self._cholesky_solve(self.G + self.G_h, self.Q + self.Q_h, lam).float()

    def scores(self, features) -> np.ndarray:
        """(N, n_classes) float32 ridge outputs (classes not seen yet score 0)."""
        if self.weight is None:
            raise RuntimeError("RanPAC has seen no data: call fit_task first")
        X, _ = self._check(features)
        out = [self.project(X[s:s + self.chunk]) @ self.weight for s in range(0, len(X), self.chunk)]
        return (torch.cat(out) if out else X.new_zeros(0, self.n_classes)).numpy()

    # ============ persistence ============
    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("W_rand", "G", "Q", "G_h", "Q_h", "yy_h", "weight", "seen")} | {
            "lam": torch.tensor(self.lam if self.lam is not None else float("nan")),
            "tasks": torch.tensor(self.tasks), "dim": torch.tensor(self.dim if self.dim is not None else -1)}

    def load_state_dict(self, state: dict) -> None:
        for k in ("W_rand", "G", "Q", "G_h", "Q_h", "yy_h", "weight", "seen"):
            setattr(self, k, state[k])
        lam = float(state["lam"])
        self.lam = None if np.isnan(lam) else lam
        self.tasks, dim = int(state["tasks"]), int(state["dim"])
        self.dim = None if dim < 0 else dim


class SLDA(_AnalyticHead):
    """Linear discriminant analysis with a shared, shrunk covariance, learnt task by task.

    Args:
        n_classes: total number of classes of the stream.
        shrinkage: ``Sigma <- (1 - s) Sigma + s I`` before inversion (Hayes & Kanan: 1e-4); 1 gives the
            nearest-class-mean classifier (Euclidean) and skips the covariance. ``"auto"``: chosen after
            every task among ``shrinkages`` on the held-out part of all the training data seen so far,
            read through held-out statistics (:meth:`held_out_error`), so no sample is kept.
        shrinkages: the grid searched by ``"auto"``.
        holdout: fraction of each task's samples held out for choosing ``shrinkage`` (the discriminant
            is then solved on all samples, held-out ones included).
        seed: seeds the default held-out draw.
        chunk: rows per matrix product.
        search: how ``"auto"`` reads the grid: ``"descent"`` from the last task's choice, or every point
            (``"grid"``); see :meth:`choose_shrinkage`.
    """

    def __init__(self, n_classes: int, shrinkage: float | str = 1e-4,
                 shrinkages: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3),
                 holdout: float = 0.2, seed: int = 0, chunk: int = 4096, search: str = "descent") -> None:
        super().__init__(n_classes, chunk)
        if search not in ("grid", "descent"):
            raise ValueError(f"search must be 'grid' or 'descent', got {search!r}")
        self.search = search
        self.auto = shrinkage == "auto"
        if not self.auto and not (isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1):
            raise ValueError(f"shrinkage must lie in [0, 1] or be 'auto', got {shrinkage!r}")
        if self.auto and (not shrinkages or not all(0 < s < 1 for s in shrinkages)):
            raise ValueError(f"shrinkages must lie in (0, 1), got {shrinkages!r}")
        if not 0 < holdout < 1:
            raise ValueError(f"holdout must lie in (0, 1), got {holdout}")
        self.shrinkages, self.holdout, self.seed = tuple(float(s) for s in shrinkages), float(holdout), int(seed)
        self.shrinkage = float(min(self.shrinkages)) if self.auto else float(shrinkage)
        self.sums: torch.Tensor | None = None    # (C, D) float64 class sums  } of the samples fitted on
        self.counts = torch.zeros(n_classes, dtype=torch.float64)  #          } (all of them unless "auto")
        self.second: torch.Tensor | None = None  # (D, D) float64 sum of x x^T }
        self.sums_h = self.second_h = None       # the same three of the held-out samples ("auto" only)
        self.counts_h = torch.zeros(n_classes, dtype=torch.float64)
        self.weight: torch.Tensor | None = None  # (D, C) float32 Lambda mu
        self.bias: torch.Tensor | None = None    # (C,) float32 -mu Lambda mu / 2
        self.tasks = 0

    def _totals(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.sums is None:
            raise RuntimeError("SLDA has seen no data: call fit_task first")
        if self.sums_h is None:
            return self.sums, self.counts, self.second
        return self.sums + self.sums_h, self.counts + self.counts_h, self.second + self.second_h

    @staticmethod
    def _moments(sums, counts, second, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Class means and pooled covariance; ``inplace``: the covariance overwrites ``second`` (a fresh total).

        One (D, D) allocation at most (``addmm``, no temporaries): at 16,000 dimensions each is 2 GB."""
        mu = sums / counts.clamp(min=1).unsqueeze(1)
        n = float(counts.sum().clamp(min=1))
        if inplace:
            return mu, second.addmm_(mu.T * counts, mu, alpha=-1).div_(n)
        return mu, torch.addmm(second, mu.T * counts, mu, alpha=-1).div_(n)

    @property
    def means(self) -> torch.Tensor:
        """(C, D) float64 class means over every sample seen (zeros for classes not seen)."""
        sums, counts, _ = self._totals()
        return sums / counts.clamp(min=1).unsqueeze(1)

    @property
    def covariance(self) -> torch.Tensor:
        """(D, D) float64 pooled within-class covariance, ``(sum x x^T - sum_c n_c mu_c mu_c^T) / N``."""
        return self._moments(*self._totals())[1]

    def fit_task(self, features, labels, holdout: np.ndarray | None = None) -> "SLDA":
        """Add one task's (N, D) features and (N,) labels, then re-solve the discriminant.

        Args:
            holdout: with ``shrinkage="auto"``, an optional (N,) bool mask of the samples held out for
                choosing it; by default a seeded random ``holdout`` fraction of the task. Pass a mask that
                depends on the samples only (e.g. on dataset rows) to make the choice order-invariant.
                Ignored with a fixed shrinkage.
        """
        X, y = self._check(features, labels)
        if self.sums is None:
            self.dim = X.shape[1]
            self.sums = torch.zeros(self.n_classes, self.dim, dtype=torch.float64)
            self.second = torch.zeros(self.dim, self.dim, dtype=torch.float64)
            if self.auto:
                self.sums_h, self.second_h = torch.zeros_like(self.sums), torch.zeros_like(self.second)
        h = self._holdout_mask(len(X), holdout, stream=2) if self.auto else torch.zeros(len(X), dtype=torch.bool)
        for s in range(0, len(X), self.chunk):
            x, c, hs = X[s:s + self.chunk].double(), y[s:s + self.chunk], h[s:s + self.chunk]
            for part, sums, counts, second in ((~hs, self.sums, self.counts, self.second),
                                               (hs, self.sums_h, self.counts_h, self.second_h)):
                if not bool(part.any()):
                    continue
                xp, cp = x[part], c[part]
                sums.index_add_(0, cp, xp)
                counts += torch.bincount(cp, minlength=self.n_classes).double()
                if self.shrinkage < 1:  # shrinkage 1 is nearest class mean: the covariance is not needed
                    second.addmm_(xp.T, xp)  # in place: no (D, D) temporary
        self.seen[y.unique()] = True
        self.tasks += 1
        if self.auto:
            self.shrinkage = self.choose_shrinkage()
        self._solve()
        return self

    def held_out_error(self, shrinkage: float, fitted: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        """Expected held-out error of the discriminant fitted (non-held-out statistics) with ``shrinkage``.

        Read from the held-out statistics alone: for held-out class ``i`` and rival ``j`` the score margin
        ``f_i(x) - f_j(x)`` has mean ``(w_i - w_j) m_i + b_i - b_j`` (``m_i`` the held-out class mean) and
        variance ``(w_i - w_j)^T A (w_i - w_j)`` (``A`` the held-out scatter around the fitted means, per
        sample); each pair contributes the Gaussian tail ``Phi(-mean / std)``, summed over rivals (a union
        bound on the error) and averaged over held-out samples. ``fitted``: the non-held-out statistics'
        ``(means, covariance)`` when the caller has them; without, they are made here (one ``addmm``, ~1 s at
        16,000 dimensions against ~20 s for the factorisation) and not kept, which spares a (D, D) buffer.
        """
        seen = self.seen & (self.counts > 0)
        own = fitted is None  # then the covariance is made here and shrunk in place: no (D, D) buffer kept
        mu, cov = fitted or self._moments(self.sums, self.counts, self.second)
        P = self._discriminant(cov, mu[seen], shrinkage, overwrite=own,
                               rebuild=lambda: self._moments(self.sums, self.counts, self.second)[1])
        del cov
        b = -0.5 * (mu[seen].T * P).sum(0)
        n_h = self.counts_h[seen]
        m = float(n_h.sum())
        mh = self.sums_h[seen] / n_h.clamp(min=1).unsqueeze(1)
        # held-out scatter around the fitted means, A = sum (x - mu_y)(x - mu_y)^T, applied to P only
        AP = (self.second_h @ P - self.sums_h[seen].T @ (mu[seen] @ P) - mu[seen].T @ (self.sums_h[seen] @ P)
              + (mu[seen].T * n_h) @ (mu[seen] @ P)) / m
        V = P.T @ AP                                              # (k, k) w_i^T A w_j
        F = mh @ P + b                                            # (k, k) mean score of class j on held class i
        mean = F.diagonal().unsqueeze(1) - F                      # margin of the true class i over rival j
        var = (V.diagonal().unsqueeze(1) + V.diagonal().unsqueeze(0) - 2 * V).clamp(min=1e-300)
        tail = torch.special.ndtr(-mean / var.sqrt())
        tail.fill_diagonal_(0)
        return float((tail.sum(1) * n_h).sum() / m)

    def choose_shrinkage(self) -> float:
        """The shrinkage in ``shrinkages`` with the least :meth:`held_out_error` (the first of ties).

        ``search="grid"`` reads the error at every grid point. ``"descent"`` walks the sorted grid from the last
        task's choice towards lower error and stops where it rises: the same choice whenever the error is
        unimodal along the grid, in ~3 Cholesky factorisations instead of ``len(shrinkages)`` (each ~10 s on two
        cores at 12,800 dimensions).
        """
        if float(self.counts_h.sum()) == 0 or float(self.counts.sum()) == 0:  # nothing held out (tiny task)
            return self.shrinkages[len(self.shrinkages) // 2]
        if self.search == "grid":
            errs = [self.held_out_error(s) for s in self.shrinkages]
            return self.shrinkages[int(np.argmin(errs))]
        grid = sorted(self.shrinkages)
        errs: dict[int, float] = {}

        def err(i: int) -> float:
            if i not in errs:
                errs[i] = self.held_out_error(grid[i]) if 0 <= i < len(grid) else np.inf
            return errs[i]

        # self.tasks already counts the task being added: a previous choice exists from the second task on
        i = grid.index(self.shrinkage) if self.tasks > 1 and self.shrinkage in grid else len(grid) // 2
        step = -1 if err(i - 1) <= err(i) else 1  # ties towards the smaller shrinkage, as the grid's argmin
        while err(i + step) < err(i) or (step == -1 and err(i + step) == err(i)):
            i += step
        return grid[i]

    def set_shrinkage(self, shrinkage: float) -> "SLDA":
        """Re-solve the discriminant with another shrinkage in (0, 1] (the statistics are kept)."""
        if not 0 < shrinkage <= 1 or (shrinkage < 1 and self.shrinkage == 1):
            raise ValueError(f"shrinkage must lie in (0, 1] (and the covariance was not accumulated at shrinkage 1), "
                             f"got {shrinkage}")
        self.shrinkage = float(shrinkage)
        self._solve()
        return self

    @staticmethod
    def _discriminant(cov: torch.Tensor, mu: torch.Tensor, shrinkage: float, overwrite: bool,
                      rebuild=None) -> torch.Tensor:
        """(D, k) ``((1 - s) cov + s I)^-1 mu^T``; ``overwrite``: ``cov`` is shrunk in place (its contents are
        lost; ``rebuild()`` must then return it again, for the LU fallback).

        Beside ``cov``: the shrunk matrix (not with ``overwrite``) and its factor, each (D, D): 2 GB at 16,000-d."""
        S = cov.mul_(1 - shrinkage) if overwrite else cov.mul(1 - shrinkage)
        S.diagonal().add_(shrinkage)
        # S is positive definite: Cholesky, half an LU's cost (12,800-d: ~20 s a core). Two triangular solves read
        # the factor where it lies (cholesky_solve would copy it: one more (D, D) buffer). scipy's dpotrf in
        # place would save the factor's buffer too, but it crashed (SIGSEGV) at 16,000 dimensions here.
        L, info = torch.linalg.cholesky_ex(S)
        if int(info) == 0:
            del S
            return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, mu.T.contiguous(), upper=False),
                                                 upper=True)
        S = (rebuild() if overwrite else cov).mul(1 - shrinkage)  # not positive definite in floating point: LU
        S.diagonal().add_(shrinkage)
        return torch.linalg.solve(S, mu.T)

    def _solve(self) -> None:
        if self.shrinkage == 1:
            mu = self.means
            P = mu.T.contiguous()  # the identity's inverse
        else:
            sums, counts, second = self._totals()
            mu, cov = self._moments(sums, counts, second if self.sums_h is not None else second.clone(), inplace=True)
            P = self._discriminant(cov, mu, self.shrinkage, overwrite=True,
                                   rebuild=lambda: self._moments(*self._totals())[1])  # Lambda mu
            del cov
        self.weight = P.float()
        self.bias = (-0.5 * (mu.T * P).sum(0)).float()

    def scores(self, features) -> np.ndarray:
        """(N, n_classes) float32 discriminant scores (classes not seen yet score as a zero mean would)."""
        if self.weight is None:
            raise RuntimeError("SLDA has seen no data: call fit_task first")
        X, _ = self._check(features)
        out = [X[s:s + self.chunk] @ self.weight + self.bias for s in range(0, len(X), self.chunk)]
        return (torch.cat(out) if out else X.new_zeros(0, self.n_classes)).numpy()

    _STATE = ("sums", "counts", "second", "sums_h", "counts_h", "second_h", "weight", "bias", "seen")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._STATE} | {
            "shrinkage": torch.tensor(self.shrinkage, dtype=torch.float64), "tasks": torch.tensor(self.tasks),
            "dim": torch.tensor(self.dim if self.dim is not None else -1)}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            if k in state or k not in ("sums_h", "counts_h", "second_h"):  # states saved before "auto" lack them
                setattr(self, k, state[k])
        self.shrinkage = float(state.get("shrinkage", self.shrinkage))
        self.tasks = int(state.get("tasks", 0))
        dim = int(state["dim"])
        self.dim = None if dim < 0 else dim


class BlockSLDA(_Predicts):
    """LDA with a block-diagonal shared covariance: one :class:`SLDA` per block of feature columns, scores summed.

    For features that concatenate blocks of different kinds (``kmeans_patches`` with ``layers=2``: layer 1's and
    layer 2's, ``encoder.feature_blocks``), each block gets its own covariance and its own shrinkage, chosen on
    its own held-out statistics; the cross-block covariance is taken as zero. On Split CIFAR-10's validation rows
    this beats one SLDA over the concatenation, whose one shrinkage must serve both blocks (RESULTS.md 10.13).

    Args:
        n_classes: total number of classes of the stream.
        blocks: the blocks' widths, in column order (they sum to the feature dimension).
        **kw: every block's :class:`SLDA` keywords (``shrinkage``, ``shrinkages``, ``holdout``, ...).
    """

    def __init__(self, n_classes: int, blocks, **kw) -> None:
        self.blocks = block_widths(blocks)
        self.heads = [SLDA(n_classes, **kw) for _ in self.blocks]
        self.n_classes, self.dim = int(n_classes), sum(self.blocks)
        self._edges = np.cumsum((0,) + self.blocks)

    @property
    def seen(self) -> torch.Tensor:
        return self.heads[0].seen

    @property
    def shrinkage(self) -> tuple[float, ...]:
        """Each block's shrinkage."""
        return tuple(h.shrinkage for h in self.heads)

    def _parts(self, features):
        X = features if isinstance(features, (np.ndarray, torch.Tensor)) else np.asarray(features)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}) (blocks {self.blocks}), got shape {tuple(X.shape)}")
        return [X[:, a:b] for a, b in zip(self._edges[:-1], self._edges[1:])]

    def fit_task(self, features, labels, holdout: np.ndarray | None = None) -> "BlockSLDA":
        """Add one task to every block's SLDA (the same labels and held-out rows); see :meth:`SLDA.fit_task`."""
        parts = self._parts(features)
        for h, part in zip(self.heads, parts):
            h.fit_task(part, labels, holdout=holdout)
        return self

    def scores(self, features) -> np.ndarray:
        """(N, n_classes) float32: the blocks' discriminant scores summed."""
        parts = self._parts(features)
        out = self.heads[0].scores(parts[0])
        for h, part in zip(self.heads[1:], parts[1:]):
            out += h.scores(part)
        return out

    def state_dict(self) -> dict:
        return {"blocks": torch.tensor(self.blocks)} | {f"block{i}.{k}": v for i, h in enumerate(self.heads)
                                                        for k, v in h.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        blocks = tuple(int(b) for b in state["blocks"])
        if blocks != self.blocks:
            raise ValueError(f"the state has blocks {blocks}, this head {self.blocks}")
        for i, h in enumerate(self.heads):
            p = f"block{i}."
            h.load_state_dict({k[len(p):]: v for k, v in state.items() if k.startswith(p)})
