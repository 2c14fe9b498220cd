"""BEIR evaluation from the command line.

    python -m memret.beir --data DIR [DIR2 ...] --retriever bm25|dense|hybrid [...] \
        [--model NAME_OR_PATH] [--split test] [--out DIR]

For each data set and retriever: writes ``<out>/<dataset>/<retriever>.trec`` and
``<out>/metrics.json``, prints a table (one row per data set, plus the average),
and prints the metrics as one JSON object on its last line, keyed by
pytrec_eval names (``ndcg_cut_10``, ``recall_100``, ...), nested per retriever
when several are run and per data set when several are given.
``hybrid`` fuses the BM25 and dense rankings with :class:`~memret.retrieval.HybridRetriever`: reciprocal
rank fusion (k=60) by default, or ``--fusion interpolate --norm zscore --dense-weight W`` (a weighted sum
of per-query normalised scores; choose W on held-out queries, as experiments/contriever_fusion.py does), reusing the BM25 and dense retrievers'
indexes and hit lists (each corpus is indexed and searched once per retriever).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from memret.beir.data import load_beir
from memret.beir.evaluate import average, score_run, to_run, write_trec
from memret.persist import atomic_write
from memret.retrieval.fusion import HybridRetriever

RETRIEVERS = ("bm25", "dense", "hybrid")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m memret.beir", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="extend", nargs="+", required=True, help="BEIR folder(s)")
    ap.add_argument("--retriever", nargs="+", choices=RETRIEVERS, default=["bm25"])
    ap.add_argument("--model", default="facebook/contriever", help="hub name or local checkpoint folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default="runs/beir")
    ap.add_argument("--k", type=int, default=1000, help="hits per query")
    ap.add_argument("--k1", type=float, default=0.9)
    ap.add_argument("--b", type=float, default=0.4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=None, help="passage/query truncation (default: the model's)")
    ap.add_argument("--cache", default="indices", help="where Lucene indexes and corpus embeddings are kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fusion", choices=["rrf", "interpolate"], default="rrf", help="how hybrid fuses")
    ap.add_argument("--norm", choices=["minmax", "zscore", "none"], default="minmax",
                    help="score normalisation of --fusion interpolate")
    ap.add_argument("--dense-weight", type=float, default=0.5,
                    help="--fusion interpolate: weight of the dense scores (BM25 gets 1 - W)")
    ap.add_argument("--keep-self", action="store_true", help="do not drop a query's own id from its results")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if not 0.0 <= args.dense_weight <= 1.0:
        raise SystemExit(f"--dense-weight must be in [0, 1], got {args.dense_weight}")
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    wanted = list(dict.fromkeys(args.retriever))
    need = set(wanted) | ({"bm25", "dense"} if "hybrid" in wanted else set())
    datasets = [load_beir(d, args.split) for d in args.data]  # fail on bad data before any model loads

    retrievers = {}
    if "bm25" in need:
        from memret.retrieval.bm25 import BM25Retriever

        retrievers["bm25"] = BM25Retriever(k1=args.k1, b=args.b, threads=args.threads, cache_dir=args.cache)
    if "dense" in need:
        from memret.retrieval.dense import DenseRetriever
        from memret.retrieval.encoder import TextEncoder

        enc = TextEncoder(args.model, batch_size=args.batch_size, query_max_length=args.max_length,
                          passage_max_length=args.max_length)
        retrievers["dense"] = DenseRetriever(enc, cache_dir=args.cache)

    exclude = not args.keep_self
    depth = args.k + int(exclude)  # one deeper than k, so dropping a query's own id still leaves k
    hybrid = None
    if "hybrid" in wanted:  # fuses the two retrievers above: their indexes and hit lists are reused
        hybrid = HybridRetriever([retrievers["bm25"], retrievers["dense"]], method=args.fusion, rrf_k=60, depth=depth,
                                 weights=[1.0 - args.dense_weight, args.dense_weight], norm=args.norm)

    results: dict[str, dict[str, dict]] = {r: {} for r in wanted}
    timing: dict[str, dict[str, float]] = {r: {} for r in need}
    for data in datasets:
        qids = list(data.queries)
        hits = {}
        for name in ("bm25", "dense"):
            if name in need:
                t0 = time.perf_counter()
                retrievers[name].index(data.corpus)
                hits[name] = retrievers[name].search([data.queries[q] for q in qids], depth)
                timing[name][data.name] = time.perf_counter() - t0
        if hybrid is not None:
            t0 = time.perf_counter()
            hits["hybrid"] = hybrid.fuse([hits["bm25"], hits["dense"]], depth)
            fuse_s = time.perf_counter() - t0
            timing["hybrid"][data.name] = timing["bm25"][data.name] + timing["dense"][data.name] + fuse_s
        for name in wanted:
            run = to_run(qids, hits[name], args.k, exclude)
            write_trec(run, out / data.name / f"{name}.trec", tag=f"memret-{name}")
            results[name][data.name] = score_run(data.qrels, run)

    _print_table(results, timing, [d.name for d in datasets])
    summary = json.dumps({"metrics": results, "wall_s": timing, "args": vars(args)}, indent=2)
    atomic_write(out / "metrics.json", lambda f: f.write(summary.encode()))
    final = {r: (per[datasets[0].name] if len(datasets) == 1 else {**per, "average": average(per)})
             for r, per in results.items()}
    if len(wanted) == 1:
        final = final[wanted[0]]
    print(json.dumps(final))
    return final


def _print_table(results: dict, timing: dict, names: list[str]) -> None:
    cols = list(results)
    head = f"{'dataset':<16}" + "".join(f"{c + ' nDCG@10':>16}{'R@100':>8}{'s':>7}" for c in cols)
    print(head)
    print("-" * len(head))
    rows = names + (["average"] if len(names) > 1 else [])
    for ds in rows:
        line = f"{ds:<16}"
        for c in cols:
            m = results[c][ds] if ds != "average" else average(results[c])
            t = timing.get(c, {}).get(ds, sum(timing.get(c, {}).values()) / max(len(names), 1))
            line += f"{m['ndcg_cut_10']:>16.4f}{m['recall_100']:>8.4f}{t:>7.1f}"
        print(line)


if __name__ == "__main__":
    main()
