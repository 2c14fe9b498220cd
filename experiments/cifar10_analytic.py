"""Label-free patch encoders + analytic heads on Split CIFAR-10 (issue 12), stage by stage.

    python experiments/cifar10_analytic.py select --out runs/analytic     # encoder defaults, task-1 validation split
    python experiments/cifar10_analytic.py stream --out runs/analytic     # 5 tasks, 3 class orders, RanPAC / SLDA / NCM
    python experiments/cifar10_analytic.py speed --out runs/analytic      # images/s at 32 and 224 pixels
    python experiments/cifar10_analytic.py views --threads 1 --out runs/issue12   # 6 views: one pass each vs forward_shifted

``select`` never reads the test set: it fits each encoder on 80% of the first task's
training images (class order 1993) and scores a RanPAC head on the other 20%.
``stream`` fits the chosen encoder on the first task's training images only (per
class order), encodes all 60,000 images once (float16 cache), then learns the heads
task by task, evaluating on the test images of all classes seen. Every stage writes
JSON (and ``stream`` a PNG) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from memret.heads import SLDA, RanPAC
from memret.incremental import class_order, load_dataset
from memret.persist import atomic_write

SELECT_CONFIGS = [  # (n_patches, stride, grid): embed_dim = 2 * n_patches * grid^2
    (1024, 2, 2), (1024, 1, 2), (2048, 2, 2), (1024, 2, 3),
]


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=float).encode()))


def _encode(enc, data, rows: np.ndarray, batch: int = 256, desc: str = "encode") -> np.ndarray:
    """(len(rows), D) float16 features, encoded ``batch`` images at a time with a progress bar."""
    from tqdm.auto import tqdm

    out = np.empty((len(rows), enc.embed_dim), np.float16)
    for s in tqdm(range(0, len(rows), batch), desc=desc, leave=False):
        out[s:s + batch] = enc(data.batch(rows[s:s + batch])).numpy().astype(np.float16)
    return out


def _make_encoder(name: str, **kw):
    from memret.encoders.kmeans import PatchKMeansEncoder
    from memret.encoders.patches import PatchDictionaryEncoder

    return PatchDictionaryEncoder(**kw) if name == "patches" else PatchKMeansEncoder(**kw)


# ============ select: encoder defaults on the first task's validation split ============
def select(args) -> None:
    data = load_dataset("cifar10", root=args.root)
    ytr = np.asarray(data.train.targets)
    first = class_order(10, 1993)[:2]
    rows = np.flatnonzero(np.isin(ytr, first))
    rng = np.random.default_rng(0)
    perm = rng.permutation(rows)
    n_val = len(rows) // 5
    val, fit_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    head_rows = np.sort(rng.choice(fit_rows, size=min(len(fit_rows), args.head_samples), replace=False))
    results = []
    path = Path(args.out) / "select.json"
    if path.is_file():
        results = json.loads(path.read_text())
    done = {tuple(r["config"]) for r in results}
    for cfg in SELECT_CONFIGS:
        if tuple(cfg) in done:
            continue
        D, stride, grid = cfg
        enc = _make_encoder("patches", n_patches=D, stride=stride, grid=grid)
        t0 = time.perf_counter()
        enc.fit(data.train.batch(fit_rows), seed=0)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        Xf = _encode(enc, data.train, head_rows, desc=f"{cfg} fit part")
        t_enc = time.perf_counter() - t0
        Xv = _encode(enc, data.train, val, desc=f"{cfg} val part")
        accs = {}
        for M in (4096,):
            head = RanPAC(10, projection=M, seed=0).fit_task(Xf, ytr[head_rows])
            accs[f"ranpac_{M}"] = float((head.predict(Xv) == ytr[val]).mean())
        results.append({"config": list(cfg), "embed_dim": enc.embed_dim, "fit_s": t_fit,
                        "images_per_s": len(head_rows) / t_enc, "val_accuracy": accs})
        print(json.dumps(results[-1]), flush=True)
        _write_json(path, results)


# ============ stream: the chosen encoder, 5 tasks, 3 class orders ============
def _features(args, data, tasks, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train and test features of the encoder fitted on the first task's training images (float16, cached)."""
    D, stride, grid = args.config
    cache = Path(args.out) / f"features-{seed}-{D}-{stride}-{grid}.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["train"], z["test"], json.loads(str(z["info"]))
    enc = _make_encoder("patches", n_patches=D, stride=stride, grid=grid)
    t0 = time.perf_counter()
    enc.fit(data.train.batch(tasks[0].train_rows), seed=seed)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    Ftr = _encode(enc, data.train, np.arange(len(data.train)), desc=f"order {seed}: train")
    Fte = _encode(enc, data.test, np.arange(len(data.test)), desc=f"order {seed}: test")
    info = {"fit_s": t_fit, "encode_s": time.perf_counter() - t0, "embed_dim": enc.embed_dim}
    atomic_write(cache, lambda f: np.savez(f, train=Ftr, test=Fte, info=json.dumps(info)))
    return Ftr, Fte, info


