"""memret's SLDA vs Avalanche's StreamingLDA on the same frozen features, side by side in one process.

    python experiments/slda_vs_avalanche.py --features runs/analytic/features-1993-1024-2-2.npz --out runs/analytic

Features: a cached (train, test) pair written by ``experiments/cifar10_analytic.py stream``
(the patch encoder fitted on the first task of class order 1993), mapped by one seeded
Gaussian projection to ``--dim`` dimensions (Avalanche updates its covariance sample by
sample in Python, which at thousands of dimensions costs hours). Both learners get the same
projected features, the same Avalanche stream (5 tasks, class order 1993) and the same
shrinkage; accuracy on the test images of all classes seen is computed by one function for
both. Writes ``<out>/slda_vs_avalanche.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from memret.heads import SLDA
from memret.incremental import make_tasks
from memret.persist import atomic_write


def _accuracy(scores: np.ndarray, y: np.ndarray, seen: list[int]) -> float:
    masked = np.full_like(scores, -np.inf)
    masked[:, seen] = scores[:, seen]
    return float((masked.argmax(1) == y).mean())


def run_memret(Xtr, ytr, Xte, yte, tasks, shrinkage: float) -> dict:
    head, secs, acc, seen = SLDA(10, shrinkage=shrinkage), [], [], []
    for task in tasks:
        t0 = time.perf_counter()
        head.fit_task(Xtr[task.train_rows], ytr[task.train_rows])
        head.scores(Xte[:1])  # the solve happens in fit_task; keep the timing comparable with Avalanche's
        secs.append(time.perf_counter() - t0)
        seen += list(task.classes)
        rows = np.flatnonzero(np.isin(yte, seen))
        acc.append(_accuracy(head.scores(Xte[rows]), yte[rows], seen))
    return {"seconds_per_task": secs, "seen_accuracy": acc}


def run_avalanche(Xtr, ytr, Xte, yte, tasks, shrinkage: float, seed: int) -> dict:
    from avalanche.training import StreamingLDA
    from avalanche.training.plugins import EvaluationPlugin

    from memret.incremental import avalanche_benchmark
    from memret.incremental.data import FeatureDataset

    bm = avalanche_benchmark(ytr, yte, len(tasks), seed, train=FeatureDataset(Xtr, ytr), test=FeatureDataset(Xte, yte))
    strategy = StreamingLDA(slda_model=torch.nn.Identity(), criterion=torch.nn.CrossEntropyLoss(),
                            input_size=Xtr.shape[1], num_classes=10, shrinkage_param=shrinkage,
                            train_mb_size=256, eval_mb_size=1024, evaluator=EvaluationPlugin(loggers=[]))
    secs, acc, seen = [], [], []
    for exp, task in zip(bm.train_stream, tasks):
        t0 = time.perf_counter()
        strategy.train(exp)
        with torch.no_grad():
            strategy.predict(torch.from_numpy(Xte[:1]))  # Avalanche inverts the covariance lazily, at predict
        secs.append(time.perf_counter() - t0)
        seen += list(task.classes)
        rows = np.flatnonzero(np.isin(yte, seen))
        with torch.no_grad():
            scores = strategy.predict(torch.from_numpy(Xte[rows])).numpy()
        acc.append(_accuracy(scores, yte[rows], seen))
    return {"seconds_per_task": secs, "seen_accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, help="npz with train/test features (cifar10_analytic.py stream)")
    ap.add_argument("--root", default="../shared/data/cifar10")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shrinkage", type=float, default=1e-4, help="both learners (Avalanche's default)")
    ap.add_argument("--seed", type=int, default=1993, help="class order (must match the features' encoder fit)")
    ap.add_argument("--out", default="runs/analytic")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MEMRET_THREADS", 2)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from memret.incremental import load_dataset

    data = load_dataset("cifar10", root=args.root)
    ytr, yte = np.asarray(data.train.targets), np.asarray(data.test.targets)
    z = np.load(args.features)
    g = torch.Generator().manual_seed(0)
    P = torch.randn(z["train"].shape[1], args.dim, generator=g) / np.sqrt(args.dim)
    Xtr = (torch.from_numpy(z["train"].astype(np.float32)) @ P).numpy()
    Xte = (torch.from_numpy(z["test"].astype(np.float32)) @ P).numpy()
    tasks = make_tasks(ytr, yte, 5, args.seed)
    res = {"dim": args.dim, "shrinkage": args.shrinkage, "features": args.features,
           "memret": run_memret(Xtr, ytr, Xte, yte, tasks, args.shrinkage),
           "avalanche": run_avalanche(Xtr, ytr, Xte, yte, tasks, args.shrinkage, args.seed)}
    for k in ("memret", "avalanche"):
        r = res[k]
        print(f"{k:<10} last {100 * r['seen_accuracy'][-1]:.2f}%  s/task {np.mean(r['seconds_per_task']):.2f}")
    res["speedup"] = float(np.mean(res["avalanche"]["seconds_per_task"]) / np.mean(res["memret"]["seconds_per_task"]))
    print(f"memret is x{res['speedup']:.1f} faster per task")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.out) / "slda_vs_avalanche.json",
                 lambda f: f.write(json.dumps(res, indent=2).encode()))


if __name__ == "__main__":
    main()
