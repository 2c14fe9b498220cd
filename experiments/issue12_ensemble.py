"""Two label-free encoders, one SLDA each, their discriminant scores summed: a probe on the validation split (issue 12).

    python experiments/issue12_ensemble.py \
        --kw '{"n_centroids": 1600, "encoding": "soft"}' '{"n_centroids": 800, "encoding": "soft", "patch": 8}'

SLDA's cost grows as D^3, so one discriminant over two encoders' concatenated features (12,800 + 6,400 dimensions)
does not fit the hour on two cores; summing the scores of one SLDA per encoder is LDA with a block-diagonal
covariance (the cross-covariance between the encoders dropped) at the cost of the two heads. Each encoder is
``kmeans_patches`` fitted without labels on the first task of class order ``--order`` (as ``run()`` does, the
same ``indices/`` caches), each head fits the mean over six views (``TrainConfig(mirror_views=True,
shift_views=2)``) of the training rows outside the scored ones with its shrinkage chosen from held-out statistics
as in ``run()``; the scored rows are ``issue12_ceiling.py``'s held-out TRAINING rows: the test set is never read.
Writes ``<out>/ensemble-<order>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from issue12_ceiling import validation_rows  # the scripts run from experiments/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kw", nargs="+", required=True, help="each encoder's kmeans_patches arguments as JSON")
    ap.add_argument("--order", type=int, default=1993, help="class order (its first task fits the encoders)")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--shift", type=int, default=2, help="TrainConfig.shift_views (with the mirror: six views)")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                    help="weights of the second encoder's scores against the first's, read on validation")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of the training rows scored")
    ap.add_argument("--root", default=None)
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--out", default="runs/issue12/ensemble")
    args = ap.parse_args()

    from memret.heads import SLDA
    from memret.incremental import TrainConfig, make_tasks
    from memret.incremental.data import load_dataset
    from memret.incremental.run import feature_cache_file, mean_views
    from memret.persist import atomic_write

    data = load_dataset("cifar10", args.root)
    ytr = np.asarray(data.train.targets)
    stream = make_tasks(ytr, data.test.targets, args.tasks, args.order)
    val, inner = validation_rows(len(ytr), args.order, args.holdout)  # issue12_ceiling.py's scored rows
    yv = ytr[val]
    res = {"order": args.order, "views": 6 if args.shift else 2, "train_rows": int((~val).sum()),
           "validation_rows": int(val.sum()), "encoders": [], "sums": {}}
    scores = []
    for kw_text in args.kw:
        kw = json.loads(kw_text)
        t0 = time.perf_counter()
        cache = feature_cache_file(data, "kmeans_patches", kw, args.tasks, args.order, args.order, args.cache_dir)
        X = mean_views(data, "kmeans_patches", kw, stream[0], args.order, cache, mirror=True, shift=args.shift)[0]
        t1 = time.perf_counter()
        head = SLDA(10, shrinkage="auto", shrinkages=TrainConfig().slda_shrinkages).fit_task(
            X[~val], ytr[~val], holdout=inner)
        s = head.scores(X[val])
        del X
        s = s - s.mean(1, keepdims=True)
        scores.append(s)
        acc = float((np.argmax(s, 1) == yv).mean())
        res["encoders"].append({"kw": kw, "dim": int(head.dim), "shrinkage": head.shrinkage,
                                "validation_accuracy": acc, "features_seconds": t1 - t0,
                                "slda_seconds": time.perf_counter() - t1})
        print(f"{kw_text}: {head.dim} dims, shrinkage {head.shrinkage:g}, validation {100 * acc:.2f} "
              f"(features {t1 - t0:.0f}s, SLDA {time.perf_counter() - t1:.0f}s)", flush=True)
    for w in args.weights if len(scores) == 2 else []:
        acc = float((np.argmax(scores[0] + w * scores[1], 1) == yv).mean())
        res["sums"][str(w)] = acc
        print(f"scores summed, the second weighted {w:g}: validation {100 * acc:.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"ensemble-{args.order}.json", lambda f: f.write(json.dumps(res, indent=2).encode()))


if __name__ == "__main__":
    main()
