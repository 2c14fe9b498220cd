"""Issue 12 acceptance: every class-incremental method on one label-free encoder, 3 class orders.

    python experiments/issue12_cifar10_table.py run --order 0             # one order, every method (resumes)
    python experiments/issue12_cifar10_table.py run --order 1993 --method ranpac --out runs/issue12/timed
    python experiments/issue12_cifar10_table.py table --orders 1993 0 1   # mean +- std -> table.json, table.png
    python experiments/issue12_cifar10_table.py run --order 0 --method slda ranpac \
        --encoder kmeans_patches --encoder-kw '{"n_centroids": 1600}' --out runs/issue12/km1600

Split CIFAR-10, 5 tasks, memory 2,000 (herding), encoder ``patch_dictionary`` (1,024 whitened
patches, stride 2, 2x2 grid: 8,192 dimensions), fitted without labels on each order's first
task's training images only; ``run()`` defaults otherwise. Every method is one ``run()`` call
(``runs/issue12/order-<o>/<method>/results.json``); the encoded features are cached in
``indices/`` and shared by the calls of one order. ``--time`` records the wall time of the call.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

METHODS = ["ranpac", "slda", "icarl", "knn", "replay", "joint", "finetune", "mtn_ranpac", "mtn_slda", "mtn"]
ENCODER = "patch_dictionary"
# The MTN methods train 3 epochs a task instead of run()'s 10: on one CPU core a 10-epoch MTN over 8,192-d
# features costs ~1 h per class order, and the issue's own probe found 3 epochs no worse for the MTN.
PER_METHOD = {"mtn": {"epochs": 3}, "mtn_ranpac": {"epochs": 3}, "mtn_slda": {"epochs": 3}}


def run_order(order: int, methods: list[str], out: Path, cache_dir: str, cfg_kw: dict, tag: str,
              encoder: str = ENCODER, encoder_kw: dict | None = None, together: bool = False) -> None:
    """One ``run()`` call per method (``wall.json``: that call's wall time), or with ``together`` one call per group
    of methods that share a config: the features are read or encoded once for the group (six 12,800-d views are
    18 GB to read), and ``wall.json`` holds the method's own seconds (learning its tasks) and the group's."""
    todo = []
    for m in methods:
        if (out / f"order-{order}" / (m + tag) / "results.json").is_file():
            print(f"order {order} {m}{tag}: done already", flush=True)
        else:
            todo.append(m)
    groups: dict[str, tuple[dict, list[str]]] = {}
    for m in todo:
        kw = {**PER_METHOD.get(m, {}), **cfg_kw}
        groups.setdefault(json.dumps(kw, sort_keys=True) + ("" if together else m), (kw, []))[1].append(m)
    for kw, ms in groups.values():
        _run_group(order, ms, out, cache_dir, kw, tag, encoder, encoder_kw)


def _run_group(order, ms, out, cache_dir, kw, tag, encoder, encoder_kw) -> None:
    from memret.incremental import TrainConfig, run

    t0 = time.perf_counter()
    dest = out / f"order-{order}" / ((ms[0] if len(ms) == 1 else "+".join(ms)) + tag)
    res = run("cifar10", tasks=5, method=ms, encoder=encoder, encoder_kw=encoder_kw, memory=2000, seed=order,
              out=dest, cache_dir=cache_dir, config=TrainConfig(**kw))
    wall = time.perf_counter() - t0
    full = json.loads((dest / "results.json").read_text()) if len(ms) > 1 else None
    for m in ms:
        s = res.methods[m].summary
        mdir = out / f"order-{order}" / (m + tag)
        mdir.mkdir(parents=True, exist_ok=True)
        if full is not None:  # the group's results.json holds every method; each method's folder its own
            (mdir / "results.json").write_text(json.dumps(full | {"methods": {m: full["methods"][m]}}, indent=2))
        info = {"wall_s": wall if len(ms) == 1 else float(sum(res.methods[m].task_seconds)),
                "method": m, "order": order, "cfg": kw, "threads": os.environ.get("MEMRET_THREADS")}
        if len(ms) > 1:
            info |= {"group": ms, "group_wall_s": wall, "wall_s_is": "the method's tasks only (features shared)"}
        (mdir / "wall.json").write_text(json.dumps(info))
        print(f"order {order} {m}{tag}: last {100 * s['last_accuracy']:.2f}  wall {info['wall_s']:.0f}s", flush=True)


def table(orders: list[int], out: Path, tag: str = "", encoder: str = ENCODER) -> dict:
    rows = {}
    for m in METHODS:
        last, avg, walls = [], [], []
        for o in orders:
            f = out / f"order-{o}" / (m + tag) / "results.json"
            if not f.is_file():
                continue
            r = json.loads(f.read_text())["methods"][m]
            last.append(100 * r["summary"]["last_accuracy"])
            avg.append(100 * r["summary"]["average_incremental_accuracy"])
            w = f.parent / "wall.json"
            walls.append(json.loads(w.read_text())["wall_s"] if w.is_file() else float("nan"))
        if last:
            rows[m] = {"orders": len(last), "last_mean": float(np.mean(last)), "last_std": float(np.std(last)),
                       "avg_inc_mean": float(np.mean(avg)), "avg_inc_std": float(np.std(avg)), "last": last,
                       "wall_s": walls}
    summary = {"dataset": "cifar10", "tasks": 5, "memory": 2000, "encoder": encoder, "orders": orders,
               "methods": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table{tag}.json").write_text(json.dumps(summary, indent=2))
    print(f"{'method':<12}{'orders':>7}{'last acc':>18}{'avg inc acc':>18}")
    for m, r in rows.items():
        print(f"{m:<12}{r['orders']:>7}{r['last_mean']:>11.2f} +- {r['last_std']:.2f}"
              f"{r['avg_inc_mean']:>11.2f} +- {r['avg_inc_std']:.2f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(rows)
    ax.bar(names, [rows[n]["last_mean"] for n in names], yerr=[rows[n]["last_std"] for n in names], capsize=4)
    ax.axhline(80, color="k", ls="--", lw=1, label="80% target")
    ax.set_ylabel("last accuracy (%), mean +- std over orders")
    ax.set_title(f"Split CIFAR-10, 5 tasks, memory 2,000, {encoder} (orders {orders})", fontsize=9)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"table{tag}.png", dpi=120)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["run", "table"])
    ap.add_argument("--order", type=int, default=1993)
    ap.add_argument("--orders", type=int, nargs="+", default=[1993, 0, 1])
    ap.add_argument("--method", nargs="+", default=METHODS)
    ap.add_argument("--out", default="runs/issue12")
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--cfg", default="{}", help="TrainConfig overrides as JSON, e.g. '{\"fusion\": \"mtn_only\"}'")
    ap.add_argument("--encoder", default=ENCODER, help="a memret.encoders name (label-free: fitted on task 1)")
    ap.add_argument("--encoder-kw", default="{}", help='its arguments as JSON, e.g. \'{"n_centroids": 1600}\'')
    ap.add_argument("--tag", default="", help="suffix of the method folders (ablations)")
    ap.add_argument("--together", action="store_true", help="one run() call for the methods that share a config "
                    "(features read once; wall.json then holds each method's own seconds)")
    a = ap.parse_args()
    if a.stage == "run":
        run_order(a.order, a.method, Path(a.out), a.cache_dir, json.loads(a.cfg), a.tag, a.encoder,
                  json.loads(a.encoder_kw), a.together)
    else:
        table(a.orders, Path(a.out), a.tag, a.encoder + (f" {a.encoder_kw}" if a.encoder_kw != "{}" else ""))


if __name__ == "__main__":
    main()
