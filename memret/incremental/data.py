"""Labelled image data sets for class-incremental runs, by name or as any torch dataset.

Every loader returns a :class:`LabelledData`: train and test torch datasets that
yield ``(image tensor, label)`` and carry ``.targets`` (what Avalanche needs),
plus the number of classes and the input size.

- ``cifar10``: the JPEG-in-npz files of ``../shared/data/cifar10`` (``train.npz``/``test.npz``)
  or torchvision's ``cifar-10-batches-py`` folder.
- ``cifar100``: torchvision's ``cifar-100-python`` folder.
- ``imagenet1k``: an ImageFolder tree ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``
  (``root=`` or ``$MEMRET_IMAGENET``).
- ``digits``: scikit-learn's 8x8 digits, upsampled to 32x32 RGB: always available, the embedded default.

:meth:`LabelledData.fingerprint` names the data's content (pixels, labels and
normalisation of in-memory images; resolved file paths and labels of image
folders), so cached features of two data sets that share a name never mix.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class LabelledData:
    name: str
    train: Dataset
    test: Dataset
    n_classes: int
    image_size: int

    def fingerprint(self) -> str:
        """A hex digest of where the data came from and what it holds; keys the feature cache.

        In-memory images (:class:`ArrayImages`) hash their pixels, labels and normalisation; image
        folders their resolved root, file list, labels and preprocessing; any other dataset its type,
        length and labels, or its own ``fingerprint()`` when it has one.
        """
        h = hashlib.blake2b(digest_size=16)
        for part in (self.name, str(self.n_classes), str(self.image_size),
                     _dataset_fingerprint(self.train), _dataset_fingerprint(self.test)):
            h.update(part.encode() + b"\0")
        return h.hexdigest()


def _dataset_fingerprint(ds: Dataset) -> str:
    """One split's identity; see :meth:`LabelledData.fingerprint`."""
    if hasattr(ds, "fingerprint"):
        return str(ds.fingerprint())
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(ds).__module__}.{type(ds).__qualname__}:{len(ds)}".encode())
    targets = getattr(ds, "targets", None)
    if targets is not None:
        h.update(np.asarray(targets, dtype=np.int64).tobytes())
    return h.hexdigest()


class ArrayImages(Dataset):
    """uint8 (N, H, W, 3) images in memory -> normalised float tensors (3, H, W)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, mean=CIFAR_MEAN, std=CIFAR_STD) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = [int(t) for t in targets]
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255)
        return (x - self._mean) / self._std, self.targets[i]

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        """A stacked, normalised batch of the given rows (fast path for feature extraction)."""
        x = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float().div_(255)
        return (x - self._mean) / self._std

    def fingerprint(self) -> str:
        """Hex digest of the pixels, labels and normalisation (~0.2 s for CIFAR-10's 50,000 images)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).data)
        h.update(np.asarray(self.targets, dtype=np.int64).tobytes())
        h.update(torch.cat([self._mean, self._std]).numpy().tobytes())
        return h.hexdigest()


class FeatureDataset(Dataset):
    """Precomputed (N, D) features with labels, as a torch dataset with ``.targets`` (for Avalanche)."""

    def __init__(self, features: np.ndarray, targets: np.ndarray) -> None:
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} feature rows but {len(targets)} targets")
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.features[i], self.targets[i]


def _decode_jpeg_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    d = np.load(path, allow_pickle=False)
    jpeg, off, labels = d["jpeg"], d["offsets"], d["labels"]
    imgs = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[off[i]: off[i + 1]].tobytes())).convert("RGB"))
                     for i in range(len(off) - 1)])
    return imgs, labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike) -> LabelledData:
    root = Path(root)
    if (root / "train.npz").is_file() and (root / "test.npz").is_file():
        xtr, ytr = _decode_jpeg_npz(root / "train.npz")
        xte, yte = _decode_jpeg_npz(root / "test.npz")
        return LabelledData("cifar10", ArrayImages(xtr, ytr), ArrayImages(xte, yte), 10, 32)
    return _torchvision_cifar("CIFAR10", "cifar-10-batches-py", root, 10)


