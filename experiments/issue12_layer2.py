"""Issue 12, the one encoder lever not read: a second label-free layer over the first one's activation maps
(Coates & Ng, NIPS 2011, "Selecting receptive fields in deep networks": k-means again, on the pooled maps of
the first layer). Read on validation (the held-out training rows of every issue-12 probe), never the test set.

    python experiments/issue12_layer2.py --out runs/s13/layer2

Layer 1 is ``run()``'s encoder for class order ``--order`` (``kmeans_patches``, soft threshold, 1,600
centroids: 3,200 channels on the 27 x 27 map of a 32-pixel image), fitted as ``run()`` fits it on the first
task's training images; its one-view features are read from ``run()``'s cache in ``indices/``. Layer 2, fitted
on the same first-task images only, no labels:

1. the layer-1 map average-pooled over 3 x 3 cells (9 x 9 positions), its channels reduced by a PCA and whitened
   (``--rank`` components; the PCA of the first task's pooled channel vectors);
2. ``--rf`` x ``--rf`` patches of that map (7 x 7 positions for 3), ZCA-whitened, a spherical k-means of
   ``--k2`` centroids, the soft threshold ``alpha`` of the projections, both polarities;
3. average pooling over four cells (the quadrants of ``adaptive_avg_pool2d(., 2)``; on 7 x 7 positions they
   share the middle row and column), standardised on the first task: ``8 k2`` features.

Heads: SLDA (shrinkage from held-out statistics, as in ``run()``) on layer 1 alone, layer 2 alone, their scores
summed (layer 2 weighted by each ``--weights``), and their concatenation when ``--concat``.
``--mirror`` and ``--shift`` read both layers on the mean of ``run()``'s views. Writes
``<out>/layer2-<order>[-mirror][-shift<s>][-library].json``.

``--library`` reads both layers from ``run()``'s caches of the library's ``kmeans_patches`` with ``layers=2`` (the
built-in version of this probe's layer 2) instead of fitting the probe's; the heads are the same.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class SecondLayer:
    """Label-free second layer over a fitted ``PatchKMeansEncoder``'s activation maps."""

    def __init__(self, l1, rank: int = 64, rf: int = 3, k2: int = 800, alpha: float = 0.25, eps_pca: float = 1e-2,
                 eps_zca: float = 0.1, cell: int = 3) -> None:
        self.l1, self.rank, self.rf, self.k2, self.alpha = l1, rank, rf, k2, alpha
        self.eps_pca, self.eps_zca, self.cell = eps_pca, eps_zca, cell

    @torch.no_grad()
    def pooled_maps(self, x: torch.Tensor, project: bool = True) -> torch.Tensor:
        """(B, s, s, rank) PCA-whitened (``project``) or (B, s, s, C) raw cell-pooled layer-1 maps."""
        return self.shifted_maps(x, [(0, 0)], project)[0]

    @torch.no_grad()
    def shifted_maps(self, x: torch.Tensor, shifts, project: bool = True) -> list[torch.Tensor]:
        """:meth:`pooled_maps` of ``view(x, shift=d)`` for each ``d`` in ``shifts``, from ONE layer-1 map of ``x``
        reflect-padded by the largest shift (every patch of a translated view is a patch of the padded image, as
        in ``PatchKMeansEncoder.forward_shifted``); the cells are ``_pooled_windows``' adaptive-pooling ones."""
        l1 = self.l1
        m = max(max(abs(dx), abs(dy)) for dx, dy in shifts)
        xp = F.pad(x, (m, m, m, m), mode="reflect") if m else x
        size = (x.shape[-2] - l1.patch + 1, x.shape[-1] - l1.patch + 1)
        s = size[0] // self.cell
        pooled = l1._pooled_windows(xp, [(m - dy, m - dx) for dx, dy in shifts], size, pool=s)  # (S, B, C s s)
        maps = pooled.view(len(shifts), len(x), l1.channels, s, s).permute(0, 1, 3, 4, 2)  # (S, B, s, s, C)
        return list((maps - self.mean1) @ self.P) if project else list(maps)

    def _patches(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, s, s, r) -> (B, L2, rf * rf * r) patches of the reduced map."""
        x = maps.permute(0, 3, 1, 2)
        return F.unfold(x, self.rf).transpose(1, 2)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, seed: int = 0, n_patches: int = 100_000, batch: int = 64) -> "SecondLayer":
        import faiss

        C = self.l1.channels
        S = torch.zeros(C, C, dtype=torch.float64)
        m = torch.zeros(C, dtype=torch.float64)
        n = 0
        for s in range(0, len(images), batch):
            p = self.pooled_maps(images[s:s + batch], project=False).reshape(-1, C).double()
            S += p.T @ p
            m += p.sum(0)
            n += len(p)
        m /= n
        cov = S / n - torch.outer(m, m)
        lam, V = torch.linalg.eigh(cov)
        lam, V = lam.flip(0)[:self.rank], V.flip(1)[:, :self.rank]
        self.mean1 = m.float()
        self.P = (V / torch.sqrt(lam.clamp(min=0) + self.eps_pca * lam[0])).float()  # (C, rank)
        self.pca_variance = float(lam.sum() / torch.diagonal(cov).sum())
        maps = torch.cat([self.pooled_maps(images[s:s + batch]) for s in range(0, len(images), batch)])
        pats = self._patches(maps)  # (N, L2, P2)
        g = torch.Generator().manual_seed(seed)
        per = max(1, n_patches // len(images))
        pick = torch.randint(0, pats.shape[1], (len(images), per), generator=g)
        sample = torch.gather(pats, 1, pick.unsqueeze(-1).expand(-1, -1, pats.shape[2])).reshape(-1, pats.shape[2])
        self.mean2 = sample.mean(0)
        lam2, V2 = torch.linalg.eigh(torch.cov((sample - self.mean2).T).double())
        self.whiten2 = (V2 @ torch.diag(1 / torch.sqrt(lam2.clamp(min=0) + self.eps_zca)) @ V2.T).float()
        white = ((sample - self.mean2) @ self.whiten2).numpy()
        km = faiss.Kmeans(white.shape[1], self.k2, niter=20, seed=seed, verbose=False, spherical=True)
        km.train(np.ascontiguousarray(white, dtype=np.float32))
        c = torch.from_numpy(km.centroids)
        self.centroids2 = c / c.norm(dim=1, keepdim=True).clamp(min=1e-8)
        f = torch.cat([self.encode_maps(maps[s:s + batch], standardise=False) for s in range(0, len(maps), batch)])
        self.feat_mean, self.feat_std = f.mean(0), f.std(0).clamp(min=1e-3)
        return self

    @torch.no_grad()
    def encode_maps(self, maps: torch.Tensor, standardise: bool = True) -> torch.Tensor:
        """(B, s, s, rank) reduced maps -> (B, 8 k2) layer-2 features."""
        w = (self._patches(maps) - self.mean2) @ self.whiten2  # (B, L2, P2)
        z = w @ self.centroids2.T
        a = torch.cat([torch.relu(z - self.alpha), torch.relu(-z - self.alpha)], -1)  # (B, L2, 2 k2)
        side = int(round(a.shape[1] ** 0.5))
        a = a.transpose(1, 2).reshape(len(a), -1, side, side)
        f = F.adaptive_avg_pool2d(a, 2).flatten(1)
        return (f - self.feat_mean) / self.feat_std if standardise else f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder-kw", default='{"n_centroids": 1600, "encoding": "soft"}')
    ap.add_argument("--order", type=int, default=1993)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--rf", type=int, default=3)
    ap.add_argument("--k2", type=int, default=800, help="the probe's layer-2 centroids (--library reads the "
                    "encoder's own, l2_centroids in --encoder-kw)")
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--concat", action="store_true")
    ap.add_argument("--shift", type=int, default=0, help="with --mirror: the six views of run()'s "
                    "mirror_views + shift_views (layer 1's mean read from run()'s caches)")
    ap.add_argument("--mirror", action="store_true", help="both layers on the mean of the image's and its mirror's "
                    "features (TrainConfig.mirror_views); layer 1's mirrored view read from run()'s cache")
    ap.add_argument("--library", action="store_true", help="read both layers from run()'s caches of the library's "
                    "kmeans_patches with layers=2 (--encoder-kw plus layers 2) instead of fitting this probe's layer 2")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--root", default=None)
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--out", default="runs/issue12/layer2")
    args = ap.parse_args()

    from issue12_ceiling import order_stream, validation_rows
    from memret.heads import SLDA
    from memret.incremental import TrainConfig
    from memret.incremental.features import batches, build_encoder, encoder_blocks, label_free_fit_images, view
    from memret.incremental.views import _view_axes, _view_keys, mean_views
    from memret.persist import atomic_write
    from tqdm import tqdm

    kw = json.loads(args.encoder_kw)
    enc = "kmeans_patches"
    if args.library:  # the library's two-layer encoder, as run() cached it: layer 1's block, then layer 2's
        kw = {**kw, "layers": 2}
    data, ytr, stream, cache = order_stream(enc, kw, args.order, root=args.root, cache_dir=args.cache_dir)
    flips, shifts = _view_axes(args.mirror, args.shift)  # run()'s views
    # layer 1: the views' mean as run() makes it, read once from its caches (one view: the cached array itself)
    X1 = mean_views(data, enc, kw, stream[0], args.order, cache, mirror=args.mirror, shift=args.shift)[0]
    if args.library:  # split where the encoder's own blocks do (its l2_centroids, not --k2)
        width = encoder_blocks(enc, kw)[0]
        X1, X2 = X1[:, :width], X1[:, width:]
        layer, drift, fit_s, enc_s = None, 0.0, 0.0, 0.0
    else:
        t0 = time.perf_counter()
        l1, _ = build_encoder(enc, data, stream[0], kw, args.order)  # as run() fits it
        imgs = label_free_fit_images(data, stream[0], args.order)  # the images it was fitted on
        probe = np.arange(16)
        with torch.inference_mode():
            x = torch.cat(list(batches(data.train, probe, 16)))
            keys = _view_keys(args.mirror, args.shift)
            mine = sum(l1(view(x, flip=f, shift=d)) for f, d in keys) / len(keys)
            drift = float((mine - torch.from_numpy(np.asarray(X1[probe]))).abs().max())
        print(f"layer 1 refitted ({time.perf_counter() - t0:.0f}s); max difference to the cached features {drift:.2e}",
              flush=True)
        t0 = time.perf_counter()
        layer = SecondLayer(l1, rank=args.rank, rf=args.rf, k2=args.k2, alpha=args.alpha).fit(imgs, seed=args.order)
        fit_s = time.perf_counter() - t0
        print(f"layer 2 fitted ({fit_s:.0f}s); PCA keeps {100 * layer.pca_variance:.1f}% of the channel variance",
              flush=True)
        t0 = time.perf_counter()
        X2 = np.zeros((len(ytr), 8 * args.k2), np.float32)
        step = 256
        for flip in flips:
            for s in tqdm(range(0, len(ytr), step), desc="layer 2" + " (mirrored)" * flip):
                x = torch.cat(list(batches(data.train, np.arange(s, min(s + step, len(ytr))), step)))
                for maps in layer.shifted_maps(view(x, flip=flip), shifts):
                    X2[s:s + len(x)] += layer.encode_maps(maps).numpy()
        X2 /= len(keys)  # the views' mean, as layer 1's
        enc_s = time.perf_counter() - t0
    val, inner = validation_rows(len(ytr), args.order, args.holdout)
    yf, yv = ytr[~val], ytr[val]
    grid = TrainConfig().slda_shrinkages
    res = {"order": args.order, "encoder_kw": kw, "mirror": args.mirror, "shift": args.shift, "rank": args.rank,
           "rf": args.rf, "k2": X2.shape[1] // 8, "alpha": args.alpha,
           "pca_variance": layer.pca_variance if layer else None, "library": args.library,
           "layer1_drift": drift, "fit_seconds": fit_s,
           "layer2_encode_seconds_train": enc_s, "heads": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (f"layer2-{args.order}{'-mirror' * args.mirror}{f'-shift{args.shift}' * bool(args.shift)}"
                  f"{'-library' * args.library}.json")

    def save() -> None:
        atomic_write(path, lambda f: f.write(json.dumps(res, indent=2).encode()))

    sc = {}
    for name, X in (("layer 2", X2), ("layer 1", X1)):
        t0 = time.perf_counter()
        head = SLDA(10, shrinkage="auto", shrinkages=grid).fit_task(X[~val], yf, holdout=inner)
        sc[name] = head.scores(X[val])
        acc = float((sc[name].argmax(1) == yv).mean())
        res["heads"][name] = {"validation_accuracy": acc, "shrinkage": head.shrinkage, "dim": int(X.shape[1]),
                              "seconds": time.perf_counter() - t0}
        print(f"{name}: SLDA {100 * acc:.2f} (shrinkage {head.shrinkage:g}, {X.shape[1]}-d, "
              f"{time.perf_counter() - t0:.0f}s)", flush=True)
        del head
        save()
    for wgt in args.weights:
        acc = float(((sc["layer 1"] + wgt * sc["layer 2"]).argmax(1) == yv).mean())
        res["heads"][f"scores summed, layer 2 x {wgt:g}"] = {"validation_accuracy": acc}
        print(f"scores summed, layer 2 x {wgt:g}: {100 * acc:.2f}", flush=True)
    save()
    if args.concat:
        t0 = time.perf_counter()
        Xc = np.concatenate([np.asarray(X1[~val]), X2[~val]], 1)
        head = SLDA(10, shrinkage="auto", shrinkages=grid).fit_task(Xc, yf, holdout=inner)
        del Xc
        acc = float((head.predict(np.concatenate([np.asarray(X1[val]), X2[val]], 1)) == yv).mean())
        res["heads"]["concatenated"] = {"validation_accuracy": acc, "shrinkage": head.shrinkage,
                                        "seconds": time.perf_counter() - t0}
        print(f"concatenated: SLDA {100 * acc:.2f} (shrinkage {head.shrinkage:g})", flush=True)
        save()


if __name__ == "__main__":
    main()