def _choose_shrinkage(X: np.ndarray, y: np.ndarray, grid=(1e-4, 1e-3, 1e-2, 1e-1, 0.5)) -> tuple[float, dict]:
    """SLDA shrinkage with the best accuracy on a seeded 20% split of the first task's training features."""
    val = np.random.default_rng(0).random(len(y)) < 0.2
    head = SLDA(10, shrinkage=grid[0]).fit_task(X[~val], y[~val])
    accs = {s: float((head.set_shrinkage(s).predict(X[val]) == y[val]).mean()) for s in grid}
    return max(accs, key=accs.get), accs


def stream(args) -> None:
    from memret.incremental import make_tasks
    from memret.metrics import summarize

    data = load_dataset("cifar10", root=args.root)
    ytr, yte = np.asarray(data.train.targets), np.asarray(data.test.targets)
    path = Path(args.out) / "stream.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for seed in args.orders:
        if str(seed) in results:
            continue
        t_start = time.perf_counter()
        tasks = make_tasks(ytr, yte, 5, seed)
        Ftr, Fte, info = _features(args, data, tasks, seed)
        holdout = np.random.default_rng([seed, 2]).random(len(ytr)) < 0.2  # per sample: order-invariant ridge choice
        shrink, shrink_val = _choose_shrinkage(Ftr[tasks[0].train_rows].astype(np.float32), ytr[tasks[0].train_rows])
        heads = {"ranpac": RanPAC(10, projection=args.projection, seed=seed),
                 "slda": SLDA(10, shrinkage=shrink), "ncm": SLDA(10, shrinkage=1.0)}
        out = {"encoder": info, "slda_shrinkage": shrink, "slda_shrinkage_val": shrink_val, "heads": {}}
        for name, head in heads.items():
            R, secs = np.full((5, 5), np.nan), []
            for t, task in enumerate(tasks):
                X = Ftr[task.train_rows].astype(np.float32)
                t0 = time.perf_counter()
                if isinstance(head, RanPAC):
                    head.fit_task(X, ytr[task.train_rows], holdout=holdout[task.train_rows])
                else:
                    head.fit_task(X, ytr[task.train_rows])
                secs.append(time.perf_counter() - t0)
                for j in range(t + 1):
                    rows = tasks[j].test_rows
                    R[t, j] = float((head.predict(Fte[rows].astype(np.float32)) == yte[rows]).mean())
            summary = summarize(R)
            out["heads"][name] = {"R": R.tolist(), "summary": summary, "task_seconds": secs,
                                  "ridge": getattr(head, "lam", None)}
            print(f"order {seed} {name}: last {100 * summary['last_accuracy']:.2f}", flush=True)
        out["wall_s"] = time.perf_counter() - t_start
        results[str(seed)] = out
        _write_json(path, results)
    _plot_stream(results, Path(args.out) / "stream.png")


