"""Does SLDA gain from the views' own scatter in its covariance? A probe on the validation split (issue 12).

    python experiments/issue12_viewcov.py --encoder-kw '{"n_centroids": 1600, "encoding": "soft"}' \
        --betas 0 0.5 1 2 --out runs/issue12/viewcov

``run(..., TrainConfig(mirror_views=True, shift_views=2))`` fits SLDA on each image's mean over six views and scores
the test images' means. Fitting on every view as its own sample keeps the class means and adds to the covariance
the views' scatter around their image's mean, ``W = mean_i (1/V) sum_v (x_iv - xbar_i)(x_iv - xbar_i)^T``: the
directions a flip or a two-pixel shift moves a feature along are down-weighted. This script fits SLDA on the
views' mean as ``run()`` does, then re-solves it with ``Sigma + beta W`` (``beta = 1``: every view a sample) for
each ``--betas``, the shrinkage chosen after each from held-out statistics as in ``run()``, and scores held-out
TRAINING rows (the same rows as ``issue12_ceiling.py``): the test set is never read. ``W`` is estimated on
``--within-images`` training images outside the scored rows. Features are the ``indices/`` caches ``run()``
and ``issue12_ceiling.py`` write (encoded here if absent). Writes ``<out>/viewcov-<encoder>-<order>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from issue12_ceiling import order_stream, validation_rows  # the scripts run from experiments/
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="kmeans_patches")
    ap.add_argument("--encoder-kw", default="{}", help="encoder constructor arguments as JSON")
    ap.add_argument("--order", type=int, default=1993, help="class order (its first task fits the encoder)")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--shift", type=int, default=2, help="TrainConfig.shift_views (with the mirror: six views)")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--within-images", type=int, default=15_000, help="training images that estimate W")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of the training rows scored")
    ap.add_argument("--root", default=None)
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--out", default="runs/issue12/viewcov")
    args = ap.parse_args()

    from memret.heads import SLDA
    from memret.incremental import TrainConfig
    from memret.incremental.views import _view_keys, _views
    from memret.persist import atomic_write

    kw = json.loads(args.encoder_kw)
    data, ytr, stream, cache = order_stream(args.encoder, kw, args.order, args.tasks, args.root, args.cache_dir)
    val, inner = validation_rows(len(ytr), args.order, args.holdout)  # issue12_ceiling.py's scored rows
    rng = np.random.default_rng(args.order)
    sub = np.sort(rng.choice(np.flatnonzero(~val), min(args.within_images, int((~val).sum())), replace=False))

    # one pass over the views: their sum, and sum_v x_v x_v^T over the W rows (float32 products, float64 sums)
    t0 = time.perf_counter()
    V = len(_view_keys(True, args.shift))
    total = second = None
    for _, (tr, _te) in _views(data, args.encoder, kw, stream[0], args.order, cache, True, "cpu", True, args.shift):
        if total is None:
            total = tr.astype(np.float32, copy=True)
            second = torch.zeros(tr.shape[1], tr.shape[1], dtype=torch.float64)
        else:
            total += tr
        xs = torch.from_numpy(np.ascontiguousarray(tr[sub]))
        for s in range(0, len(xs), 4096):
            second += (xs[s:s + 4096].T @ xs[s:s + 4096]).double()
        del tr, _te, xs
    total /= V
    xm = torch.from_numpy(np.ascontiguousarray(total[sub]))
    for s in range(0, len(xm), 4096):
        second -= V * (xm[s:s + 4096].T @ xm[s:s + 4096]).double()
    W = second / (V * len(sub))  # mean over images and views of the views' scatter around their image's mean
    del second, xm
    print(f"views read and W estimated on {len(sub)} images in {time.perf_counter() - t0:.0f}s; "
          f"trace W / D = {float(W.diagonal().mean()):.4f}", flush=True)

    t0 = time.perf_counter()
    grid = TrainConfig().slda_shrinkages
    head = SLDA(10, shrinkage="auto", shrinkages=grid).fit_task(total[~val], ytr[~val], holdout=inner)
    Xv, yv = torch.from_numpy(np.ascontiguousarray(total[val])), ytr[val]
    del total
    print(f"SLDA on the views' mean: shrinkage {head.shrinkage:g}, validation "
          f"{100 * float((head.predict(Xv.numpy()) == yv).mean()):.2f}  {time.perf_counter() - t0:.0f}s", flush=True)
    mu_f, cov_f = head._moments(head.sums, head.counts, head.second)   # the fit part (shrinkage choice)
    mu, cov = head._moments(*head._totals())                           # everything (the final discriminant)
    res = {"encoder": args.encoder, "encoder_kw": kw, "order": args.order, "views": V, "dim": int(W.shape[0]),
           "within_images": len(sub), "train_rows": int((~val).sum()), "validation_rows": int(val.sum()),
           "trace_W_over_D": float(W.diagonal().mean()), "betas": {}}
    seen = head.seen
    for beta in args.betas:
        t0 = time.perf_counter()
        errs = [head.held_out_error(s, (mu_f, cov_f + beta * W)) for s in grid]
        s_auto = grid[int(np.argmin(errs))]
        accs = {}
        i = grid.index(s_auto)
        for s in grid[max(0, i - 1):i + 2]:  # the auto choice, and its neighbours for the record
            S = (1 - s) * (cov + beta * W)
            S.diagonal().add_(s)
            P = torch.cholesky_solve(mu[seen].T.contiguous(), torch.linalg.cholesky(S))
            b = -0.5 * (mu[seen].T * P).sum(0)
            pred = np.flatnonzero(seen.numpy())[np.argmax((Xv.double() @ P + b).numpy(), 1)]
            accs[s] = float((pred == yv).mean())
            del S, P
        res["betas"][str(beta)] = {"shrinkage": s_auto, "validation_accuracy": accs[s_auto],
                                   "validation_accuracy_by_shrinkage": {str(k): v for k, v in accs.items()},
                                   "held_out_error_by_shrinkage": dict(zip(map(str, grid), errs))}
        print(f"beta {beta:g}: shrinkage {s_auto:g} (held-out statistics), validation {100 * accs[s_auto]:.2f}; "
              + ", ".join(f"{k:g}: {100 * v:.2f}" for k, v in accs.items()) + f"  {time.perf_counter() - t0:.0f}s",
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"viewcov-{args.encoder}-{args.order}.json", lambda f: f.write(json.dumps(res, indent=2).encode()))


if __name__ == "__main__":
    main()
