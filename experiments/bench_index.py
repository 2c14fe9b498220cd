"""memret.DenseIndex / ExemplarBank against raw FAISS on the same factory strings, side by side in one run.

    python experiments/bench_index.py                 # 1M x 128 and 100k x 768 (about 15 min on 2 cores)
    python experiments/bench_index.py --scale 0.1     # a 10x smaller quick look

For each data set and factory string the same vectors go into a raw
``faiss.index_factory`` index and into a ``memret.DenseIndex`` (L2, int ids),
timed alternately. Printed: build time, batch-search QPS (1,000 queries,
k=10), single-query latency (median of 200), recall@10 against exact search,
and memret/raw ratios (>= 1 means memret is as fast). Then ExemplarBank:
herding over 20,000 x 512 features and bank kNN QPS against a raw IndexFlatIP.
Writes ``<out>/bench_index.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from memret import DenseIndex, ExemplarBank
from memret.memory import herding

SEARCH_PARAMS = {"Flat": {}, "HNSW32": {"efSearch": 64}, "IVF1024,PQ16": {"nprobe": 16}}


def clustered(n: int, d: int, seed: int, latent: int = 24) -> np.ndarray:
    """Vectors with low intrinsic dimension, like real embeddings: a Gaussian mixture in a
    ``latent``-dim space, mapped to ``d`` dims by a fixed random projection, plus small noise."""
    proj = np.random.default_rng(12345).normal(size=(latent, d)).astype(np.float32) / np.sqrt(latent)
    centers = np.random.default_rng(54321).normal(size=(1024, latent)).astype(np.float32) * 2
    g = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        z = centers[g.integers(0, 1024, e - s)] + g.normal(size=(e - s, latent)).astype(np.float32)
        out[s:e] = z @ proj + 0.05 * g.normal(size=(e - s, d)).astype(np.float32)
    return out


class Raw:
    """Raw FAISS, used the way FAISS's own docs and benchs use it."""

    def __init__(self, d: int, factory: str, params: dict) -> None:
        self.index = faiss.index_factory(d, factory, faiss.METRIC_L2)
        self.params = params

    def build(self, xt, xb):
        self.index.train(xt)
        self.index.add(xb)
        ps = faiss.ParameterSpace()
        for k, v in self.params.items():
            ps.set_index_parameter(self.index, k, v)

    def search(self, xq, k):
        return self.index.search(xq, k)


class Memret:
    def __init__(self, d: int, factory: str, params: dict) -> None:
        self.index = DenseIndex(d, factory, "l2")
        self.params = params

    def build(self, xt, xb):
        self.index.train(xt)
        self.index.add(np.arange(len(xb)), xb)
        if self.params:
            self.index.set_search_params(**self.params)

    def search(self, xq, k):
        return self.index.search(xq, k)


