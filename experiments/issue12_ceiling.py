"""What a frozen label-free encoder allows at best: the analytic heads trained jointly on all classes.

    python experiments/issue12_ceiling.py --encoder kmeans_patches --encoder-kw '{"n_centroids": 1600}'
    python experiments/issue12_ceiling.py --encoder patch_dictionary --projection 0 4096
    python experiments/issue12_ceiling.py --encoder-kw '{"n_centroids": 1600}' --slda --flip --mean-only --shift 2

A class-incremental RanPAC head ends equal to the ridge head trained once on all the data (the
order-invariance test in tests/test_issue12_methods.py), so the jointly trained head is the ceiling
of ``ranpac`` on an encoder; the SLDA head is accumulated the same way. This script reads the
features exactly as :func:`memret.incremental.run` makes them (the encoder fitted without labels on
the first task of class order ``--order``; the same ``indices/`` cache, encoded here if absent),
holds out ``--holdout`` of the TRAINING rows (a hash of the row, :func:`holdout_rows`) and reports
accuracy on them: the test set is never read. Each head chooses its own hyper-parameter (ridge or
shrinkage) on a second held-out part of the remaining rows, as inside ``run()``.
Writes ``<out>/ceiling-<encoder>-<order>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def validation_rows(n: int, order: int, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """``(scored, inner)`` bool masks: the ``holdout`` fraction of the ``n`` TRAINING rows every issue-12 probe
    scores (a hash of the row, so one set for every encoder and probe, and not ``run()``'s), and, over the other
    rows, the part a head holds out to choose its own hyper-parameter, as in ``run()``."""
    from memret.incremental.analytic import holdout_rows

    rows = np.arange(n)
    scored = holdout_rows(rows, order + 1, holdout)
    return scored, holdout_rows(rows[~scored], order)


def order_stream(encoder: str, kw: dict, order: int, tasks: int = 5, root: str | None = None,
                 cache_dir: str = "indices"):
    """``(data, train labels, stream, cache file)`` of class order ``order`` on CIFAR-10: the tasks, and the feature
    cache ``run()`` reads or writes for ``encoder(**kw)`` fitted on the first task (every issue-12 probe's start)."""
    from memret.incremental import make_tasks
    from memret.incremental.data import load_dataset
    from memret.incremental.run import feature_cache_file

    data = load_dataset("cifar10", root)
    ytr = np.asarray(data.train.targets)
    cache = feature_cache_file(data, encoder, kw, tasks, order, order, cache_dir)
    return data, ytr, make_tasks(ytr, data.test.targets, tasks, order), cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="kmeans_patches")
    ap.add_argument("--encoder-kw", default="{}", help="encoder constructor arguments as JSON")
    ap.add_argument("--order", type=int, default=1993, help="class order (its first task fits the encoder)")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--projection", type=int, nargs="*", default=[0], help="RanPAC widths M (0: plain ridge)")
    ap.add_argument("--slda", action="store_true", help="also the SLDA head (shrinkage chosen on held-out rows)")
    ap.add_argument("--slda-projection", type=int, nargs="+", default=[0],
                    help="SLDA over RanPAC's random projection + ReLU of width M (0: on the features)")
    ap.add_argument("--flip", action="store_true", help="also the heads with the mirrored images' features: "
                    "added to the statistics, and scores averaged over both views (the -hflip cache; encoded if absent)")
    ap.add_argument("--shift", type=int, default=0, help="also SLDA on the mean over the views translated by "
                    "(s, s) and (-s, -s) (and their mirrors with --flip) and the others (TrainConfig.shift_views)")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of the training rows scored")
    ap.add_argument("--mean-only", action="store_true", help="with --flip: only the views' mean (TrainConfig."
                    "mirror_views), not the mirrors added to the statistics; with --shift: only SLDA on the mean "
                    "of all views, summed view by view (memory for one view, not six)")
    ap.add_argument("--power", type=float, nargs="+", default=[1.0], help="with --shift: SLDA on the views' mean "
                    "raised to each power (signed; 0.5 is the square root of power normalisation)")
    ap.add_argument("--root", default=None)
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--out", default="runs/issue12")
    args = ap.parse_args()

    from memret.heads import SLDA, RanPAC
    from memret.incremental import TrainConfig
    from memret.incremental.run import cached_views, mean_views
    from memret.persist import atomic_write

    kw = json.loads(args.encoder_kw)
    data, ytr, stream, cache = order_stream(args.encoder, kw, args.order, args.tasks, args.root, args.cache_dir)
    # as run() reads or makes them, so the caches serve later run() calls too
    if args.shift and args.mean_only:  # only the views' mean, summed view by view (bounded memory)
        everything = mean_views(data, args.encoder, kw, stream[0], args.order, cache, mirror=args.flip,
                                shift=args.shift)[0]
        X = Xm = None
        n_views = (2 if args.flip else 1) * 3
    else:
        views = cached_views(data, args.encoder, kw, stream[0], args.order, cache, mirror=args.flip, shift=args.shift)
        X, Xm = views[0][0], (views[1][0] if args.flip else None)
        everything = sum(v[0] for v in views) / len(views) if args.shift else None
        n_views = len(views)
    val, inner = validation_rows(len(ytr), args.order, args.holdout)
    yf, yv = ytr[~val], ytr[val]
    Xf, Xv = (X[~val], X[val]) if X is not None else (None, None)
    res = {"encoder": args.encoder, "encoder_kw": kw, "dim": int((X if X is not None else everything).shape[1]),
           "order": args.order,
           "train_rows": int((~val).sum()), "validation_rows": int(val.sum()), "heads": {}}
    for M in args.projection if X is not None else []:
        t0 = time.perf_counter()
        head = RanPAC(10, projection=M, seed=args.order).fit_task(Xf, yf, holdout=inner)
        acc = float((head.predict(Xv) == yv).mean())
        name = f"ridge (RanPAC M={M})" if M else "ridge (no projection)"
        res["heads"][name] = {"validation_accuracy": acc, "ridge": head.lam, "seconds": time.perf_counter() - t0}
        print(f"{name:<28} validation {100 * acc:.2f}  ridge {head.lam:.3g}  {time.perf_counter() - t0:.0f}s",
              flush=True)
    for M in args.slda_projection if args.slda and X is not None else []:
        proj = RanPAC(10, projection=M, seed=args.order)
        proj._init(X.shape[1])
        views = [X] if Xm is None else [X, Xm]
        # scaled by 1/sqrt(D): unit-order variances, so the shrinkage grid means what it means on the features
        P = [proj.project(v).numpy() / np.sqrt(X.shape[1]) for v in views] if M else views
        for flip in [False] + ([True] if Xm is not None and not args.mean_only else []):
            t0 = time.perf_counter()
            k = 2 if flip else 1
            fit_rows = Xf if k == 1 and not M else np.concatenate([p[~val] for p in P[:k]])  # no third copy
            head = SLDA(10, shrinkage="auto", shrinkages=TrainConfig().slda_shrinkages).fit_task(
                fit_rows, np.tile(yf, k), holdout=np.tile(inner, k))
            del fit_rows
            shrinkage = head.shrinkage  # chosen from held-out statistics, as in run() (run()'s grid)
            name = "slda" + (f" (projection M={M})" if M else "") + (" + mirrored" if flip else "")
            acc = float((head.predict(P[0][val]) == yv).mean())
            res["heads"][name] = {"validation_accuracy": acc, "shrinkage": shrinkage,
                                  "seconds": time.perf_counter() - t0}
            print(f"{name:<28} validation {100 * acc:.2f}  shrinkage {shrinkage:g}  {time.perf_counter() - t0:.0f}s",
                  flush=True)
            if Xm is not None and not flip:  # the mean of both views as the feature, fitted and scored
                t0 = time.perf_counter()
                A = (P[0] + P[1]) / 2
                head_m = SLDA(10, shrinkage="auto", shrinkages=TrainConfig().slda_shrinkages).fit_task(
                    A[~val], yf, holdout=inner)
                accm = float((head_m.predict(A[val]) == yv).mean())
                res["heads"][name + " on the views' mean"] = {"validation_accuracy": accm,
                                                              "shrinkage": head_m.shrinkage}
                print(f"{name + ' on the views mean':<28} validation {100 * accm:.2f}  shrinkage "
                      f"{head_m.shrinkage:g}  {time.perf_counter() - t0:.0f}s", flush=True)
            if Xm is not None:  # test-time: the mean of both views' scores
                acc2 = float((np.argmax(head.scores(P[0][val]) + head.scores(P[1][val]), 1) == yv).mean())
                res["heads"][name + ", both views scored"] = {"validation_accuracy": acc2, "shrinkage": shrinkage}
                print(f"{name + ', both views scored':<28} validation {100 * acc2:.2f}", flush=True)
    for p in args.power if everything is not None else []:  # TrainConfig.shift_views: the mean over every view
        t0 = time.perf_counter()
        F = everything if p == 1 else np.sign(everything) * np.abs(everything) ** np.float32(p)
        head = SLDA(10, shrinkage="auto", shrinkages=TrainConfig().slda_shrinkages).fit_task(F[~val], yf, holdout=inner)
        acc = float((head.predict(F[val]) == yv).mean())
        name = f"slda on the mean of {n_views} views (shift {args.shift})" + (f", power {p:g}" if p != 1 else "")
        res["heads"][name] = {"validation_accuracy": acc, "shrinkage": head.shrinkage, "power": p,
                              "seconds": time.perf_counter() - t0}
        print(f"{name:<28} validation {100 * acc:.2f}  shrinkage {head.shrinkage:g}  {time.perf_counter() - t0:.0f}s",
              flush=True)
        del F
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = ("-flip" if args.flip else "") + (f"-shift{args.shift}" if args.shift else "")
    atomic_write(out / f"ceiling-{args.encoder}-{args.order}{tag}.json", lambda f: f.write(json.dumps(res, indent=2).encode()))


if __name__ == "__main__":
    main()
