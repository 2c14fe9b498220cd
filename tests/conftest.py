import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def synthetic(n: int, d: int, seed: int = 0, clusters: int = 8) -> np.ndarray:
    """Clustered float32 vectors (SyntheticDataset-style), so IVF/HNSW have structure to find."""
    g = np.random.default_rng(seed)
    centers = g.normal(size=(clusters, d)) * 3
    return (centers[g.integers(0, clusters, n)] + g.normal(size=(n, d))).astype(np.float32)


def blobs(n_per: int, n_classes: int, d: int = 16, seed: int = 0, spread: float = 3.0):
    """(n_per * n_classes, d) float32 Gaussian feature blobs, unit noise around class centres drawn with seed 99
    (the same centres for every ``seed``), and their (N,) labels, class by class."""
    g = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(n_classes, d)) * spread
    y = np.repeat(np.arange(n_classes), n_per)
    return (centers[y] + g.normal(size=(len(y), d))).astype(np.float32), y


def colour_blobs(n_per: int = 30, n_classes: int = 4, seed: int = 0, noise: float = 20.0):
    """(N, 32, 32, 3) uint8 images, one colour per class plus Gaussian noise, and their (N,) labels."""
    g = np.random.default_rng(seed)
    colors = np.random.default_rng(5).integers(0, 255, size=(n_classes, 3))
    y = np.repeat(np.arange(n_classes), n_per)
    img = np.clip(colors[y][:, None, None, :] + g.normal(0, noise, (len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
    return img, y


@pytest.fixture
def data():
    return synthetic(800, 32, seed=1), synthetic(25, 32, seed=2)


def run_ranks(worker: Path, argv, n: int = 2, timeout: float = 300) -> None:
    """Run ``python worker *argv(rank)`` for ranks 0..n-1 as one torch.distributed job on localhost (a free
    port, memret importable); fail with the tail of each rank's stderr unless every rank exits 0."""
    with socket.socket() as s:  # a port nobody holds, rather than a guess that can collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, str(worker), *map(str, argv(r))], env=env, stderr=subprocess.PIPE,
                              text=True) for r in range(n)]
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(e[-3000:] for e in errs)
