"""Unlabelled images for pre-training, as uint8 (3, H, W) tensors of one size (views are made later, on
the device, by :class:`~memret.pretrain.views.MultiCrop`).

Sources: the CIFAR-10 files of ``../shared/data`` (``"cifar10"``), an image folder tree (every file under
it whose suffix PIL reads, labels from the first folder level when there are several), or any torch
dataset yielding PIL images or tensors (``from_dataset``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class UInt8Images(Dataset):
    """In-memory uint8 images (N, H, W, 3) with integer labels (-1 where unknown).

    ``__getitem__`` gives ``(uint8 (3, H, W), label)``; :meth:`batch` stacks rows without a DataLoader.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray | None = None) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        self.images = images
        self.targets = np.full(len(images), -1, np.int64) if targets is None else np.asarray(targets, np.int64)
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]).permute(2, 0, 1), int(self.targets[i])

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        """uint8 (len(idx), 3, H, W)."""
        return torch.from_numpy(self.images[np.asarray(idx)]).permute(0, 3, 1, 2).contiguous()

    def take(self, rows: np.ndarray) -> "UInt8Images":
        """The given rows (a view of the same arrays where numpy can)."""
        rows = np.asarray(rows)
        return UInt8Images(self.images[rows], self.targets[rows])

    def subset(self, n: int, seed: int = 0) -> "UInt8Images":
        """``n`` rows drawn without replacement (all of them when ``n >= len``), in index order."""
        if n >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return UInt8Images(self.images[rows], self.targets[rows])


class FolderImages(Dataset):
    """Images under a folder, decoded lazily, resized (shorter side) and centre-cropped to ``size``."""

    def __init__(self, root: str | os.PathLike, size: int) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no image folder at {root}")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        classes = sorted({p.relative_to(root).parts[0] for p in self.files if len(p.relative_to(root).parts) > 1})
        index = {c: i for i, c in enumerate(classes)}
        self.targets = np.array([index.get(p.relative_to(root).parts[0], -1) for p in self.files], np.int64)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return pil_to_uint8(im.convert("RGB"), self.size), int(self.targets[i])


def pil_to_uint8(im: Any, size: int) -> torch.Tensor:
    """A PIL image resized (shorter side = ``size``) and centre-cropped: uint8 (3, size, size)."""
    from PIL import Image

    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class FromDataset(Dataset):
    """Any dataset yielding ``(image, label)`` or ``image`` (PIL, or a uint8 / [0, 1] float tensor (3, H, W))."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset, self.size = dataset, int(size)
        self.targets = np.asarray(getattr(dataset, "targets", [-1] * len(dataset)), np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.dataset[i]
        img = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(img, torch.Tensor):
            if img.dtype != torch.uint8:
                img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
            if tuple(img.shape[-2:]) != (self.size, self.size):
                raise ValueError(f"tensor images must already be {self.size}x{self.size}, got {tuple(img.shape)}")
            return img, int(self.targets[i])
        return pil_to_uint8(img.convert("RGB"), self.size), int(self.targets[i])


def load_images(data: str, root: str | os.PathLike | None = None, size: int = 32) -> tuple[Dataset, Dataset | None]:
    """(train, test) image sets: ``"cifar10"``, ``"cifar100"``, ``"digits"`` (memret.incremental's loaders; test =
    their test split), or an image folder (test = ``None``).

    Raises:
        FileNotFoundError: the data is not where it was said to be (with what was expected).
    """
    if data in ("cifar10", "cifar100", "digits"):
        from memret.incremental.data import load_dataset

        d = load_dataset(data, root=root)
        return (UInt8Images(_uint8(d.train), np.asarray(d.train.targets)),
                UInt8Images(_uint8(d.test), np.asarray(d.test.targets)))
    path = Path(root or data)
    if path.is_dir():
        return FolderImages(path, size), None
    raise FileNotFoundError(f"--data {data!r}: neither 'cifar10' nor an image folder (root={root})")


def _uint8(ds: Any) -> np.ndarray:
    """The uint8 (N, H, W, 3) array behind memret.incremental's ``ArrayImages``."""
    images = getattr(ds, "images", None)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"expected memret.incremental ArrayImages with uint8 .images, got {type(ds).__name__}")
    return images
