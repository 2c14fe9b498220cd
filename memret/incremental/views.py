"""Frozen features of several views of every image (``TrainConfig.mirror_views`` / ``shift_views``): each view
encoded once, cached beside :func:`memret.incremental.run.feature_cache_file`'s file, and read or summed one at a
time (:func:`mean_views`). The translated views of one flip, encoded together, go into memmapped files beside the
cache (unlinked at once) when it is written, so that they are not all in memory either; under ``torch.distributed``
they are gathered in memory.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from memret.incremental.data import LabelledData
from memret.incremental.features import build_encoder, extract_views
from memret.persist import atomic_write

log = logging.getLogger(__name__)

__all__ = ["cached_views", "mean_views"]


def cached_views(data: LabelledData, encoder: str | torch.nn.Module, encoder_kw: dict, first, init_seed: int,
                 feat_file: Path, mirror: bool = False, device: str = "cpu",
                 write: bool = True, shift: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` frozen features of each view: the images, then (``mirror``) their horizontal mirrors,
    then (``shift``) the images translated by ``(shift, shift)`` and ``(-shift, -shift)`` pixels (and, with
    ``mirror``, the translated mirrors); see :func:`~memret.incremental.features.view`.

    Each view is read from its cache (``feat_file``; the other views' beside it, e.g. ``<stem>-hflip.npz``,
    ``<stem>-dx2dy2.npz``) when the encoder is a registry name, or else encoded, by the encoder
    :func:`build_encoder` fits on task ``first``, and cached (``write``: rank 0 only). The encoder is fitted at
    most once per call; a view encoded in a later call than another refits it, seeded, which matches the first
    fit up to float noise (measured: features within 0.015, unit variance). The translated views of one flip
    are encoded together (:func:`~memret.incremental.features.extract_views`); views just encoded with ``write``
    come back as ``np.memmap`` arrays of unlinked files (their disk is freed with them).
    """
    views = dict(_views(data, encoder, encoder_kw, first, init_seed, feat_file, mirror, device, write, shift))
    return [views[flip, s] for flip, s in _view_keys(mirror, shift)]


def mean_views(data: LabelledData, encoder: str | torch.nn.Module, encoder_kw: dict, first, init_seed: int,
               feat_file: Path, mirror: bool = False, device: str = "cpu", write: bool = True,
               shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The mean over :func:`cached_views`' views (``TrainConfig.mirror_views`` / ``shift_views``), summed as each
    view is read or encoded: one view in memory beside the sum, not all six (six views of 60,000 CIFAR images at
    12,800 dimensions would be 18 GB); one flip's encoded group waits in memmapped files when the cache is written
    (in memory with ``write=False``)."""
    views = _views(data, encoder, encoder_kw, first, init_seed, feat_file, mirror, device, write, shift)
    n = len(_view_keys(mirror, shift))
    _, (tr, te) = next(views)
    if n == 1:  # one view: the arrays as read or encoded, no copy
        views.close()
        return tr, te
    total = [tr.astype(np.float32, copy=True), te.astype(np.float32, copy=True)]
    tr = te = None
    for _, (tr, te) in views:
        total[0] += tr
        total[1] += te
        tr = te = None  # not held while the generator encodes the next flip's views (at 19,200-d: 4.6 GB a view)
    total[0] /= n
    total[1] /= n
    return total[0], total[1]


def _view_axes(mirror: bool, shift: int) -> tuple[list[bool], list[tuple[int, int]]]:
    """The flips and the translations whose every pair is a view."""
    return [False, True] if mirror else [False], [(0, 0)] + ([(shift, shift), (-shift, -shift)] if shift else [])


def _view_keys(mirror: bool, shift: int) -> list[tuple[bool, tuple[int, int]]]:
    flips, shifts = _view_axes(mirror, shift)
    return [(flip, s) for s in shifts for flip in flips]


def _views(data, encoder, encoder_kw, first, init_seed, feat_file, mirror, device, write, shift):
    """Yield ``((flip, shift), (train, test))`` for every view, read from its cache or encoded (one flip's
    missing views together) and cached; see :func:`cached_views`."""
    enc = None
    flips, shifts = _view_axes(mirror, shift)
    for flip in flips:
        files = {s: feat_file.with_name(feat_file.stem + ("-hflip" if flip else "") +
                                        (f"-dx{s[0]}dy{s[1]}" if s != (0, 0) else "") + ".npz") for s in shifts}
        todo = [s for s in shifts if not (files[s].is_file() and isinstance(encoder, str))]
        for s in shifts:
            if s not in todo:
                cached = np.load(files[s], allow_pickle=False)
                yield (flip, s), (cached["train"], cached["test"])
        if not todo:
            continue
        if enc is None:
            enc, _ = build_encoder(encoder, data, first, encoder_kw, init_seed)
        t0 = time.perf_counter()
        which = f"{len(todo)} view(s){', mirrored' if flip else ''}: "
        disk = write and len(todo) > 1  # several views of one flip: each into a file, not all in memory
        if disk:
            feat_file.parent.mkdir(parents=True, exist_ok=True)
        F = [extract_views(enc, part, todo, device=device, desc=f"{which}{name} features", flip=flip,
                           alloc=(lambda k, shape: _disk_array(feat_file.parent, shape)) if disk else None)
             for part, name in ((data.train, "train"), (data.test, "test"))]
        log.info("encoded %d images, %s in %.1fs", len(F[0][0]) + len(F[1][0]), which, time.perf_counter() - t0)
        for k, s in enumerate(todo):
            tr, te = F[0][k], F[1][k]
            F[0][k] = F[1][k] = None  # the caller's reference is the only one once it is yielded
            if write:
                atomic_write(files[s], lambda f: np.savez(f, train=tr, test=te))
            yield (flip, s), (tr, te)
            tr = te = None
        F = None


def _disk_array(folder: Path, shape: tuple[int, int]) -> np.ndarray:
    """A float32 array of ``shape`` memmapped from a file in ``folder``: its space reserved first (a full disk
    raises ``OSError`` here rather than killing the process when a page is written) and its name unlinked at
    once, so nothing is left behind even by a killed process, and its disk is freed with the last reference."""
    nbytes = int(np.prod(shape)) * 4
    if nbytes == 0:
        return np.empty(shape, np.float32)
    fd, path = tempfile.mkstemp(dir=folder, prefix=".view-", suffix=".f32")
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as e:  # a file system without fallocate: a sparse file
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, nbytes)
        return np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
    finally:
        os.close(fd)
        os.unlink(path)
