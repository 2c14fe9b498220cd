"""A label-free patch-dictionary encoder (Thiry, Arbel, Belilovsky & Oyallon, ICLR 2021).

The dictionary is ``n_patches`` random 6x6 patches of the training images (no
k-means), compared with every patch of an image (stride ``stride``) in
ZCA-whitened space. Each image position gets the indicator of its
``k_fraction * n_patches`` nearest dictionary patches, for the patch and for
its negation ("both signs": ``2 * n_patches`` channels); the indicators are
average-pooled over a ``grid x grid`` partition of the image and standardised:
``embed_dim = 2 * n_patches * grid**2``.

Memory stays bounded: images are encoded ``batch`` at a time and pooled inside
the encoder, so only (batch, positions, n_patches) lives at once.

Thresholds. The exact k-th smallest distance per position (``threshold="exact"``,
``torch.kthvalue`` over the dictionary, as in louity/patches) dominates the cost
on a CPU. ``threshold="moment"`` (the default) uses ``mean + z * std`` of the
position's distances to the dictionary instead: mean and variance over the
dictionary are exact and cost a 108-dimensional product (they are linear and
quadratic forms of the whitened patch), and ``z`` is calibrated at ``fit`` on
exact k-th values; the indicators agree with the exact ones on ~99% of entries
(``experiments/cifar10_analytic.py`` measures it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDictionaryEncoder(nn.Module):
    """k-nearest-patches indicator features; call :meth:`fit` once before use.

    Args:
        n_patches: dictionary size |D| (embed_dim = 2 |D| grid^2).
        patch: patch side in pixels.
        in_chans: image channels.
        k_fraction: fraction of the dictionary marked as neighbours at each position (Thiry: 0.4).
        whitening_reg: added to the patch covariance's eigenvalues before whitening (Thiry: 1e-3).
        grid: average pooling over a grid x grid partition of the positions.
        stride: stride of the patch positions (1 as Thiry et al. and Coates-Ng; 2 is ~4x cheaper).
        threshold: ``"moment"`` (calibrated mean + z std) or ``"exact"`` (k-th value per position).
        batch: images encoded at once inside ``forward`` (fewer for large images: memory stays bounded).
    """

    def __init__(self, n_patches: int = 2048, patch: int = 6, in_chans: int = 3, k_fraction: float = 0.4,
                 whitening_reg: float = 1e-3, grid: int = 2, stride: int = 1, threshold: str = "moment",
                 batch: int = 32) -> None:
        hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__", "batch")}
        super().__init__()
        self.hparams = hparams  # what the features depend on, defaults filled in (batch only bounds memory)
        if threshold not in ("moment", "exact"):
            raise ValueError(f"threshold must be 'moment' or 'exact', got {threshold!r}")
        if not 0 < k_fraction < 1:
            raise ValueError(f"k_fraction must lie in (0, 1), got {k_fraction}")
        p = patch * patch * in_chans
        self.patch, self.n_patches, self.k_fraction, self.whitening_reg = patch, n_patches, k_fraction, whitening_reg
        self.grid, self.stride, self.threshold, self.batch = grid, stride, threshold, batch
        self.k = max(1, int(k_fraction * n_patches))
        self.embed_dim = 2 * n_patches * grid * grid
        self.register_buffer("whiten", torch.eye(p))                 # (P, P)
        self.register_buffer("atoms", torch.zeros(n_patches, p))     # (D, P) whitened dictionary
        self.register_buffer("bias", torch.zeros(n_patches))         # (D,) |w_d|^2 / 2
        self.register_buffer("atom_mean", torch.zeros(p))            # mean_d w_d
        self.register_buffer("atom_cov", torch.zeros(p, p))          # cov_d w_d
        self.register_buffer("bias_cov", torch.zeros(p))             # cov_d(b_d, w_d)
        self.register_buffer("z", torch.zeros(2))                    # calibrated quantile, per sign
        self.register_buffer("feat_mean", torch.zeros(self.embed_dim))
        self.register_buffer("feat_std", torch.ones(self.embed_dim))
        self.register_buffer("fitted", torch.tensor(False))

    # ============ fitting (no labels) ============
    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, P) raw patches at stride ``stride``."""
        return F.unfold(x, self.patch, stride=self.stride).transpose(1, 2)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, seed: int = 0, n_whitening: int = 200_000,
            n_standardise: int = 2000) -> "PatchDictionaryEncoder":
        """Whitening, dictionary, threshold calibration and feature standardisation from (N, C, H, W) images.

        Args:
            images: the images the encoder may see (memret.incremental: the first task's only).
            seed: draws the dictionary patches and the whitening sample.
            n_whitening: patches used for the whitening covariance.
            n_standardise: images (a seeded subset) whose features give the standardisation.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        g = torch.Generator().manual_seed(seed)
        n = len(images)
        # ---- whitening: covariance of a random sample of patches (distances are mean-invariant)
        per_img = max(1, n_whitening // n)
        sample = []
        for s in range(0, n, 256):
            pats = self._patches(images[s:s + 256])
            pick = torch.randint(0, pats.shape[1], (len(pats), per_img), generator=g)
            sample.append(torch.gather(pats, 1, pick.unsqueeze(-1).expand(-1, -1, pats.shape[2])).flatten(0, 1))
        sample = torch.cat(sample).double()
        evals, evecs = torch.linalg.eigh(torch.cov(sample.T))
        self.whiten.copy_((evecs @ torch.diag(1.0 / torch.sqrt(evals.clamp(min=0) + self.whitening_reg))).float())
        # ---- dictionary: random training patches, whitened
        L = self._patches(images[:1]).shape[1]
        if self.n_patches > n * L:
            raise ValueError(f"{self.n_patches} dictionary patches asked of {n} images with {L} positions each")
        flat = torch.randperm(n * L, generator=g)[:self.n_patches]  # distinct patches: no duplicate atoms
        img, pos = flat // L, flat % L
        # one unfold per image drawn from, copies out of it: a view per atom would keep every image's whole
        # (L, P) patch tensor alive (1,024 x 20 MB at 224 px, stride 1)
        atoms = torch.empty(self.n_patches, self._patches(images[:1]).shape[2])
        for i in img.unique():
            sel = img == i
            atoms[sel] = self._patches(images[int(i):int(i) + 1])[0, pos[sel]]
        w = (atoms.double() @ self.whiten.double())
        self.atoms.copy_(w.float())
        b = 0.5 * (w ** 2).sum(1)
        self.bias.copy_(b.float())
        self.atom_mean.copy_(w.mean(0).float())
        wc = w - w.mean(0)
        self.atom_cov.copy_((wc.T @ wc / self.n_patches).float())
        self.bias_cov.copy_(((b - b.mean()) @ wc / self.n_patches).float())
        self.fitted.fill_(True)
        # ---- threshold calibration: the standardised exact k-th value, averaged over sampled positions
        cal = images[torch.randperm(n, generator=g)[:min(n, 256)]]
        n_cal = max(1, min(64, (1 << 25) // (L * 2 * self.n_patches)))  # 64 CIFAR images; fewer large ones
        v = -self._values(self._whitened(cal[:n_cal]))  # (B, L, 2, D) distances, up to a per-position constant
        kth = v.kthvalue(self.k + 1, dim=-1).values
        self.z.copy_(((kth - v.mean(-1)) / v.std(-1, unbiased=False).clamp(min=1e-12)).mean((0, 1)))
        # ---- standardisation of the pooled features
        sub = images[torch.randperm(n, generator=g)[:min(n, n_standardise)].sort().values]
        feats = torch.cat([self._pooled(sub[s:s + self.batch]) for s in range(0, len(sub), self.batch)])
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp(min=1e-3))
        return self

    # ============ encoding ============
    def _whitened(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("PatchDictionaryEncoder is not fitted: call fit(images) first")
        return self._patches(x) @ self.whiten  # (B, L, P)

    def _values(self, wx: torch.Tensor) -> torch.Tensor:
        """(B, L, 2, D) negated half squared distances (plus |wx|^2/2) to each atom and to its negation.

        One product with the augmented atoms ``[+-w_d, -b_d]``: ``<wx, +-w_d> - |w_d|^2 / 2``; larger is nearer.
        """
        aug = torch.cat([self.atoms, -self.bias[:, None]], 1)          # (D, P + 1)
        aug = torch.cat([aug, aug * torch.tensor([-1.0] * self.atoms.shape[1] + [1.0])])  # (2D, P + 1)
        out = torch.cat([wx, wx.new_ones(*wx.shape[:-1], 1)], -1) @ aug.T
        return out.view(*wx.shape[:-1], 2, self.n_patches)

    def _moments(self, wx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Mean and std over the dictionary of both value tensors, from (B, L, P) whitened patches."""
        m_dot = wx @ self.atom_mean                                    # mean_d <wx, w_d>
        v_dot = ((wx @ self.atom_cov) * wx).sum(-1)                   # var_d <wx, w_d>
        c = wx @ self.bias_cov                                         # cov_d(b_d, <wx, w_d>)
        m_b, v_b = self.bias.mean(), self.bias.var(unbiased=False)
        s1 = (v_b + v_dot - 2 * c).clamp(min=0).sqrt()
        s2 = (v_b + v_dot + 2 * c).clamp(min=0).sqrt()
        return m_b - m_dot, s1, m_b + m_dot, s2

    def _thresholds(self, wx: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """(B, L, 2, 1) thresholds on the negated distances ``s``: the k nearest are those above."""
        if self.threshold == "exact":
            return -(-s).kthvalue(self.k + 1, dim=-1, keepdim=True).values
        m1, s1, m2, s2 = self._moments(wx)
        t = torch.stack([m1 + self.z[0] * s1, m2 + self.z[1] * s2], -1)   # (B, L, 2) on the distances
        return -t.unsqueeze(-1)

    def indicators(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, 2, D) bool: atom d (sign 0) or its negation (sign 1) is among the k nearest of the position."""
        wx = self._whitened(x)
        s = self._values(wx)
        return s > self._thresholds(wx, s)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2 * grid^2 * D): indicators averaged over each cell of a grid x grid partition of the positions."""
        ind = self.indicators(x)
        side = int(round(ind.shape[1] ** 0.5))
        ind = ind.view(len(x), side, side, 2, self.n_patches)
        cuts = [(i * side) // self.grid for i in range(self.grid + 1)]
        cells = [ind[:, cuts[i]:cuts[i + 1], cuts[j]:cuts[j + 1]].sum((1, 2), dtype=torch.float32)
                 / ((cuts[i + 1] - cuts[i]) * (cuts[j + 1] - cuts[j]))
                 for i in range(self.grid) for j in range(self.grid)]           # each (B, 2, D)
        return torch.stack(cells, 2).flatten(1)                                 # (B, 2, grid^2, D)

    def _chunk(self, x: torch.Tensor) -> int:
        """Images per inner step: at most ``batch``, and at most ~64M distance entries (large images)."""
        positions = ((x.shape[-2] - self.patch) // self.stride + 1) * ((x.shape[-1] - self.patch) // self.stride + 1)
        return max(1, min(self.batch, (1 << 26) // (positions * 2 * self.n_patches)))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, embed_dim) standardised pooled indicators, a few images at a time."""
        step = self._chunk(x)
        out = [self._pooled(x[s:s + step]) for s in range(0, len(x), step)]
        return (torch.cat(out) - self.feat_mean) / self.feat_std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, embed_dim): the pooled descriptor as the single token."""
        return self.forward(x).unsqueeze(1)
