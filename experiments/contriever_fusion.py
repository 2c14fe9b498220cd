"""Hybrid BM25 + dense by score interpolation, its weight chosen on held-out TRAIN queries (never test).

    python experiments/contriever_fusion.py --data ../shared/data/beir/scifact --model runs/h7-fewshot/step-44 \
        --holdout runs/h7-fewshot/pairs.json --test runs/h7-fewshot/beir-test/scifact --cache runs/h7-fewshot/cache

Validation: the held-out train queries listed in ``--holdout`` (a ``pairs.json`` written by
``python -m memret.retrieval.train --holdout F``; the model never trained on them) searched over the FULL corpus
(the corpus embeddings come from ``--cache`` when ``python -m memret.beir`` evaluated the same model there), BM25
and dense 1,000 deep, as ``python -m memret.beir`` does on test. Candidates: RRF (k=60, the reference) and
``memret.retrieval.interpolate`` with min-max or z-score normalisation and dense weight w in 0, 0.05, ..., 1
(BM25 gets 1 - w). The best on validation nDCG@10 is then applied once to the test runs ``--test``/bm25.trec and
dense.trec (written by ``python -m memret.beir --retriever bm25 dense``); RRF on the same runs is printed next
to it, with the per-query paired difference (mean +- standard error). A bootstrap over the validation queries
(200 resamples) shows how stable the choice is: the test nDCG@10 of each resample's chosen candidate, mean +- std.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from memret.beir import load_beir, to_run
from memret.metrics.retrieval import per_query
from memret.retrieval import BM25Retriever, DenseRetriever, Hit, TextEncoder, interpolate, rrf

K = 1000
WEIGHTS = [round(0.05 * i, 2) for i in range(21)]


def read_trec(path: Path) -> dict[str, list[Hit]]:
    hits: dict[str, list[Hit]] = {}
    for line in path.read_text().splitlines():
        qid, _, docid, _, score, _ = line.split()
        hits.setdefault(qid, []).append(Hit(docid, float(score)))
    return hits


def candidates() -> dict[str, callable]:
    out = {"rrf": lambda b, d: rrf([b, d], 60, K)}
    for norm in ("minmax", "zscore"):
        for w in WEIGHTS:
            out[f"{norm} w={w:.2f}"] = lambda b, d, w=w, norm=norm: interpolate([b, d], [1 - w, w], norm, K)
    return out


def per_query_ndcg(qrels, qids, bm25: dict, dense: dict, fuse) -> np.ndarray:
    run = to_run(qids, [fuse(bm25[q], dense[q]) for q in qids], K)
    pq = per_query(qrels, run, ks=(10, 100))
    return np.array([pq[q]["ndcg_cut_10"] for q in qids]), np.array([pq[q]["recall_100"] for q in qids])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="the dense model whose test run is --test/dense.trec")
    ap.add_argument("--holdout", required=True, help="pairs.json naming the held-out train queries")
    ap.add_argument("--test", required=True, help="folder with the test bm25.trec and dense.trec")
    ap.add_argument("--cache", default="indices")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS)")
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    # ---------------------------------------------------------------- validation: held-out train queries
    held = json.loads(Path(args.holdout).read_text())["holdout_qids"]
    train = load_beir(args.data, "train")
    qrels_v = {q: train.qrels[q] for q in held}
    texts = [train.queries[q] for q in held]
    runs_v = {}
    for name, r in (("bm25", BM25Retriever(cache_dir=args.cache)),
                    ("dense", DenseRetriever(TextEncoder(args.model, device="cpu"), cache_dir=args.cache,
                                             show_progress=False))):
        r.index(train.corpus)
        run = to_run(held, r.search(texts, K + 1), K)  # as memret.beir: one deeper, own id dropped
        runs_v[name] = {q: [Hit(d, s) for d, s in sorted(run[q].items(), key=lambda t: -t[1])] for q in held}
    print(f"validation: {len(held)} held-out train queries over the full corpus ({len(train.corpus)} documents), "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    cands = candidates()
    val = {n: per_query_ndcg(qrels_v, held, runs_v["bm25"], runs_v["dense"], f) for n, f in cands.items()}
    val["bm25 alone"] = per_query_ndcg(qrels_v, held, runs_v["bm25"], runs_v["dense"], lambda b, d: b)
    val["dense alone"] = per_query_ndcg(qrels_v, held, runs_v["bm25"], runs_v["dense"], lambda b, d: d)
    for n in ["bm25 alone", "dense alone", "rrf"] + [f"{m} w={w:.2f}" for m in ("minmax", "zscore")
                                                     for w in WEIGHTS if round(w * 20) % 2 == 0]:
        print(f"  val {n:>16}: nDCG@10 {val[n][0].mean():.4f}  R@100 {val[n][1].mean():.4f}")
    mean_v = {n: val[n][0].mean() for n in cands}
    best = max(cands, key=lambda n: (round(mean_v[n], 10), n == "rrf"))
    print(f"selected on validation: {best} (nDCG@10 {mean_v[best]:.4f}; rrf {mean_v['rrf']:.4f})", flush=True)

    # ---------------------------------------------------------------- test, once, with the selected candidate
    test = load_beir(args.data, "test")
    bm25_t, dense_t = read_trec(Path(args.test) / "bm25.trec"), read_trec(Path(args.test) / "dense.trec")
    qids = [q for q in test.queries if q in test.qrels]
    empty: list[Hit] = []
    bm25_t = {q: bm25_t.get(q, empty) for q in qids}
    dense_t = {q: dense_t.get(q, empty) for q in qids}
    rows = {"bm25": per_query_ndcg(test.qrels, qids, bm25_t, dense_t, lambda b, d: b),
            "dense": per_query_ndcg(test.qrels, qids, bm25_t, dense_t, lambda b, d: d),
            "hybrid rrf": per_query_ndcg(test.qrels, qids, bm25_t, dense_t, cands["rrf"]),
            f"hybrid {best}": per_query_ndcg(test.qrels, qids, bm25_t, dense_t, cands[best])}
    print(f"test ({len(qids)} queries):")
    for n, (nd, rc) in rows.items():
        print(f"  {n:>24}: nDCG@10 {nd.mean():.4f}  R@100 {rc.mean():.4f}")
    diff = rows[f"hybrid {best}"][0] - rows["hybrid rrf"][0]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    print(f"  selected - rrf, paired per query: {diff.mean():+.4f} +- {se:.4f} (s.e.)")

    # ---------------------------------------------------------------- stability of the choice
    rng = np.random.default_rng(0)
    names = list(cands)
    mat = np.stack([val[n][0] for n in names])  # candidates x validation queries
    test_cache: dict[str, float] = {}
    picks = []
    for _ in range(args.bootstrap):
        idx = rng.integers(0, len(held), len(held))
        n = names[int(np.argmax(mat[:, idx].mean(1)))]
        if n not in test_cache:
            test_cache[n] = per_query_ndcg(test.qrels, qids, bm25_t, dense_t, cands[n])[0].mean()
        picks.append(test_cache[n])
    picks = np.array(picks)
    print(f"bootstrap over validation queries ({args.bootstrap}): test nDCG@10 of the chosen candidate "
          f"{picks.mean():.4f} +- {picks.std():.4f}; choices {sorted(test_cache)}")
    print(json.dumps({"selected": best, "val_ndcg10": round(mean_v[best], 4), "val_rrf_ndcg10": round(mean_v["rrf"], 4),
                      **{f"test_{n}": {"ndcg_cut_10": round(v[0].mean(), 4), "recall_100": round(v[1].mean(), 4)}
                         for n, v in rows.items()},
                      "bootstrap_test_ndcg10_mean": round(picks.mean(), 4),
                      "bootstrap_test_ndcg10_std": round(picks.std(), 4),
                      "seconds": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