def _torchvision_cifar(cls: str, folder: str, root: Path, n: int) -> LabelledData:
    import torchvision

    if not (root / folder).is_dir():
        raise FileNotFoundError(
            f"no {cls} at {root}: expected {root / folder} (torchvision layout)"
            + (" or train.npz/test.npz" if cls == "CIFAR10" else "")
            + f"; torchvision.datasets.{cls}('{root}', download=True) fetches it where the network allows")
    ds = getattr(torchvision.datasets, cls)
    tr, te = ds(str(root), train=True, download=False), ds(str(root), train=False, download=False)
    return LabelledData(cls.lower(), ArrayImages(tr.data, np.asarray(tr.targets)),
                        ArrayImages(te.data, np.asarray(te.targets)), n, 32)


def load_cifar100(root: str | os.PathLike) -> LabelledData:
    return _torchvision_cifar("CIFAR100", "cifar-100-python", Path(root), 100)


class _Folder(Dataset):
    """torchvision ImageFolder with ImageNet-style eval preprocessing (resize 256, centre crop)."""

    def __init__(self, root: Path, size: int, classes: list[str]) -> None:
        import torchvision
        from torchvision import transforms as T

        tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                        T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.ds = torchvision.datasets.ImageFolder(str(root), transform=tf)
        if self.ds.classes != classes:
            raise ValueError(f"{root} has other classes than the train folder")
        self.targets = list(self.ds.targets)
        self.root, self.size = Path(root).resolve(), size

    def fingerprint(self) -> str:
        """Hex digest of the resolved root, the image files (paths) with labels, and the input size.

        Files are not read (ImageNet has 1.3M): a file replaced in place under the same name goes
        unnoticed, so clear the feature cache after editing a folder's images.
        """
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.root}:{self.size}".encode())
        for path, target in self.ds.samples:
            h.update(f"{path}\t{target}\n".encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i]


def load_imagenet1k(root: str | os.PathLike | None, image_size: int = 224) -> LabelledData:
    """ImageNet-1k (or any ImageFolder tree with train/ and val/ of the same classes)."""
    root = root or os.environ.get("MEMRET_IMAGENET")
    if root is None:
        raise FileNotFoundError("imagenet1k needs root=DIR (or $MEMRET_IMAGENET) holding train/<class>/ and "
                                "val/<class>/ image folders")
    root = Path(root)
    missing = [str(root / s) for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"imagenet1k: missing {missing}; expected ImageFolder trees train/<wnid>/*.JPEG "
                                "and val/<wnid>/*.JPEG (val sorted into class folders)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    train = _Folder(root / "train", image_size, classes)
    return LabelledData("imagenet1k", train, _Folder(root / "val", image_size, classes), len(classes), image_size)


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> LabelledData:
    """scikit-learn's digits (1,797 images, 10 classes) as 32x32 RGB: the data set every machine has."""
    from sklearn.datasets import load_digits as _load

    x, y = _load(return_X_y=True)
    img = (x.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    img = np.repeat(np.repeat(img, 4, axis=1), 4, axis=2)  # 32x32, nearest
    img = np.repeat(img[..., None], 3, axis=3)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = (0.5,) * 3, (0.5,) * 3
    return LabelledData("digits", ArrayImages(img[tr], y[tr], mean, std), ArrayImages(img[te], y[te], mean, std), 10, 32)


def load_dataset(name: str | Any, root: str | os.PathLike | None = None) -> LabelledData:
    """A named data set, or a ``LabelledData`` passed through.

    Raises:
        KeyError: unknown name (lists the known ones).
        FileNotFoundError: the data is not at ``root`` (says what is expected where).
    """
    if isinstance(name, LabelledData):
        return name
    loaders = {
        "cifar10": lambda: load_cifar10(root or _default_root("cifar10")),
        "cifar100": lambda: load_cifar100(root or _default_root("cifar100")),
        "imagenet1k": lambda: load_imagenet1k(root),
        "digits": load_digits,
    }
    if name not in loaders:
        raise KeyError(f"unknown data set {name!r}; known: {sorted(loaders)} (or pass a LabelledData)")
    return loaders[name]()


def _default_root(name: str) -> Path:
    for cand in (os.environ.get("MEMRET_DATA"), "../shared/data", "shared/data", "data"):
        if cand and (Path(cand) / name).is_dir():
            return Path(cand) / name
    raise FileNotFoundError(f"{name}: pass root=DIR, or set MEMRET_DATA to a folder holding {name}/")
