"""Issue 12, head-side probes: is SLDA's linear shrinkage, or its one Gaussian per class, what limits it?
Read on validation, never the test set.

    python experiments/issue12_head_probes.py --encoder-kw '{"n_centroids": 1600, "encoding": "soft"}' \
        --probe spectral mixture --out runs/s12/heads

**spectral.** SLDA's covariance is ``(1 - s) Sigma + s I``: every sample eigenvalue moved the same way. With 12,800
dimensions and 45,000 samples (p / n = 0.28) the sample spectrum is spread far from the true one, which
nonlinear shrinkage corrects eigenvalue by eigenvalue (Ledoit & Wolf 2020, "Analytical nonlinear shrinkage of
large-dimensional covariance matrices", Ann. Statist. 48(5); their kernel formula, p <= n case). This script
fits the pooled within-class covariance and class means on the training rows outside the scored ones (the same
rows as every issue-12 probe: ``issue12_ceiling.validation_rows``), diagonalises it once, and scores the
discriminant of each spectrum on the held-out rows:

- the linear grid of ``run()`` (``(1 - s) lambda + s``; the ``s`` SLDA picks from held-out statistics is
  reported, and every ``s`` read on the scored rows as an upper bound for the linear family);
- Ledoit-Wolf's analytical nonlinear shrinkage (no parameter), and the same mixed with the identity;
- eigenvalue clipping ``max(lambda, tau)``.

**mixture.** Mixture discriminant analysis (Hastie & Tibshirani 1996) with a shared covariance: each class
split into ``K`` sub-classes by k-means over its own training rows (no other class read, so it stays
class-incremental), SLDA fitted on the sub-class labels (its statistics give the pooled within-sub-class
covariance; the shrinkage chosen from held-out statistics as in ``run()``), and a class scored by the
log-sum-exp of its sub-classes' discriminants plus their log proportions.

The features are ``run()``'s: the mean of six views (``--flip --shift 2`` of ``issue12_ceiling.py``), cached in
``indices/`` (encoded here if absent). Writes ``<out>/heads-<order>.json``.

**rda.** Regularised discriminant analysis (Friedman 1989; the per-class covariances of FeCAM, Goswami et al.,
NeurIPS 2023, for exemplar-free class-incremental learning): each class its own covariance, shrunk towards the
pooled one, ``(1 - s) ((1 - l) Sigma + l S_c) + s I`` with SLDA's own ``s``. Every class appears in one task
only, so ``S_c`` is complete when its task ends: it stays class-incremental. Scored as QDA (Mahalanobis
distance plus the log-determinant) and with FeCAM's rule (the Mahalanobis distance alone; not its Tukey transform
or covariance normalisation), every ``l`` read on the scored rows at SLDA's ``s`` (``l = 0`` is SLDA itself).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def analytical_shrinkage(lam: np.ndarray, n: int, chunk: int = 1024) -> np.ndarray:
    """Ledoit & Wolf (2020)'s nonlinear shrinkage of the sample eigenvalues ``lam`` (p,) of a covariance from
    ``n`` samples, for p <= n: an Epanechnikov kernel estimate of the spectral density and of its Hilbert
    transform at each eigenvalue, bandwidth ``n^(-1/3)`` times the eigenvalue. Rows in chunks (p x p at once is
    1.3 GB at 12,800 dimensions)."""
    lam = np.asarray(lam, dtype=np.float64)
    p = len(lam)
    if p > n:
        raise ValueError(f"this form needs p <= n, got p={p}, n={n}")
    h = n ** (-1 / 3)
    H = h * lam  # (p,) bandwidth at each eigenvalue
    f = np.empty(p)
    hf = np.empty(p)
    r5 = np.sqrt(5)
    for s in range(0, p, chunk):
        x = (lam[s:s + chunk, None] - lam[None, :]) / H[None, :]  # (c, p)
        f[s:s + chunk] = (3 / 4 / r5) * np.mean(np.maximum(1 - x ** 2 / 5, 0) / H, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (-3 / 10 / np.pi) * x + (3 / 4 / r5 / np.pi) * (1 - x ** 2 / 5) * np.log(np.abs((r5 - x) / (r5 + x)))
        edge = np.abs(x) == r5
        t[edge] = (-3 / 10 / np.pi) * x[edge]
        hf[s:s + chunk] = np.mean(t / H, axis=1)
    c = p / n
    return lam / ((np.pi * c * lam * f) ** 2 + (1 - c - np.pi * c * lam * hf) ** 2)


def subclasses(X: np.ndarray, y: np.ndarray, K: int, seed: int = 0) -> np.ndarray:
    """(N,) sub-class labels ``y * K + j``: k-means (FAISS) of each class's own rows into ``K`` clusters."""
    import faiss

    sub = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        km = faiss.Kmeans(X.shape[1], K, niter=20, seed=seed + int(c), verbose=False)
        Xc = np.ascontiguousarray(X[rows], dtype=np.float32)
        km.train(Xc)
        sub[rows] = c * K + km.index.search(Xc, 1)[1][:, 0]
    return sub