def _plot_stream(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = next(iter(results.values()))["heads"].keys()
    for name in names:
        curves = []
        for r in results.values():
            R = np.asarray(r["heads"][name]["R"], dtype=float)
            # accuracy on all classes seen = mean over tasks so far (equal test sizes per task)
            curves.append([np.nanmean(R[t, :t + 1]) for t in range(len(R))])
        m = 100 * np.mean(curves, 0)
        ax.plot([2 * (t + 1) for t in range(len(m))], m, "o-", label=f"{name} (last {m[-1]:.1f})")
    ax.set_xlabel("classes seen")
    ax.set_ylabel(f"top-1 on seen classes, mean of {len(results)} orders (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


# ============ speed: images/s of each label-free encoder at 32, 64 and 224 pixels ============
SPEED_ENCODERS = [("kmeans", {"n_centroids": 400, "autograd": True}),  # the reference: k-means' differentiable path
                  ("kmeans", {"n_centroids": 400}),      # run()'s default encoder (the inference path)
                  ("patches", {"n_patches": 1024, "stride": 2, "grid": 2}),
                  ("patches", {"n_patches": 1024, "stride": 1, "grid": 2}),
                  ("patches", {"n_patches": 1024, "stride": 4, "grid": 2}),
                  ("kmeans", {"n_centroids": 1600}),
                  ("kmeans", {"n_centroids": 4000})]
IMAGENET_IMAGES = 1_331_167   # ILSVRC-2012 train + val


def speed(args) -> None:
    """Encoder throughput on CIFAR images (32 px) and the same images upsampled (bilinear) to 64 and 224 px.

    Each figure is printed with its ratio to the reference (k-means, 400 centroids, timed on its differentiable
    path, as every call took before the inference path) at the same size, measured in the same process, and the
    ImageNet-1k encoding time it implies at this rate.
    """
    data = load_dataset("cifar10", root=args.root)
    x32 = data.train.batch(np.arange(256))
    path = Path(args.out) / "speed.json"
    # rows of other sizes measured earlier are kept (``--sides 224`` re-measures one size only)
    results = [r for r in (json.loads(path.read_text()) if path.is_file() else []) if r["pixels"] not in args.sides]
    for side, n_fit, n_time in ((32, 256, 128), (64, 64, 32), (224, 8, 4)):
        if side not in args.sides:
            continue
        x = x32 if side == 32 else torch.nn.functional.interpolate(x32[:n_fit], size=side, mode="bilinear")
        ref = None
        for name, kw in SPEED_ENCODERS:
            grad = kw.get("autograd", False)  # time the path taken when a graph is asked for (x.requires_grad)
            enc = _make_encoder(name, **{k: v for k, v in kw.items() if k != "autograd"})
            if name == "kmeans":
                enc.fit(x[:n_fit], n_patches=20_000, seed=0)
            else:
                enc.fit(x[:n_fit], seed=0, n_standardise=n_time)
            enc(x[:2].requires_grad_(grad))  # warm-up
            t0 = time.perf_counter()
            enc(x[:n_time].requires_grad_(grad))
            ips = n_time / (time.perf_counter() - t0)
            ref = ips if ref is None else ref
            results.append({"encoder": name, **kw, "pixels": side, "images_per_s": ips,
                            "ratio_to_reference": ips / ref, "threads": torch.get_num_threads(),
                            "imagenet1k_hours": IMAGENET_IMAGES / ips / 3600})
            print(json.dumps(results[-1]), flush=True)
            _write_json(path, results)
            del enc


def views(args) -> None:
    """The multi-view encoding of ``TrainConfig(mirror_views=True, shift_views=2)`` (6 views: the image, its mirror,
    both translated by (2, 2) and (-2, -2)) on 32-px CIFAR images with the 1,600-centroid k-means encoder: one
    pass per view (``encoder(view(x, flip, shift))``, the reference) against ``forward_shifted`` (one pass per
    flip over the reflect-padded image, every translated view pooled from its activation map), same process."""
    from memret.incremental.features import view

    data = load_dataset("cifar10", root=args.root)
    x = data.train.batch(np.arange(256))
    enc = _make_encoder("kmeans", n_centroids=1600)
    enc.fit(x, n_patches=20_000, seed=0)
    shifts, n = [(0, 0), (2, 2), (-2, -2)], 128
    with torch.no_grad():
        enc(x[:2])  # warm-up
        timed = {}
        for name, fn in (("one view (one pass)", lambda: [enc(x[:n])]),
                         ("6 views, one pass each (reference)",
                          lambda: [enc(view(x[:n], f, s)) for f in (False, True) for s in shifts]),
                         ("6 views, forward_shifted (one pass per flip)",
                          lambda: [o for f in (False, True) for o in enc.forward_shifted(view(x[:n], f), shifts)])):
            t0 = time.perf_counter()
            timed[name] = (fn(), time.perf_counter() - t0)
    ref = timed["6 views, one pass each (reference)"]
    diff = max(float((a - b).abs().max()) for a, b in zip(ref[0], timed["6 views, forward_shifted (one pass per flip)"][0]))
    out = {"images": n, "threads": torch.get_num_threads(), "max_abs_difference_of_the_views": diff,
           "rows": [{"path": k, "seconds": t, "images_per_s": n / t, "speed_vs_reference": ref[1] / t}
                    for k, (_, t) in timed.items()]}
    print(json.dumps(out, indent=1), flush=True)
    _write_json(Path(args.out) / "views_speed.json", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["select", "stream", "speed", "views"])
    ap.add_argument("--root", default="../shared/data/cifar10")
    ap.add_argument("--out", default="runs/analytic")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MEMRET_THREADS", 2)))
    ap.add_argument("--config", type=int, nargs=3, default=(1024, 2, 2), metavar=("PATCHES", "STRIDE", "GRID"),
                    help="stream: the encoder (chosen by select)")
    ap.add_argument("--projection", type=int, default=4096, help="stream: RanPAC's random projection width")
    ap.add_argument("--orders", type=int, nargs="+", default=[1993, 1, 2], help="stream: class-order seeds")
    ap.add_argument("--head-samples", type=int, default=4000, help="select: fit-part samples the head learns from")
    ap.add_argument("--sides", type=int, nargs="+", default=[32, 64, 224], choices=[32, 64, 224],
                    help="speed: image sizes to (re-)measure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    {"select": select, "stream": stream, "speed": speed, "views": views}[args.stage](args)


if __name__ == "__main__":
    main()
