"""Model selection for Contriever fine-tuning on a validation split carved from the TRAIN qrels (never test).

    python experiments/contriever_val.py --data ../shared/data/beir/scifact --run runs/h7-ft-val \
        --models base=MODEL_DIR e1=runs/h7-ft-val/step-23 ... [--depth 20]

The held-out queries are those ``python -m memret.retrieval.train --holdout F`` recorded in
``<run>/pairs.json``. Encoding the whole corpus per candidate costs ~4-5 minutes on 2 cores, so the
validation corpus is a proxy: the held-out queries' positives plus each one's BM25 top ``depth`` over the full
corpus (hard distractors). Prints dense and hybrid (RRF with BM25 on the same sub-corpus) nDCG@10 / R@100.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from memret.beir import load_beir, score_run, to_run
from memret.beir.data import BeirData
from memret.beir.evaluate import retrieve
from memret.retrieval import BM25Retriever, DenseRetriever, TextEncoder, rrf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True, help="training output folder holding pairs.json")
    ap.add_argument("--models", nargs="+", required=True, help="NAME=PATH pairs")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--cache", default="indices")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    held = json.loads((Path(args.run) / "pairs.json").read_text())["holdout_qids"]
    train = load_beir(args.data, "train")
    qrels = {q: train.qrels[q] for q in held}
    queries = {q: train.queries[q] for q in held}
    bm25 = BM25Retriever(cache_dir=args.cache)
    bm25.index(train.corpus)
    hits = bm25.search([queries[q] for q in held], args.depth)
    keep = {d for rel in qrels.values() for d in rel} | {h.docid for hs in hits for h in hs}
    sub = BeirData("val", {d: train.corpus[d] for d in sorted(keep)}, queries, qrels)
    print(f"validation: {len(held)} held-out train queries, {len(sub.corpus)} documents", flush=True)
    qids = list(sub.queries)
    score = lambda hits: score_run(sub.qrels, to_run(qids, hits, 100))  # noqa: E731
    sparse = retrieve(BM25Retriever(cache_dir=args.cache), sub, k=100)
    rows = {"bm25": score(sparse)}
    for spec in args.models:
        name, path = spec.split("=", 1)
        t0 = time.perf_counter()
        dense = retrieve(DenseRetriever(TextEncoder(path, device="cpu"), cache_dir=None, show_progress=False), sub, 100)
        rows[name] = score(dense)
        rows[name + "+bm25"] = score([rrf([b, d], 60, 101) for b, d in zip(sparse, dense)])
        print(f"{name:>16}: dense nDCG@10 {rows[name]['ndcg_cut_10']:.4f} R@100 {rows[name]['recall_100']:.4f} | "
              f"hybrid nDCG@10 {rows[name + '+bm25']['ndcg_cut_10']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(json.dumps({k: {m: round(v[m], 4) for m in ("ndcg_cut_10", "recall_100")} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
