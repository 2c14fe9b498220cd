"""Collection across processes and threads: kill -9 during ingest, concurrent writers and readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from memret.collection import Collection

WORKER = str(Path(__file__).with_name("collection_worker.py"))
ROOT = str(Path(__file__).resolve().parents[1])


def spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def check_batches(path: Path, prefix: str, committed: int, size: int) -> None:
    """Every reported batch is fully there; no batch is partly there; vectors and BM25 agree with SQLite."""
    col = Collection.open(path, encoder=False)
    assert col.check() == []
    per_batch: dict[int, int] = {}
    for i in col.ids():
        p, b, _ = i.rsplit("-", 2)
        assert p == prefix
        per_batch[int(b)] = per_batch.get(int(b), 0) + 1
    for b in range(committed):
        assert per_batch.get(b) in (size, size - 1), f"committed batch {b} incomplete: {per_batch.get(b)}"
    for b, n in per_batch.items():
        assert n in (size, size - 1), f"batch {b} partly written ({n} of {size})"
    n = len(col)
    assert len(col.search(np.ones(8), k=n + 5, mode="dense")) == n  # the vector index holds every document
    assert col.count({"writer": prefix}) == n
    col.close()


def test_kill_9_during_ingest_loses_nothing_committed(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "k"
    total = 0
    for attempt in range(4):
        proc = spawn("ingest", str(path), "w", "400", "20")
        committed = 0
        # kill after a random number of reported batches (not after a wall-clock delay: on a fast, idle machine
        # the worker finished all 400 batches inside the delay and exited 0), a random moment into the next one
        stop_after = int(rng.integers(1, 40))
        while committed < stop_after:  # read "committed b" lines until the kill
            line = proc.stdout.readline()
            if not line:
                break
            committed = int(line.split()[1]) + 1
        time.sleep(float(rng.uniform(0, 0.02)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().splitlines():  # lines printed before the kill but not yet read
            committed = int(line.split()[1]) + 1
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        total += committed
        check_batches(path, "w", committed, 20)
    assert total > 0  # the workers did get some batches in before being killed


def test_concurrent_writer_and_reader_processes(tmp_path):
    path = tmp_path / "mp"
    Collection.open(path, encoder=False, dim=8).close()
    writers = [spawn("ingest", str(path), f"p{i}", "15", "5") for i in range(3)]
    readers = [spawn("read", str(path), "4") for _ in range(2)]
    for p in writers + readers:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert "locked" not in err
    col = Collection.open(path)
    assert len(col) == 3 * (15 * 5 - 5)  # every third batch deleted one doc
    assert col.check() == []
    for i in range(3):
        assert col.count({"writer": f"p{i}"}) == 70
    col.close()


def test_threads_share_one_collection(tmp_path):
    col = Collection.open(tmp_path / "t", encoder=False, dim=8)
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            for b in range(10):
                ids = [f"t{t}-{b}-{j}" for j in range(4)]
                col.add(ids, ["alpha beta"] * 4, [{"t": t}] * 4, vectors=np.random.default_rng(b).normal(size=(4, 8)))
        except BaseException as e:  # noqa: BLE001 (collected and re-raised in the main thread)
            errors.append(e)

    def read() -> None:
        try:
            for _ in range(30):
                col.search(np.ones(8), k=3, mode="dense", where={"t": {"$in": [0, 1]}})
                col.search("alpha", k=3, mode="bm25")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(3)] + [threading.Thread(target=read)
                                                                               for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(col) == 120 and len(col.search(np.ones(8), k=200, mode="dense")) == 120
    col.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_opens_its_own_connections(tmp_path):
    col = Collection.open(tmp_path / "f", encoder=False, dim=8)
    col.add(["a"], ["x"], vectors=np.ones((1, 8)))
    pid = os.fork()
    if pid == 0:  # child: the inherited handle must work on fresh connections
        try:
            col.add(["b"], ["y"], vectors=np.ones((1, 8)))
            os._exit(0 if len(col) == 2 else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(col) == 2 and len(col.search(np.ones(8), k=5, mode="dense")) == 2
    col.close()