def mixture_scores(sub_scores: np.ndarray, counts: np.ndarray, K: int) -> np.ndarray:
    """(N, C) class scores: log-sum-exp over each class's K sub-class discriminants plus log proportions."""
    n = counts.reshape(-1, K).astype(np.float64)
    logp = np.log(np.maximum(n, 1e-12) / np.maximum(n.sum(1, keepdims=True), 1)).ravel()
    z = sub_scores.astype(np.float64) + np.where(counts > 0, logp, -np.inf)
    z = z.reshape(len(z), -1, K)
    m = z.max(2, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(2, keepdims=True)))[..., 0]


def rda(slda, Xf: np.ndarray, yf: np.ndarray, Xv: np.ndarray, yv: np.ndarray, lambdas: list[float]) -> dict:
    """Validation accuracy of regularised discriminant analysis for each ``l`` in ``lambdas`` (and 0), QDA and
    Mahalanobis-only scores; float64, one (D, D) matrix factorised per class and ``l``."""
    import torch

    s = slda.shrinkage
    mu, Sigma = slda.means, slda.covariance  # (C, D), (D, D) float64
    C, D = mu.shape
    Xv_t = torch.from_numpy(Xv).double()
    lams = [0.0] + [float(x) for x in lambdas]
    maha = {l: torch.zeros(len(yv), C, dtype=torch.float64) for l in lams}
    logdet = {l: torch.zeros(C, dtype=torch.float64) for l in lams}
    t0 = time.perf_counter()
    M = Sigma * (1 - s)
    M.diagonal().add_(s)
    L0 = torch.linalg.cholesky(M)
    for c in range(C):
        Z = torch.linalg.solve_triangular(L0, (Xv_t - mu[c]).T, upper=False)
        maha[0.0][:, c] = (Z * Z).sum(0)
    logdet[0.0][:] = 2 * torch.log(L0.diagonal()).sum()
    del L0, Z
    for c in range(C):
        Xc = torch.from_numpy(Xf[yf == c]).double() - mu[c]
        Sc = Xc.T @ Xc / len(Xc)
        del Xc
        R = (Xv_t - mu[c]).T.contiguous()  # (D, Nv)
        for l in lams[1:]:
            torch.mul(Sigma, (1 - s) * (1 - l), out=M)
            M.add_(Sc, alpha=(1 - s) * l)
            M.diagonal().add_(s)
            L = torch.linalg.cholesky(M)
            Z = torch.linalg.solve_triangular(L, R, upper=False)
            maha[l][:, c] = (Z * Z).sum(0)
            logdet[l][c] = 2 * torch.log(L.diagonal()).sum()
            del L, Z
        print(f"rda: class {c} done, {time.perf_counter() - t0:.0f}s", flush=True)
        del Sc
    out = {}
    for l in lams:
        q = (-(maha[l] + logdet[l])).argmax(1).numpy()
        f = (-maha[l]).argmax(1).numpy()
        out[f"l={l:g}"] = {"qda": float((q == yv).mean()), "mahalanobis": float((f == yv).mean()),
                           "logdet_spread": float(logdet[l].max() - logdet[l].min())}
        print(f"rda l={l:g}: QDA {100 * out[f'l={l:g}']['qda']:.2f}  Mahalanobis only "
              f"{100 * out[f'l={l:g}']['mahalanobis']:.2f}", flush=True)
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="kmeans_patches")
    ap.add_argument("--encoder-kw", default='{"n_centroids": 1600, "encoding": "soft"}')
    ap.add_argument("--order", type=int, default=1993)
    ap.add_argument("--probe", nargs="+", default=["spectral", "mixture"], choices=["spectral", "mixture", "rda"])
    ap.add_argument("--subclasses", type=int, nargs="+", default=[2, 4], help="mixture: K per class")
    ap.add_argument("--rda-lambdas", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4],
                    help="rda: weights l of each class's own covariance")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--root", default=None)
    ap.add_argument("--cache-dir", default="indices")
    ap.add_argument("--out", default="runs/issue12/heads")
    args = ap.parse_args()

    import torch

    from issue12_ceiling import order_stream, validation_rows
    from memret.heads import SLDA
    from memret.incremental import TrainConfig
    from memret.incremental.run import mean_views
    from memret.persist import atomic_write

    kw = json.loads(args.encoder_kw)
    data, ytr, stream, cache = order_stream(args.encoder, kw, args.order, root=args.root, cache_dir=args.cache_dir)
    F = mean_views(data, args.encoder, kw, stream[0], args.order, cache, mirror=True, shift=2)[0]
    val, inner = validation_rows(len(ytr), args.order, args.holdout)
    yf, yv = ytr[~val], ytr[val]
    Xf = np.ascontiguousarray(F[~val])
    Xv = np.ascontiguousarray(F[val])
    del F
    grid = TrainConfig().slda_shrinkages
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"heads-{args.order}.json"
    res = {"encoder": args.encoder, "encoder_kw": kw, "order": args.order, "dim": int(Xf.shape[1]),
           "train_rows": int(len(yf)), "validation_rows": int(len(yv))}

    def save() -> None:
        atomic_write(path, lambda f: f.write(json.dumps(res, indent=2).encode()))

    t0 = time.perf_counter()
    slda = SLDA(10, shrinkage="auto", shrinkages=grid).fit_task(Xf, yf, holdout=inner)
    res["slda"] = {"shrinkage": slda.shrinkage, "validation_accuracy": float((slda.predict(Xv) == yv).mean()),
                   "seconds": time.perf_counter() - t0}
    print(f"SLDA (its own choice {slda.shrinkage:g}): {100 * res['slda']['validation_accuracy']:.2f}  "
          f"{res['slda']['seconds']:.0f}s", flush=True)
    save()
    if "rda" in args.probe:
        res["rda"] = rda(slda, Xf, yf, Xv, yv, args.rda_lambdas)
        save()
    if "spectral" in args.probe:
        mu, cov = slda.means, slda.covariance  # over every fitted row, the held-out part included, as SLDA solves
        del slda
        t0 = time.perf_counter()
        lam, V = torch.linalg.eigh(cov)
        del cov
        res["eigh_seconds"] = time.perf_counter() - t0
        lam_np = lam.numpy()
        print(f"eigh {res['eigh_seconds']:.0f}s; eigenvalues {lam_np[0]:.3g} .. {lam_np[-1]:.3g}", flush=True)
        Vmu = V.T @ mu.T  # (D, C)
        Xr = torch.from_numpy(Xv).double() @ V  # the scored rows in the eigenbasis
        del V

        def acc(d: np.ndarray) -> float:
            P = Vmu / torch.from_numpy(d).unsqueeze(1)  # (D, C): Lambda mu in the eigenbasis
            s = Xr @ P - 0.5 * (Vmu * P).sum(0)
            return float((s.argmax(1).numpy() == yv).mean())

        lam_pos = np.clip(lam_np, 1e-12 * lam_np[-1], None)
        rows = {f"linear s={s:g}": acc((1 - s) * lam_pos + s) for s in grid}
        nl = analytical_shrinkage(lam_pos, len(yf) - 10)
        rows["Ledoit-Wolf nonlinear"] = acc(nl)
        for s in (1e-3, 3e-3, 1e-2):
            rows[f"Ledoit-Wolf nonlinear, mixed with I s={s:g}"] = acc((1 - s) * nl + s)
        for q in (0.01, 0.05, 0.1, 0.2):
            tau = float(np.quantile(lam_pos, q))
            rows[f"clipped at the {q:g} quantile ({tau:.3g})"] = acc(np.maximum(lam_pos, tau))
        res["spectral"] = rows
        res["nonlinear_spectrum"] = {"min": float(nl.min()), "median": float(np.median(nl)), "max": float(nl.max()),
                                     "sample_min": float(lam_np[0]), "sample_median": float(np.median(lam_np))}
        for k, v in rows.items():
            print(f"{k:<52} {100 * v:.2f}", flush=True)
        del Xr, Vmu
        save()
    else:
        del slda
    if "mixture" in args.probe:
        res["mixture"] = {}
        for K in args.subclasses:
            t0 = time.perf_counter()
            sub = subclasses(Xf, yf, K, seed=args.order)
            head = SLDA(10 * K, shrinkage="auto", shrinkages=grid).fit_task(Xf, sub, holdout=inner)
            counts = np.bincount(sub, minlength=10 * K)
            sc = head.scores(Xv)
            a = float((mixture_scores(sc, counts, K).argmax(1) == yv).mean())
            amax = float((sc.reshape(len(sc), 10, K).max(2).argmax(1) == yv).mean())
            res["mixture"][str(K)] = {"validation_accuracy": a, "max_over_subclasses": amax,
                                      "shrinkage": head.shrinkage, "seconds": time.perf_counter() - t0,
                                      "smallest_subclass": int(counts.min())}
            print(f"mixture K={K}: {100 * a:.2f} (max over sub-classes {100 * amax:.2f}), shrinkage "
                  f"{head.shrinkage:g}, {time.perf_counter() - t0:.0f}s", flush=True)
            del head
            save()


if __name__ == "__main__":
    main()
