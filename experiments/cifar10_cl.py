"""Split CIFAR-10 (5 tasks x 2 classes): every method at memory 200 and 2,000, then an MTN ablation.

    python experiments/cifar10_cl.py --data ../shared/data/cifar10            # the comparison
    python experiments/cifar10_cl.py --data ../shared/data/cifar10 --ablation # + MTN k (5, 20) and depth (1, 4)
    python experiments/cifar10_cl.py --seed 1 --init-seed 0 --out runs/cifar10-order1  # another class order

Encoder: memret's k-means patch encoder (Coates & Ng 2011; 400 centroids, 1,600-d),
fitted without labels on the first task's images only and frozen: no outside
weights. Features are computed once and shared by every run (``indices/``).
Writes ``<out>/cifar10_cl.json``; each run folder holds its own results.json
and accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import memret.incremental as inc

METHODS = ["finetune", "joint", "replay", "icarl", "knn", "mtn"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--memories", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--ablation-points", nargs="+", default=["5,2", "10,1", "20,2", "10,4"],
                    help="k,layers pairs run besides the main run's MTN (one axis at a time around k=10, 2 layers)")
    ap.add_argument("--seed", type=int, default=1993, help="class order (iCaRL's 1993)")
    ap.add_argument("--init-seed", type=int, default=None, help="initialisation and shuffles (default: --seed)")
    ap.add_argument("--out", default="runs/cifar10")
    args = ap.parse_args()
    seeds = {"seed": args.seed, "init_seed": args.init_seed}
    out = Path(args.out)
    cfg = inc.TrainConfig(epochs=args.epochs)
    report: dict = {"config": cfg.__dict__, **seeds, "runs": {}, "ablation": {}}
    t_all = time.perf_counter()
    for mem in args.memories:
        t0 = time.perf_counter()
        res = inc.run("cifar10", tasks=5, root=args.data, method=METHODS, memory=mem, encoder="kmeans_patches",
                      config=cfg, out=out / f"m{mem}", **seeds)
        report["runs"][mem] = {m: {**r.summary, "s_per_task": sum(r.task_seconds) / len(r.task_seconds)}
                               for m, r in res.methods.items()}
        print(f"\n== CIFAR-10, 5 tasks, memory {mem}, k-means patch encoder (frozen), "
              f"{args.epochs} epochs: {time.perf_counter() - t0:.0f}s")
        print(res.table(), flush=True)
    if args.ablation:
        print("\n== MTN ablation, memory 2000: last accuracy (avg incremental)")
        base = report["runs"].get(2000, {}).get("mtn")
        if base:  # the default (k=10, 2 layers) is the main run's MTN
            report["ablation"][f"k={cfg.k},layers={cfg.mtn_layers}"] = base
            print(f"k={cfg.k:<3} layers={cfg.mtn_layers}: {100 * base['last_accuracy']:.2f} "
                  f"({100 * base['average_incremental_accuracy']:.2f})  [main run]", flush=True)
        for k, layers in (tuple(int(v) for v in p.split(",")) for p in args.ablation_points):
            c = replace(cfg, k=k, mtn_layers=layers)
            res = inc.run("cifar10", tasks=5, root=args.data, method="mtn", memory=2000,
                          encoder="kmeans_patches", config=c, out=out / f"ablation-k{k}-l{layers}", plot=False,
                          **seeds)
            s = res.methods["mtn"].summary
            report["ablation"][f"k={k},layers={layers}"] = s
            print(f"k={k:<3} layers={layers}: {100 * s['last_accuracy']:.2f} "
                  f"({100 * s['average_incremental_accuracy']:.2f})", flush=True)
    report["wall_s"] = time.perf_counter() - t_all
    (out / "cifar10_cl.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"\nwhole comparison: {report['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
