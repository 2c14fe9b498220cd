"""Issue 12: finer pooling at full width, brought back to SLDA's size by a label-free channel PCA. Validation only.

    python experiments/issue12_pool_pca.py --encoder-kw '{"n_centroids": 1600, "encoding": "soft", "pool": 3}' \
        --dim 12800 --out runs/s12/poolpca

A g x g pooled soft encoder at 1,600 centroids is 3,200 channels x g^2 cells (28,800-d at g = 3): too wide for
SLDA's (D, D) buffers here. The channels are reduced instead: a PCA of the 3,200-d channel vectors of every
cell of the FIRST task's training images (no labels, the data the encoder was fitted on), keeping
``dim / g^2`` components, applied to every cell (pooling is linear, so this equals pooling the projected
activation map), then each output standardised on the first task. SLDA (shrinkage from held-out statistics,
as in ``run()``) is scored on the held-out training rows every issue-12 probe uses
(``issue12_ceiling.validation_rows``). One view; the features are ``run()``'s, cached in ``indices/``.
Writes ``<out>/poolpca-<order>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="kmeans_patches")
    ap.add_argument("--encoder-kw", default='{"n_centroids": 1600, "encoding": "soft", "pool": 3}')
    ap.add_argument("--dim", type=int, default=12800, help="features after the channel PCA")
    ap.add_argument("--order", type=int, default=1993)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--root", default=None)
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--shrinkages", type=float, nargs="+", default=None, help="SLDA's grid (default run()'s)")
    ap.add_argument("--scaling", nargs="+", default=["standardised"], choices=["standardised", "raw"],
                    help="the PCA outputs standardised on the first task, or kept at their variances")
    ap.add_argument("--out", default="runs/issue12/poolpca")
    args = ap.parse_args()

    import torch

    from issue12_ceiling import order_stream, validation_rows
    from memret.heads import SLDA
    from memret.incremental import TrainConfig
    from memret.incremental.run import mean_views
    from memret.persist import atomic_write

    kw = json.loads(args.encoder_kw)
    g2 = kw.get("pool", 2) ** 2
    data, ytr, stream, cache = order_stream(args.encoder, kw, args.order, root=args.root, cache_dir=args.cache_dir)
    F = mean_views(data, args.encoder, kw, stream[0], args.order, cache)[0]  # (N, C * g^2), channel-major
    C = F.shape[1] // g2
    k = args.dim // g2
    t0 = time.perf_counter()
    first = np.asarray(stream[0].train_rows)
    cells = torch.from_numpy(F[first]).view(len(first), C, g2).transpose(1, 2).reshape(-1, C).double()
    mean = cells.mean(0)
    cov = torch.cov((cells - mean).T)
    del cells
    evals, evecs = torch.linalg.eigh(cov)
    W = evecs[:, -k:].flip(1).float()  # (C, k) the top components
    kept = float(evals[-k:].sum() / evals.sum())
    Z = np.empty((len(F), k * g2), np.float32)
    for s in range(0, len(F), 4096):  # project every cell's channels: (b, C, g2) -> (b, k, g2)
        Z[s:s + 4096] = torch.einsum("bcg,ck->bkg", torch.from_numpy(F[s:s + 4096]).view(-1, C, g2), W).reshape(
            -1, k * g2).numpy()
    del F
    Z -= Z[first].mean(0)
    pca_s = time.perf_counter() - t0
    val, inner = validation_rows(len(ytr), args.order, args.holdout)
    grid = tuple(args.shrinkages or TrainConfig().slda_shrinkages)
    res = {"encoder": args.encoder, "encoder_kw": kw, "order": args.order, "channels": C, "components": k,
           "dim": int(Z.shape[1]), "variance_kept": kept, "pca_seconds": pca_s, "shrinkages": grid,
           "validation_rows": int(val.sum()), "train_rows": int((~val).sum()), "heads": {}}
    for scaling in sorted(args.scaling, key=lambda s: s != "raw"):  # raw first: standardising undoes its scale
        if scaling == "standardised":
            Z /= Z[first].std(0).clip(min=1e-3)
        else:  # one scale for all: the mean variance 1, so the grid means what it means on unit features
            Z /= np.sqrt((Z[first] ** 2).mean())
        t0 = time.perf_counter()
        head = SLDA(10, shrinkage="auto", shrinkages=grid).fit_task(Z[~val], ytr[~val], holdout=inner)
        acc = float((head.predict(Z[val]) == ytr[val]).mean())
        res["heads"][scaling] = {"validation_accuracy": acc, "shrinkage": head.shrinkage,
                                 "slda_seconds": time.perf_counter() - t0}
        print(scaling, json.dumps(res["heads"][scaling]), flush=True)
        del head
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"poolpca-{args.order}.json", lambda f: f.write(json.dumps(res, indent=2).encode()))


if __name__ == "__main__":
    main()
