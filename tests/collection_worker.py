"""Worker processes for tests/test_collection_procs.py and experiments/collection_faults.py.

    python tests/collection_worker.py ingest PATH PREFIX BATCHES BATCH_SIZE   # prints "committed <b>" per batch
    python tests/collection_worker.py read PATH SECONDS                        # searches; prints counts seen
"""

from __future__ import annotations

import sys
import time

import numpy as np

from memret.collection import Collection

DIM = 8


def batch_vectors(prefix: str, b: int, n: int) -> np.ndarray:
    seed = (hash(prefix) % 1000) * 100_000 + b  # deterministic per process run only; content is not checked
    return np.random.default_rng(abs(seed)).normal(size=(n, DIM)).astype(np.float32) + 0.01


def ingest(path: str, prefix: str, batches: int, size: int) -> None:
    col = Collection.open(path, encoder=False, dim=DIM, timeout=120)
    for b in range(batches):
        ids = [f"{prefix}-{b}-{j}" for j in range(size)]
        texts = [f"batch {b} doc {j} shared words {prefix}" for j in range(size)]
        col.upsert(ids, texts, [{"batch": b, "writer": prefix}] * size, vectors=batch_vectors(prefix, b, size))
        if b % 3 == 2:
            col.delete([f"{prefix}-{b}-0"])
        if b % 5 == 4:  # save the vector index now and then, so a kill can land inside a save too
            col.checkpoint()
        print(f"committed {b}", flush=True)
    col.close()


def read(path: str, seconds: float) -> None:
    col = Collection.open(path, encoder=False, dim=DIM, timeout=120)
    deadline = time.monotonic() + seconds
    q = np.ones(DIM, np.float32)
    searches = 0
    while time.monotonic() < deadline:
        n = len(col)  # writers add 5 and delete at most 1 per batch: once 5 are there, 5 stay
        hits = col.search(q, k=5, mode="dense", where={"batch": {"$gte": 0}})
        bm = col.search("shared words", k=5, mode="bm25")
        if n >= 5:
            assert len(hits) == 5 and len(bm) == 5, (len(hits), len(bm), n)
        searches += 1
    print(f"read {searches} {len(col)}", flush=True)
    col.close()


if __name__ == "__main__":
    cmd, path, *rest = sys.argv[1:]
    if cmd == "ingest":
        ingest(path, rest[0], int(rest[1]), int(rest[2]))
    elif cmd == "read":
        read(path, float(rest[0]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
