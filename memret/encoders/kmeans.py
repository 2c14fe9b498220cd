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

``layers=2`` adds a second label-free layer over the first one's activation map (Coates & Ng, NIPS 2011,
"Selecting receptive fields in deep networks"), fitted on the same images, no labels: the map is averaged over
``l2_cell`` x ``l2_cell`` cells (9 x 9 cells of a 27 x 27 map), its channels reduced by a whitened PCA to
``l2_rank``, then ``l2_patch`` x ``l2_patch`` patches of it are ZCA-whitened and soft-thresholded (``alpha``, both
polarities) against a spherical k-means dictionary of ``l2_centroids`` (1,600 by default, chosen over 800 on a
validation split: RESULTS.md 10.15), sum-pooled over the same ``pool`` grid and standardised. The output is layer
1's features then layer 2's, ``feature_blocks = (layer 1, 2 * pool**2 * l2_centroids)``: a head that treats the
blocks apart (``memret.heads.BlockSLDA``, one LDA per block) gains where one over the concatenation does not
(experiments/RESULTS.md, 10.13-10.14). Layer 2 is made inside layer 1's pass (the cell means of every translated
view come from the one activation map ``forward_shifted`` pools); with 800 centroids it cost ~0.7-0.9x layer 1 at
32 px (RESULTS.md 10.14); a whole six-view ``run()`` on Split CIFAR-10 took 39-42 min with 1,600 against 31-32 with
800 (10.15). It is meant for small images: at 224 px layer 1's map has 73 x 73 cells of 3, whose reduced maps for
the 10,000 fit images alone are 14 GB.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _zca_kmeans(sample: torch.Tensor, eps: float, k: int, seed: int, niter: int,
                spherical: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, ZCA matrix, centroids)`` of (N, P) patches: ZCA whitening with ``eps`` added to the covariance's
    eigenvalues, then FAISS's k-means of ``k`` centroids on the whitened patches (``spherical``: unit centroids)."""
    import faiss

    mean = sample.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((sample - mean).T))
    whiten = evecs @ torch.diag(1.0 / torch.sqrt(evals.clamp(min=0) + eps)) @ evecs.T
    white = ((sample - mean) @ whiten).numpy().astype(np.float32)
    km = faiss.Kmeans(white.shape[1], k, niter=niter, seed=seed, verbose=False, spherical=spherical)
    km.train(white)
    return mean, whiten, torch.from_numpy(km.centroids)


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
        layers: 1, or 2 for the second layer (see the module docstring; its keywords are ``l2_*``).
        l2_centroids, l2_rank, l2_patch, l2_cell: layer 2's dictionary size, PCA rank, patch side (in cells) and
            cell side (in positions of layer 1's map).
        l2_eps_pca: the PCA's whitening regulariser, relative to its largest eigenvalue (layer 2's ZCA uses
            ``eps_zca``, as layer 1's). Layer 2 reads either encoding's map; it was measured over the soft one.
    """

    def __init__(self, n_centroids: int = 400, patch: int = 6, in_chans: int = 3, eps_norm: float = 0.01,
                 eps_zca: float = 0.1, fit_patches: int = 100_000, encoding: str = "triangle",
                 alpha: float = 0.25, pool: int = 2, layers: int = 1, l2_centroids: int = 1600, l2_rank: int = 64,
                 l2_patch: int = 3, l2_cell: int = 3, l2_eps_pca: float = 1e-2) -> None:
        hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        # what the features depend on (defaults filled in; layer 2's keywords only with layers=2): feature caches
        # key on it (memret.incremental.features.resolved_encoder_kw)
        self.hparams = {k: v for k, v in hparams.items() if layers == 2 or not k.startswith("l2_")}
        if encoding not in ("triangle", "soft"):
            raise ValueError(f"encoding must be 'triangle' or 'soft', got {encoding!r}")
        if int(pool) != pool or pool < 1:
            raise ValueError(f"pool must be a positive int, got {pool!r}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers not in (1, 2):
            raise ValueError(f"layers must be 1 or 2, got {layers!r}")
        for name, v in (("l2_centroids", l2_centroids), ("l2_rank", l2_rank), ("l2_patch", l2_patch),
                        ("l2_cell", l2_cell)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if layers == 2 and l2_rank > n_centroids * (2 if encoding == "soft" else 1):
            raise ValueError(f"l2_rank ({l2_rank}) must not exceed layer 1's {n_centroids} (soft: twice) channels")
        if not l2_eps_pca > 0:
            raise ValueError(f"l2_eps_pca must be > 0, got {l2_eps_pca!r}")
        p = patch * patch * in_chans
        self.pool = int(pool)
        self.patch, self.n_centroids, self.eps_norm, self.eps_zca = patch, n_centroids, eps_norm, eps_zca
        self.fit_patches = int(fit_patches)
        self.encoding, self.alpha = encoding, float(alpha)
        self.channels = n_centroids * (2 if encoding == "soft" else 1)
        self.layers = int(layers)
        self.feature_blocks: tuple[int, ...] = (self.pool ** 2 * self.channels,)
        self.register_buffer("mean", torch.zeros(p))
        self.register_buffer("whiten", torch.eye(p))
        self.register_buffer("centroids", torch.zeros(n_centroids, p))
        if self.layers == 2:
            self.l2_centroids, self.l2_rank, self.l2_patch = int(l2_centroids), int(l2_rank), int(l2_patch)
            self.l2_cell, self.l2_eps_pca = int(l2_cell), float(l2_eps_pca)
            p2 = self.l2_patch ** 2 * self.l2_rank
            self.feature_blocks += (self.pool ** 2 * 2 * self.l2_centroids,)
            self.register_buffer("l2_mean", torch.zeros(self.channels))           # layer 1's cell mean
            self.register_buffer("l2_proj", torch.zeros(self.channels, self.l2_rank))  # whitened PCA
            self.register_buffer("l2_weight", torch.zeros(p2, self.l2_centroids))  # ZCA @ unit centroids^T
            self.register_buffer("l2_bias", torch.zeros(self.l2_centroids))        # -patch mean @ l2_weight
        self.embed_dim = sum(self.feature_blocks)
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
        sampled patches; default ``fit_patches``); with ``layers=2``, layer 2 too, on the same images and as many
        sampled patches of its input."""
        n_patches = n_patches or self.fit_patches
        if self.layers == 2:  # refused before anything is written
            self._check_cells(*((n - self.patch + 1) // self.l2_cell for n in images.shape[-2:]))
        g = torch.Generator().manual_seed(seed)
        per_img = max(1, n_patches // len(images))
        pats = self._patches(images)  # (N, L, P)
        pick = torch.randint(0, pats.shape[1], (len(images), per_img), generator=g)
        sample = torch.gather(pats, 1, pick.unsqueeze(-1).expand(-1, -1, pats.shape[2])).reshape(-1, pats.shape[2])
        mean, whiten, cent = _zca_kmeans(sample, self.eps_zca, self.n_centroids, seed, niter)
        self.mean.copy_(mean)
        self.whiten.copy_(whiten)
        if self.encoding == "soft":  # a dictionary of directions
            cent = cent / cent.norm(dim=1, keepdim=True).clamp(min=1e-8)
        self.centroids.copy_(cent)
        self.fitted.fill_(True)
        step = max(1, (1 << 25) // (pats.shape[1] * self.channels))
        del pats, sample
        if self.layers == 1:
            feats = torch.cat([self._pooled(images[i:i + step]) for i in range(0, len(images), step)])
        else:
            try:
                feats = self._fit_layer2(images, step, n_patches, g, seed, niter)
            except BaseException:
                self.fitted.fill_(False)  # layer 2 half-fitted: not an encoder to use
                raise
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp(min=1e-3))
        return self

    def _fit_layer2(self, images: torch.Tensor, step: int, n_patches: int, g: torch.Generator, seed: int,
                    niter: int) -> torch.Tensor:
        """Fit layer 2 (layer 1 fitted); return both layers' unstandardised features of ``images``."""
        C = self.channels
        # the whitened PCA of layer 1's cell vectors, from a seeded subset of the images (~n_patches vectors)
        rows, cols = images.shape[-2] - self.patch + 1, images.shape[-1] - self.patch + 1
        per = (rows // self.l2_cell) * (cols // self.l2_cell)
        sub = torch.randperm(len(images), generator=g)[:max(1, -(-n_patches // per))].sort().values
        V = torch.cat([self._pooled_windows(images[sub[i:i + step]], [(0, 0)], cell=self.l2_cell)[1][0]
                       for i in range(0, len(sub), step)]).reshape(-1, C)
        m = V.mean(0)
        lam, U = torch.linalg.eigh(torch.cov((V - m).T).double())
        del V
        lam, U = lam.flip(0)[:self.l2_rank], U.flip(1)[:, :self.l2_rank]
        self.l2_mean.copy_(m)
        self.l2_proj.copy_((U / torch.sqrt(lam.clamp(min=0) + self.l2_eps_pca * lam[0])).float())
        # one pass over the images: layer 1's features and the reduced maps layer 2 reads
        f1, maps = [], []
        for i in range(0, len(images), step):
            f, c = self._pooled_windows(images[i:i + step], [(0, 0)], cell=self.l2_cell)
            f1.append(f[0])
            maps.append(self._reduced(c[0]))
        maps = torch.cat(maps)
        # layer 2's ZCA and spherical k-means, on patches sampled as layer 1's
        pats = self._l2_patches(maps)
        pick = torch.randint(0, pats.shape[1], (len(maps), max(1, n_patches // len(maps))), generator=g)
        sample = torch.gather(pats, 1, pick.unsqueeze(-1).expand(-1, -1, pats.shape[2])).reshape(-1, pats.shape[2])
        mean, whiten, cent = _zca_kmeans(sample, self.eps_zca, self.l2_centroids, seed, niter, spherical=True)
        cent = cent / cent.norm(dim=1, keepdim=True).clamp(min=1e-8)
        self.l2_weight.copy_(whiten @ cent.T)  # <ZCA(p - mean), d> = p @ (ZCA d) - mean @ (ZCA d)
        self.l2_bias.copy_(-(mean @ self.l2_weight))
        f2 = torch.cat([self._layer2(maps[i:i + 256], reduced=True) for i in range(0, len(maps), 256)])
        return torch.cat([torch.cat(f1), f2], 1)

    # ============ layer 2 (layers=2) ============
    def _reduced(self, cells: torch.Tensor) -> torch.Tensor:
        """(N, s, t, C) cell means of layer 1's map -> (N, s, t, l2_rank) whitened principal components."""
        return (cells - self.l2_mean) @ self.l2_proj

    def _check_cells(self, s: int, t: int) -> None:
        if min(s, t) < self.l2_patch:
            raise ValueError(f"layer 2 needs at least {self.l2_patch} x {self.l2_patch} cells of {self.l2_cell} "
                             f"positions, got {s} x {t}: the image is too small for l2_cell={self.l2_cell}")

    def _l2_patches(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, s, t, r) reduced maps -> (N, L2, l2_patch^2 r) patches."""
        self._check_cells(*maps.shape[1:3])
        return F.unfold(maps.permute(0, 3, 1, 2), self.l2_patch).transpose(1, 2)

    def _layer2(self, cells: torch.Tensor, reduced: bool = False) -> torch.Tensor:
        """(N, s, t, C) cell means of layer 1's map (``reduced``: already :meth:`_reduced`) -> (N, feature_blocks[1])
        unstandardised layer-2 features: soft threshold of the whitened patches' projections on the unit
        centroids, both polarities, pooled over the ``pool`` grid (channel-major, as layer 1's)."""
        maps = cells if reduced else self._reduced(cells)
        s, t = maps.shape[1] - self.l2_patch + 1, maps.shape[2] - self.l2_patch + 1
        z = self._l2_patches(maps) @ self.l2_weight + self.l2_bias  # (N, L2, K2)
        a = torch.cat([torch.relu(z - self.alpha), torch.relu(-z - self.alpha)], -1)
        a = a.transpose(1, 2).reshape(len(maps), -1, s, t)
        return F.adaptive_avg_pool2d(a, self.pool).flatten(1)

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
        rows, cols = x.shape[-2] - self.patch + 1, x.shape[-1] - self.patch + 1
        f = f.transpose(1, 2).reshape(x.shape[0], -1, rows, cols)
        out = F.adaptive_avg_pool2d(f, self.pool).flatten(1)  # (B, pool^2 C); pool 2: the quadrants
        if self.layers == 1:
            return out
        cells = F.adaptive_avg_pool2d(f, (rows // self.l2_cell, cols // self.l2_cell)).permute(0, 2, 3, 1)
        return torch.cat([out, self._layer2(cells)], 1)

    def _pooled_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_pooled` without autograd, ~2x faster on a CPU (see :meth:`_pooled_windows`)."""
        return self._windows(x, [(0, 0)])[0]

    def _windows(self, x: torch.Tensor, origins, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(S, B, embed_dim) unstandardised features of S windows (:meth:`_pooled_windows`), both layers'."""
        if self.layers == 1:
            return self._pooled_windows(x, origins, size)
        f1, cells = self._pooled_windows(x, origins, size, cell=self.l2_cell)
        f2 = self._layer2(cells.flatten(0, 1)).view(len(origins), len(x), -1)
        return torch.cat([f1, f2], 2)

    def _pooled_windows(self, x: torch.Tensor, origins, size: tuple[int, int] | None = None,
                        pool: int | None = None, cell: int | None = None):
        """(S, B, pool^2 C) pooled activations of S windows of one activation map of ``x``: window s covers
        the ``size`` (rows, cols; default the whole map) positions from ``origins[s]`` (row, col), averaged over
        a ``pool`` x ``pool`` grid of cells (default ``self.pool``), channel-major (``C`` rows of ``pool^2``).
        ``cell``: also return the (S, B, h // cell, v // cell, C) means of each window's map over a grid of
        ``cell`` x ``cell`` cells (``adaptive_avg_pool2d``'s cells; a reshape and a sum when ``cell`` divides the
        window), layer 2's input.

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
        cells = [(i * h // g, -(-(i + 1) * h // g), j * v // g, -(-(j + 1) * v // g))
                 for i in range(g) for j in range(g)]
        out = w.new_empty(len(origins), B, C, len(cells))
        if cell:
            s2, t2 = h // cell, v // cell
            exact = h % cell == 0 and v % cell == 0
            grid = w.new_empty(len(origins), B, s2, t2, C)
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
                if not cell:
                    continue
                if exact:  # rows summed in bands of `cell` (contiguous), then the window's columns in groups
                    band = f[r:r + h].view(s2, cell, cols, C).sum(1)
                    torch.sum(band[:, q:q + v].reshape(s2, t2, cell, C), 2, out=grid[s, i])
                    grid[s, i].div_(cell * cell)
                else:
                    grid[s, i] = F.adaptive_avg_pool2d(f[r:r + h, q:q + v].permute(2, 0, 1), (s2, t2)).permute(1, 2, 0)
        return (out.flatten(2), grid) if cell else out.flatten(2)

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
        out = torch.cat([self._windows(xp[s:s + step], origins, size) for s in range(0, len(x), step)], 1)
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
