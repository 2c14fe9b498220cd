"""Fault injection for memret.collection: kill -9 during ingest, damaged files, a full disk.

    python experiments/collection_faults.py --kills 50 --out runs/bench

1. kill -9: a worker process upserts batches of 20 documents (one transaction each; deletes one every
   third batch; saves the vector index every fifth) and prints each committed batch; it is killed at a
   random moment, 0.2-2 s in, ``--kills`` times against the same collection. After each kill the
   collection is reopened and checked: every batch reported committed is whole, no batch is partial,
   SQLite + FTS5 + vectors pass ``Collection.check()``, and a dense search over everything returns
   every document.
2. damaged files: the saved vector index truncated, deleted, or its label garbled -> the open reports the
   damage and rebuilds from SQLite; the database file truncated or overwritten -> StoreCorruptError naming it.
3. full disk: a tmpfs of a few MiB (if this process may mount) or SQLite's max_page_count: the failing
   add raises, nothing committed is lost, the collection reopens clean.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from collection_worker import DIM  # noqa: E402

from memret.collection import Collection, StoreCorruptError  # noqa: E402


def verify(path: Path, committed_total: set[int], size: int = 20) -> dict:
    col = Collection.open(path, encoder=False)
    problems = col.check()
    per: dict[int, int] = {}
    for i in col.ids():
        _, b, _ = i.rsplit("-", 2)
        per[int(b)] = per.get(int(b), 0) + 1
    lost = sorted(b for b in committed_total if per.get(b, 0) < size - 1)
    partial = sorted(b for b, n in per.items() if n not in (size, size - 1))
    n = len(col)
    found = len(col.search(np.ones(DIM), k=n + 1, mode="dense")) if n else 0
    col.close()
    return {"problems": problems, "lost_batches": lost, "partial_batches": partial, "docs": n, "searchable": found,
            "damage": col.damage}


def kills(root: Path, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    path = root / "kill"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    committed: set[int] = set()
    bad = []
    for attempt in range(n):
        # Each run upserts batches 0..399 again (same ids), so batches committed earlier must survive any kill.
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "collection_worker.py"), "ingest", str(path),
                                 "w", "400", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(float(rng.uniform(0.2, 2.0)) + 1.0)  # ~1 s of that is interpreter start-up
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        committed |= {int(line.split()[1]) for line in out.splitlines() if line.startswith("committed")}
        v = verify(path, committed)
        ok = not v["problems"] and not v["lost_batches"] and not v["partial_batches"] and v["searchable"] == v["docs"]
        if not ok or proc.returncode != -signal.SIGKILL:
            bad.append({"attempt": attempt, "returncode": proc.returncode, **v, "stderr": err[-500:]})
        print(f"kill {attempt + 1}/{n}: {len(out.splitlines())} batches this run, {v['docs']} docs, "
              f"{'ok' if ok else 'FAIL'}", flush=True)
    return {"kills": n, "failures": bad, "committed_batches": len(committed)}


def damaged(root: Path) -> dict:
    res = {}
    g = np.random.default_rng(0)
    for how in ("truncate_index", "delete_index", "garble_label", "delete_folder"):
        path = root / how
        col = Collection.open(path, encoder=False, dim=DIM)
        col.add([f"d{i}" for i in range(500)], ["text"] * 500, vectors=g.normal(size=(500, DIM)))
        col.close()
        f = next((path / "vectors").glob("index-*.faiss"))
        if how == "truncate_index":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif how == "delete_index":
            f.unlink()
        elif how == "garble_label":
            (path / "vectors.json").write_text("garbage")
        else:
            shutil.rmtree(path / "vectors")
        col = Collection.open(path)
        n_hits = len(col.search(np.ones(DIM), k=1000, mode="dense"))
        res[how] = {"reported": col.damage, "docs": len(col), "searchable": n_hits}
        col.close()
    for how in ("truncate_db", "overwrite_db"):
        path = root / how
        col = Collection.open(path, encoder=False, dim=DIM)
        col.add([f"d{i}" for i in range(500)], ["text"] * 500, vectors=g.normal(size=(500, DIM)))
        col.close()
        db = path / "collection.sqlite"
        if how == "truncate_db":
            db.write_bytes(db.read_bytes()[:4096])
        else:
            db.write_bytes(os.urandom(db.stat().st_size))
        try:
            col = Collection.open(path)
            res[how] = {"opened": True, "check": col.check()}
            col.close()
        except StoreCorruptError as e:
            res[how] = {"opened": False, "error": str(e)}
    return res


def full_disk(root: Path) -> dict:
    mnt = root / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    g = np.random.default_rng(1)
    res: dict = {"method": "tmpfs 4 MiB" if mounted else "SQLite max_page_count"}
    try:
        col = Collection.open(mnt / "c", encoder=False, dim=64)
        if not mounted:
            col._con().execute("PRAGMA max_page_count=600")
        n_ok, err = 0, None
        for b in range(1000):
            try:
                col.add([f"b{b}-{j}" for j in range(50)], ["some words " * 40] * 50, vectors=g.normal(size=(50, 64)))
                n_ok += 50
            except (sqlite3.OperationalError, OSError) as e:
                err = str(e)
                break
        res["committed_before_full"] = n_ok
        res["error"] = err
        res["after_error"] = len(col)
        try:
            col.close()  # saving the vector index may fail on the full disk: it must not lose anything
        except OSError as e:
            res["close_error"] = str(e)
        col = Collection.open(mnt / "c")  # on the still-full disk
        res["reopened_docs"] = len(col)
        res["reopened_searchable"] = len(col.search(np.ones(64), k=100000, mode="dense"))
        try:
            res["reopened_problems"] = col.check()
        except (sqlite3.OperationalError, OSError) as e:  # the FTS check writes a little
            res["reopened_problems"] = f"check could not run on the full disk: {e}"
        col.close()
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="coll-faults-"))
    try:
        res = {"damaged": damaged(root), "full_disk": full_disk(root), "kill9": kills(root, args.kills, args.seed)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "collection-faults.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
