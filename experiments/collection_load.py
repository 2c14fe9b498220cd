"""Load test of the Collection HTTP API on localhost: throughput and p50/p99 latency.

    python experiments/collection_load.py --data ../shared/data/beir/scifact --seconds 20 --clients 1 4 16 \
        --out runs/bench

Builds a collection of the SciFact corpus (vectors from runs/bench/collection-scifact-<variant>.npy
when bench_collection.py left them there for the default encoder's variant, else encoded now),
starts ``python -m memret.collection serve`` in its own process, and runs closed-loop clients (one
thread and one HTTP connection each) sending SciFact queries to ``POST /search`` (hybrid, k=10; the
server encodes each query with the packaged MiniLM through ONNX Runtime). Phases: search only at each
client count, then the largest count plus one ingest client that keeps posting batches of 8 new
documents as text (encoded by the server).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(path: Path, data, cache: Path) -> None:
    from memret.collection import Collection
    from memret.retrieval import doc_text

    ids = list(data.corpus)
    texts = [doc_text(data.corpus[i]) for i in ids]
    g = np.random.default_rng(0)
    metas = [{"year": int(y)} for y in g.integers(2000, 2024, len(ids))]
    col = Collection.open(path)
    X = np.load(cache) if cache.exists() else col.encoder.encode_passages(texts)
    for s in range(0, len(ids), 1000):
        col.add(ids[s : s + 1000], texts[s : s + 1000], metas[s : s + 1000], vectors=X[s : s + 1000])
    col.close()


def phase(base: str, queries: list[str], clients: int, seconds: float, ingest: bool) -> dict:
    import httpx

    lat: list[list[float]] = [[] for _ in range(clients)]
    ingested = [0]
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def searcher(c: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            i = c
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = http.post("/search", json={"query": queries[i % len(queries)], "k": 10, "mode": "hybrid"})
                lat[c].append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                i += clients

    def ingester() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            b = 0
            while time.monotonic() < stop:
                docs = [{"id": f"load-{os.getpid()}-{time.time_ns()}-{j}", "text": queries[(b * 8 + j) % len(queries)],
                         "metadata": {"year": 2024}} for j in range(8)]
                r = http.post("/documents", json={"documents": docs})
                if r.status_code != 201:
                    errors.append(f"ingest {r.status_code} {r.text[:200]}")
                else:
                    ingested[0] += 8
                b += 1

    threads = [threading.Thread(target=searcher, args=(c,)) for c in range(clients)]
    if ingest:
        threads.append(threading.Thread(target=ingester))
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    all_lat = np.array([x for l in lat for x in l]) * 1000
    return {"clients": clients, "ingest_client": ingest, "searches": int(all_lat.size),
            "search_qps": all_lat.size / wall, "p50_ms": float(np.percentile(all_lat, 50)),
            "p99_ms": float(np.percentile(all_lat, 99)), "ingested_docs_per_s": ingested[0] / wall,
            "errors": errors[:5], "n_errors": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/beir/scifact")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    import httpx

    from memret.beir import load_beir

    data = load_beir(args.data)
    root = Path(tempfile.mkdtemp(prefix="coll-load-"))
    path = root / "scifact"
    from memret.collection.embed import DefaultEncoder

    variant = "int8" if DefaultEncoder()._enc.quantize else "fp32"
    build(path, data, Path(args.out) / f"collection-scifact-{variant}.npy")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MEMRET_API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "memret.collection", "serve", str(path), "--port", str(port)],
                              env=env)
    base = f"http://127.0.0.1:{port}"
    res: dict = {"docs": len(data.corpus), "phases": []}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.3)
        queries = list(data.queries.values())
        httpx.post(base + "/search", json={"query": "warm up", "k": 10}, timeout=120)  # ONNX session start
        for c in args.clients:
            res["phases"].append(phase(base, queries, c, args.seconds, ingest=False))
            print(json.dumps(res["phases"][-1]), flush=True)
        res["phases"].append(phase(base, queries, max(args.clients), args.seconds, ingest=True))
        print(json.dumps(res["phases"][-1]), flush=True)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "collection-load.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
