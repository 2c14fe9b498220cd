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
