import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def synthetic(n: int, d: int, seed: int = 0, clusters: int = 8) -> np.ndarray:
    """Clustered float32 vectors (SyntheticDataset-style), so IVF/HNSW have structure to find."""
    g = np.random.default_rng(seed)
    centers = g.normal(size=(clusters, d)) * 3
    return (centers[g.integers(0, clusters, n)] + g.normal(size=(n, d))).astype(np.float32)


@pytest.fixture
def data():
    return synthetic(800, 32, seed=1), synthetic(25, 32, seed=2)
