"""A single-layer unsupervised encoder: k-means over whitened patches (Coates, Lee & Ng, AISTATS 2011).

It needs no outside weights and fits in seconds on a CPU, which makes it the
frozen encoder of memret's CPU-only class-incremental runs: fit on the first
task's images only, it never sees a later task's data. Per 6x6 patch (stride 1):
brightness/contrast normalisation, ZCA whitening, the "triangle" activation
``max(0, mean_k(z) - z_k)`` with ``z_k`` the distance to centroid k; sum-pooled
over the four image quadrants (``pool=2``; ``pool=g``: a g x g grid of cells), then standardised:
``embed_dim = pool**2 * n_centroids``.
``encoding="soft"`` replaces the triangle by Coates & Ng's (ICML 2011) soft threshold with polarity split,
``[max(0, d_k.w - alpha), max(0, -d_k.w - alpha)]`` over the unit-normalised centroids ``d_k``: twice the
channels, ``embed_dim = 2 * pool**2 * n_centroids``. The k-means itself is FAISS's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchKMeansEncoder(nn.Module):
    """Coates-Ng features; call :meth:`fit` once before use.

    Args:
        n_centroids: dictionary size K (embed_dim = pool^2 K; twice that with ``encoding="soft"``).
        patch: patch side in pixels.
        in_chans: image channels.
        eps_norm, eps_zca: regularisers of the patch normalisation and the whitening.
        fit_patches: patches sampled (evenly over the images) for the whitening and k-means in :meth:`fit`
            (Coates et al. used 400,000; a registry keyword, so ``run(encoder_kw=...)`` reaches it).
        encoding: ``"triangle"`` (Coates, Lee & Ng 2011; K channels) or ``"soft"`` (soft threshold ``alpha`` of
            the projections on the unit-normalised centroids, both polarities: 2K channels).
        alpha: the soft threshold.
        pool: the activation map is sum-pooled over a ``pool`` x ``pool`` grid of cells (adaptive average
            pooling's cells; Coates et al.'s quadrants are 2).
    """

    def __init__(self, n_centroids: int = 400, patch: int = 6, in_chans: int = 3, eps_norm: float = 0.01,
                 eps_zca: float = 0.1, fit_patches: int = 100_000, encoding: str = "triangle",
                 alpha: float = 0.25, pool: int = 2) -> None:
        super().__init__()
        if encoding not in ("triangle", "soft"):
            raise ValueError(f"encoding must be 'triangle' or 'soft', got {encoding!r}")
        if int(pool) != pool or pool < 1:
            raise ValueError(f"pool must be a positive int, got {pool!r}")
        p = patch * patch * in_chans
        self.pool = int(pool)
        self.patch, self.n_centroids, self.eps_norm, self.eps_zca = patch, n_centroids, eps_norm, eps_zca
        self.fit_patches = int(fit_patches)
        self.encoding, self.alpha = encoding, float(alpha)
        self.channels = n_centroids * (2 if encoding == "soft" else 1)
        self.embed_dim = self.pool ** 2 * self.channels
        self.register_buffer("mean", torch.zeros(p))
        self.register_buffer("whiten", torch.eye(p))
        self.register_buffer("centroids", torch.zeros(n_centroids, p))
        self.register_buffer("feat_mean", torch.zeros(self.embed_dim))
        self.register_buffer("feat_std", torch.ones(self.embed_dim))
        self.register_buffer("fitted", torch.tensor(False))

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, P) contrast-normalised patches."""
        p = F.unfold(x, self.patch).transpose(1, 2)  # (B, L, P)
        p = p - p.mean(-1, keepdim=True)
        return p / torch.sqrt(p.var(-1, keepdim=True) + self.eps_norm)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, n_patches: int | None = None, seed: int = 0,
            niter: int = 20) -> "PatchKMeansEncoder":
        """Fit whitening, centroids and feature standardisation on (N, C, H, W) images (``n_patches``
        sampled patches; default ``fit_patches``)."""
        import faiss

        g = torch.Generator().manual_seed(seed)
        per_img = max(1, (n_patches or self.fit_patches) // len(images))
        pats = self._patches(images)  # (N, L, P)
        pick = torch.randint(0, pats.shape[1], (len(images), per_img), generator=g)
        sample = torch.gather(pats, 1, pick.unsqueeze(-1).expand(-1, -1, pats.shape[2])).reshape(-1, pats.shape[2])
        self.mean.copy_(sample.mean(0))
        cov = torch.cov((sample - self.mean).T)
        evals, evecs = torch.linalg.eigh(cov)
        self.whiten.copy_(evecs @ torch.diag(1.0 / torch.sqrt(evals.clamp(min=0) + self.eps_zca)) @ evecs.T)
        white = ((sample - self.mean) @ self.whiten).numpy().astype(np.float32)
        km = faiss.Kmeans(white.shape[1], self.n_centroids, niter=niter, seed=seed, verbose=False)
        km.train(white)
        cent = torch.from_numpy(km.centroids)
        if self.encoding == "soft":  # a dictionary of directions
            cent = cent / cent.norm(dim=1, keepdim=True).clamp(min=1e-8)
        self.centroids.copy_(cent)
        self.fitted.fill_(True)
        step = max(1, (1 << 25) // (pats.shape[1] * self.channels))
        feats = torch.cat([self._pooled(images[i:i + step]) for i in range(0, len(images), step)])
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp(min=1e-3))
        return self

    def _whitened(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, P) normalised, whitened patches of (B, C, H, W) images."""
        if not bool(self.fitted):
            raise RuntimeError("PatchKMeansEncoder is not fitted: call fit(images) first")
        return (self._patches(x) - self.mean) @ self.whiten

    def activation_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, K) triangle activations (``(B, L, 2K)`` soft-threshold ones), one row per patch position."""
        w = self._whitened(x)
        if self.encoding == "soft":
            z = w @ self.centroids.T
            return torch.cat([torch.relu(z - self.alpha), torch.relu(-z - self.alpha)], -1)
        z = torch.cdist(w, self.centroids.unsqueeze(0).expand(w.shape[0], -1, -1))  # (B, L, K)
        return torch.relu(z.mean(-1, keepdim=True) - z)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):  # no graph to build: the fast path
            return self._pooled_inplace(x)
        f = self.activation_map(x)  # (B, L, K)
        side = int(round(f.shape[1] ** 0.5))
        f = f.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        return F.adaptive_avg_pool2d(f, self.pool).flatten(1)  # (B, pool^2 C); pool 2: the quadrants

    def _pooled_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_pooled` without autograd, ~2x faster on a CPU (see :meth:`_pooled_windows`)."""
        return self._pooled_windows(x, [(0, 0)])[0]

    def _pooled_windows(self, x: torch.Tensor, origins, size: tuple[int, int] | None = None,
                        pool: int | None = None) -> torch.Tensor:
        """(S, B, pool^2 C) pooled activations of S windows of one activation map of ``x``: window s covers
        the ``size`` (rows, cols; default the whole map) positions from ``origins[s]`` (row, col), averaged over
        a ``pool`` x ``pool`` grid of cells (default ``self.pool``), channel-major (``C`` rows of ``pool^2``).

        One image's (L, K) distances at a time in one reused buffer (a fresh 5 MB tensor per step costs more
        in page faults than the product itself), ``|w|^2 + |c|^2 - 2 w.c`` by one ``addmm``, activations in
        place; each band of rows a cell spans is summed once (contiguous), then the cell's columns of it (81
        windows cost ~1x the ``addmm``, 3 windows ~0.15x)."""
        w = self._whitened(x)
        B, L, P = w.shape
        c, K, C = self.centroids, self.n_centroids, self.channels
        soft = self.encoding == "soft"
        if not soft:  # the squared norms of the distances' expansion
            cc, ww = (c * c).sum(1), (w * w).sum(-1, keepdim=True)
        rows, cols = x.shape[-2] - self.patch + 1, x.shape[-1] - self.patch + 1
        h, v = size or (rows, cols)
        # adaptive_avg_pool2d(., g)'s (overlapping) cells of an h x v window: [floor(i h / g), ceil((i + 1) h / g))
        g = pool or self.pool
        cells = [(i * h // g, -(-(i + 1) * h // g), j * v // g, -(-(j + 1) * v // g)) for i in range(g) for j in range(g)]
        out = w.new_empty(len(origins), B, C, len(cells))
        z = w.new_empty(L, C)
        for i in range(B):
            if soft:  # [max(0, d.w - alpha), max(0, -d.w - alpha)]
                torch.mm(w[i], c.T, out=z[:, :K])
                torch.neg(z[:, :K], out=z[:, K:])
                z.sub_(self.alpha).clamp_(min=0)
            else:
                torch.addmm(cc, w[i], c.T, alpha=-2.0, out=z)
                z.add_(ww[i]).clamp_(min=0).sqrt_()              # distances to the centroids
                z.sub_(z.mean(1, keepdim=True)).neg_().clamp_(min=0)  # triangle: max(0, mean_k z - z_k)
            f = z.view(rows, cols, C)
            strips = {}  # each distinct band of rows summed once (contiguous), then each cell's columns of it
            for s, (r, q) in enumerate(origins):
                for j, (a0, a1, b0, b1) in enumerate(cells):
                    if (r + a0, r + a1) not in strips:
                        strips[r + a0, r + a1] = f[r + a0:r + a1].sum(0)
                    out[s, i, :, j] = strips[r + a0, r + a1][q + b0:q + b1].sum(0) / ((a1 - a0) * (b1 - b0))
        return out.flatten(2)

    @torch.no_grad()
    def forward_shifted(self, x: torch.Tensor, shifts) -> list[torch.Tensor]:
        """``[self(view(x, shift=s)) for s in shifts]`` (:func:`memret.incremental.features.view`: translated by
        ``(dx, dy)``, reflect-padded) from ONE activation map of ``x`` reflect-padded by the largest shift: every
        patch of every translated view is a patch of the padded image, so S views cost one pass over
        ``(H + 2m - p + 1)(W + 2m - p + 1)`` positions instead of S passes over ``(H - p + 1)(W - p + 1)``."""
        shifts = [(int(dx), int(dy)) for dx, dy in shifts]
        m = max(max(abs(dx), abs(dy)) for dx, dy in shifts)
        if m >= min(x.shape[-2:]):
            raise ValueError(f"shifts {shifts} must be smaller than the {tuple(x.shape[-2:])} image")
        xp = F.pad(x, (m, m, m, m), mode="reflect") if m else x
        size = (x.shape[-2] - self.patch + 1, x.shape[-1] - self.patch + 1)
        origins = [(m - dy, m - dx) for dx, dy in shifts]
        step = max(1, (1 << 25) // ((size[0] + 2 * m) * (size[1] + 2 * m) * self.channels))
        out = torch.cat([self._pooled_windows(xp[s:s + step], origins, size) for s in range(0, len(x), step)], 1)
        return list((out - self.feat_mean) / self.feat_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, embed_dim), a few images at a time: at most ~32M distances live at once.

        Differentiable in ``x`` (the encoder contract); callers that only encode wrap it in
        ``torch.inference_mode()``, as feature extraction does."""
        positions = (x.shape[-2] - self.patch + 1) * (x.shape[-1] - self.patch + 1)
        step = max(1, (1 << 25) // (positions * self.channels))
        out = [self._pooled(x[s:s + step]) for s in range(0, len(x), step)]
        return (torch.cat(out) - self.feat_mean) / self.feat_std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, embed_dim): the pooled descriptor as the single token (the per-position map is
        :meth:`activation_map`, C wide rather than embed_dim)."""
        return self.forward(x).unsqueeze(1)
