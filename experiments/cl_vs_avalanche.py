"""memret's replay against Avalanche's own ``Replay`` on the same features, memory and epochs, in one run.

    python experiments/cl_vs_avalanche.py --features runs/cifar10-m2000/features.npz [--memory 2000] [--epochs 5]

Both sides train a linear classifier over the same frozen features (the run folder's
``features.npz``, e.g. from ``experiments/cifar10_cl.py``) on the same 5-task CIFAR-10
stream (iCaRL order, seed 1993), with AdamW (same lr and weight decay, constant rate),
the same batch size and epochs, and a memory of the same size filled at random
(Avalanche's ``ReplayPlugin`` default storage, memret's ``policy="random"``).
A third line runs memret's ``ExemplarMemoryPlugin`` inside Avalanche's ``Naive`` strategy.
Each side runs with every seed in ``--seeds`` (model init, shuffles, memory draws; the stream is fixed);
prints mean ± std of the final accuracy, seconds per task, and the memret/Avalanche ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default="runs/cifar10-m2000/features.npz")
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--memory", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()

    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.supervised import Naive

    from memret import ExemplarBank
    from memret.incremental import TrainConfig, make_method, make_tasks
    from memret.incremental.data import FeatureDataset as FeatureSet
    from memret.incremental.plugins import ExemplarMemoryPlugin
    from memret.incremental.streams import avalanche_benchmark

    f = np.load(args.features)
    Ftr, Fte = f["train"], f["test"]
    ytr = np.load(Path(args.data) / "train.npz")["labels"].astype(np.int64)
    yte = np.load(Path(args.data) / "test.npz")["labels"].astype(np.int64)
    D, C = Ftr.shape[1], 10

    def evaluate(scores_fn, classes):
        rows = np.flatnonzero(np.isin(yte, classes))
        s = scores_fn(Fte[rows])
        masked = np.full_like(s, -np.inf)
        masked[:, classes] = s[:, classes]
        return float((masked.argmax(1) == yte[rows]).mean())

    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:
        # ============ Avalanche: Naive + ReplayPlugin, and Naive + memret's plugin ============
        for label, plugin_fn in (("avalanche Replay", lambda: ReplayPlugin(mem_size=args.memory)),
                                 ("avalanche Naive + memret plugin",
                                  lambda: ExemplarMemoryPlugin(ExemplarBank(D, total=args.memory, policy="random",
                                                                            seed=seed)))):
            bm = avalanche_benchmark(ytr, yte, 5, 1993, train=FeatureSet(Ftr, ytr), test=FeatureSet(Fte, yte))
            torch.manual_seed(seed)
            model = nn.Linear(D, C)
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
            strat = Naive(model, opt, nn.CrossEntropyLoss(), train_mb_size=args.batch, train_epochs=args.epochs,
                          eval_mb_size=1024, plugins=[plugin_fn()], evaluator=None)
            secs, seen = [], []
            for exp in bm.train_stream:
                t0 = time.perf_counter()
                strat.train(exp)
                secs.append(time.perf_counter() - t0)
                seen += sorted(int(c) for c in exp.classes_in_this_experience)
            model.eval()
            with torch.no_grad():
                acc = evaluate(lambda X: model(torch.from_numpy(X)).numpy(), seen)
            runs.setdefault(label, []).append({"seed": seed, "last_accuracy": acc, "s_per_task": float(np.mean(secs))})

        # ============ memret replay ============
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, weight_decay=1e-4,
                          schedule="constant")
        m = make_method("replay", D, C, ExemplarBank(D, total=args.memory, policy="random", seed=seed), cfg, seed)
        secs = []
        for t in make_tasks(ytr, yte, 5, 1993):
            t0 = time.perf_counter()
            m.learn(t.index, Ftr[t.train_rows], ytr[t.train_rows], t.train_rows)
            secs.append(time.perf_counter() - t0)
        runs.setdefault("memret replay", []).append(
            {"seed": seed, "last_accuracy": evaluate(m.scores, m.seen), "s_per_task": float(np.mean(secs))})

    results: dict = {"runs": runs}
    for label, rs in runs.items():
        acc = np.array([r["last_accuracy"] for r in rs])
        sec = np.array([r["s_per_task"] for r in rs])
        results[label] = {"last_accuracy": float(acc.mean()), "last_accuracy_std": float(acc.std()),
                          "s_per_task": float(sec.mean())}
        print(f"{label:<34} last acc {100 * acc.mean():6.2f} ± {100 * acc.std():4.2f} (seeds {args.seeds})   "
              f"{sec.mean():6.2f} s/task")
    a, b = results["avalanche Replay"], results["memret replay"]
    results["ratio"] = {"accuracy": b["last_accuracy"] / a["last_accuracy"], "time": b["s_per_task"] / a["s_per_task"]}
    print(f"memret / Avalanche: accuracy x{results['ratio']['accuracy']:.3f}, time per task x{results['ratio']['time']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cl_vs_avalanche.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