def timed(fn, *args, repeat: int = 1) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_dataset(n: int, d: int, factories: list[str], nq: int = 1000, n_single: int = 200,
                  repeat: int = 3) -> list[dict]:
    xb, xq = clustered(n, d, 0), clustered(nq, d, 1)
    xt = xb[: min(n, 64 * 1024)]
    gt = faiss.IndexFlatL2(d)
    gt.add(xb)
    _, I_gt = gt.search(xq, 10)
    del gt
    rows = []
    for factory in factories:
        res = {}
        for name, cls in (("raw", Raw), ("memret", Memret)):
            impl = cls(d, factory, SEARCH_PARAMS[factory])
            build_s, _ = timed(impl.build, xt, xb)
            impl.search(xq[:10], 10)  # warm-up
            res[name] = {"build_s": build_s}
            res[name]["_impl"] = impl
        # alternate the timed searches so drift affects both alike
        for rep in range(repeat):
            for name in ("raw", "memret"):
                impl = res[name]["_impl"]
                t, (_, I) = timed(impl.search, xq, 10)
                res[name]["batch_s"] = min(res[name].get("batch_s", np.inf), t)
                res[name]["recall@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_gt)]))
        # single queries, interleaved query by query so that load changes hit both sides alike
        lat = {"raw": [], "memret": []}
        for i in range(n_single):
            for name in ("raw", "memret") if i % 2 == 0 else ("memret", "raw"):
                lat[name].append(timed(res[name]["_impl"].search, xq[i : i + 1], 10)[0])
        for name in ("raw", "memret"):
            res[name]["single_ms"] = 1000 * float(np.median(lat[name]))
        row = {"n": n, "d": d, "factory": factory}
        for name in ("raw", "memret"):
            r = res[name]
            row[name] = {"build_s": r["build_s"], "qps": nq / r["batch_s"], "single_ms": r["single_ms"],
                         "recall@10": r["recall@10"]}
        row["ratio"] = {
            "build": row["raw"]["build_s"] / row["memret"]["build_s"],
            "qps": row["memret"]["qps"] / row["raw"]["qps"],
            "single": row["raw"]["single_ms"] / row["memret"]["single_ms"],
        }
        rows.append(row)
        print(f"{n:>9,} x {d:<4} {factory:<13} build {row['raw']['build_s']:7.2f}s / {row['memret']['build_s']:7.2f}s "
              f"(x{row['ratio']['build']:.3f})  QPS {row['raw']['qps']:9.0f} / {row['memret']['qps']:9.0f} "
              f"(x{row['ratio']['qps']:.3f})  1-query {row['raw']['single_ms']:7.3f} / {row['memret']['single_ms']:7.3f} ms "
              f"(x{row['ratio']['single']:.3f})  R@10 {row['raw']['recall@10']:.3f} / {row['memret']['recall@10']:.3f}",
              flush=True)
        del res
    return rows


def bench_bank(n: int = 20_000, d: int = 512, classes: int = 100, per_class: int = 20, nq: int = 1000) -> dict:
    feats = clustered(n, d, 2)
    labels = np.repeat(np.arange(classes), n // classes)
    t_one, _ = timed(herding, feats, 2000)
    bank = ExemplarBank(d, per_class=per_class, policy="herding")
    t_bank, _ = timed(bank.update, feats, labels, np.arange(n))
    # kNN over a large bank: the ImageNet-1k memory is 20,000 exemplars
    big = ExemplarBank(d, total=n, policy="random")
    big.update(feats, labels, np.arange(n))
    q = clustered(nq, d, 3)
    raw = faiss.IndexFlatIP(d)
    xb = big.features.copy()
    faiss.normalize_L2(xb)
    raw.add(xb)
    big.knn(q[:5], 10)  # builds the bank's index once, outside the timing
    t_raw = t_mem = np.inf
    for _ in range(5):
        qn = q.copy()
        t0 = time.perf_counter()
        faiss.normalize_L2(qn)  # raw FAISS has to normalise for cosine too
        raw.search(qn, 10)
        t_raw = min(t_raw, time.perf_counter() - t0)
        t_mem = min(t_mem, timed(big.knn, q, 10)[0])
    t_loo, _ = timed(big.knn, q, 10, np.arange(nq))
    out = {"herding_2000_of_20000x512_s": t_one, "bank_update_100cls_x200_to_20each_s": t_bank,
           "knn_qps_raw": nq / t_raw, "knn_qps_memret": nq / t_mem, "knn_ratio": t_raw / t_mem,
           "knn_leave_one_out_qps": nq / t_loo}
    print(f"ExemplarBank: herding 2,000 of 20,000x512 in {t_one:.2f}s; update of 100 classes x 200 -> 20/class "
          f"in {t_bank:.2f}s; kNN QPS raw {out['knn_qps_raw']:.0f} / memret {out['knn_qps_memret']:.0f} "
          f"(x{out['knn_ratio']:.3f}); leave-one-out {out['knn_leave_one_out_qps']:.0f} QPS", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply data set sizes")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 768], help="128: 1M vectors, 768: 100k")
    ap.add_argument("--factories", nargs="+", default=list(SEARCH_PARAMS))
    ap.add_argument("--repeat", type=int, default=3, help="alternating timed batch searches per side")
    ap.add_argument("--no-bank", action="store_true")
    args = ap.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; columns are raw / memret")
    rows = []
    for d in args.dims:
        n = int((1_000_000 if d == 128 else 100_000) * args.scale)
        rows += bench_dataset(n, d, args.factories, repeat=args.repeat)
    bank = None if args.no_bank else bench_bank()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_index.json" if len(rows) == 6 and bank else "bench_index_partial.json"
    (out / name).write_text(json.dumps({"index": rows, "bank": bank}, indent=2))


if __name__ == "__main__":
    main()
