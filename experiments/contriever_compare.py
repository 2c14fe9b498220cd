"""Before / after a training run, on the same test queries: metrics and per-query paired differences.

    python experiments/contriever_compare.py --data ../shared/data/beir/scifact \
        --before runs/contriever-base/beir-test/scifact --after runs/h10-unsup/beir-test/scifact

Each folder holds the TREC runs ``python -m memret.beir --retriever bm25 dense hybrid`` wrote (``dense.trec``,
``hybrid.trec``, ...). For every retriever present in both: nDCG@10 and Recall@100 before and after, the change,
its standard error over queries (paired), and how many queries got better / worse at nDCG@10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from memret.beir import load_beir
from memret.metrics.retrieval import per_query


def read_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, docid, _, score, _ = line.split()
        run.setdefault(qid, {})[docid] = float(score)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    args = ap.parse_args()
    data = load_beir(args.data, args.split)
    qids = sorted(q for q in data.queries if q in data.qrels)
    rows = {}
    for name in ("bm25", "dense", "hybrid"):
        b, a = Path(args.before) / f"{name}.trec", Path(args.after) / f"{name}.trec"
        if not (b.is_file() and a.is_file()):
            continue
        pb, pa = (per_query(data.qrels, read_run(p), ks=(10, 100)) for p in (b, a))
        row = {}
        for m in ("ndcg_cut_10", "recall_100"):
            x = np.array([pb.get(q, {}).get(m, 0.0) for q in qids])
            y = np.array([pa.get(q, {}).get(m, 0.0) for q in qids])
            d = y - x
            row[m] = {"before": round(x.mean(), 4), "after": round(y.mean(), 4), "change": round(d.mean(), 4),
                      "se": round(d.std(ddof=1) / np.sqrt(len(d)), 4), "better": int((d > 0).sum()),
                      "worse": int((d < 0).sum())}
        rows[name] = row
        n, r = row["ndcg_cut_10"], row["recall_100"]
        print(f"{name:>7}: nDCG@10 {n['before']:.4f} -> {n['after']:.4f} ({n['change']:+.4f} +- {n['se']:.4f} s.e.; "
              f"{n['better']} queries better, {n['worse']} worse) | R@100 {r['before']:.4f} -> {r['after']:.4f} "
              f"({r['change']:+.4f} +- {r['se']:.4f})")
    print(json.dumps({"queries": len(qids), **rows}))


if __name__ == "__main__":
    main()
