"""Encoding a data set with an encoder: batched, progress-barred, split across ``torch.distributed`` ranks.

Used by :func:`memret.incremental.run` (frozen features, cached) and by the
encoder trainer (:mod:`memret.incremental.backbone`, which re-encodes the memory
after every task).
"""

from __future__ import annotations

import numpy as np
import torch

from memret.incremental.data import ArrayImages, LabelledData
from memret.incremental.streams import Task
from memret.incremental.training import seeded_init


def batches(data, rows: np.ndarray, batch: int):
    """Stacked image batches of ``data``'s ``rows``, in order."""
    for s in range(0, len(rows), batch):
        idx = rows[s:s + batch]
        if isinstance(data, ArrayImages):
            yield data.batch(idx)
        else:
            yield torch.stack([data[int(i)][0] for i in idx])


def view(x: torch.Tensor, flip: bool = False, shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(B, C, H, W) images mirrored left-right (``flip``), then translated by ``shift = (dx, dy)`` pixels
    (content moves right and down for positive values; the uncovered border is the image reflected)."""
    if flip:
        x = x.flip(-1)
    dx, dy = (int(v) for v in shift)
    if dx or dy:
        h, w = x.shape[-2:]
        if not (abs(dx) < w and abs(dy) < h):
            raise ValueError(f"shift {shift} must be smaller than the {w}x{h} image")
        x = torch.nn.functional.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)), mode="reflect")
        x = x[..., abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]
    return x


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, data, batch: int = 256, device: str = "cpu",
                     desc: str = "features", rows: np.ndarray | None = None, flip: bool = False,
                     shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(N, D) float32 features of every sample of ``data`` (or of ``rows``, in that order), with a progress bar.

    ``flip``, ``shift``: encode each image's :func:`view` instead (``TrainConfig.mirror_views`` and ``shift_views``).

    Under an initialised ``torch.distributed`` group each rank encodes every
    world_size-th sample and the parts are all-gathered, so all ranks return all rows.
    """
    return extract_views(encoder, data, [shift], batch, device, desc, rows, flip)[0]


@torch.no_grad()
def extract_views(encoder: torch.nn.Module, data, shifts, batch: int = 256, device: str = "cpu",
                  desc: str = "features", rows: np.ndarray | None = None, flip: bool = False,
                  alloc=None) -> list[np.ndarray]:
    """:func:`extract_features` of each :func:`view` ``(flip, shift)`` for ``shift`` in ``shifts``, in one pass
    over the data; an encoder with ``forward_shifted`` (``PatchKMeansEncoder``) makes all the translated views
    from one activation map.

    ``alloc(k, shape)``: the float32 array view ``k`` is written into (e.g. a disk-backed ``np.memmap``, so that
    several wide views need not fit in memory at once); without it, or under ``torch.distributed``, in memory.
    """
    from tqdm.auto import tqdm

    dist = torch.distributed
    rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    world, rank = 1, 0
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    mine = rows[rank::world]
    encoder.eval().to(device)
    shifts = [tuple(s) for s in shifts]
    shared = hasattr(encoder, "forward_shifted") and len(shifts) > 1   # one view: no padding needed
    mine_out, pos = None, 0   # each view's rows written in place: no list of batches to concatenate (2x memory)
    for x in tqdm(batches(data, mine, batch), total=-(-len(mine) // batch), desc=desc,
                  disable=rank != 0 or len(mine) < 4 * batch, leave=False):
        x = view(x, flip).to(device)
        outs = encoder.forward_shifted(x, shifts) if shared else [encoder(view(x, shift=s)) for s in shifts]
        if mine_out is None:
            new = alloc if alloc is not None and world == 1 else lambda k, shape: np.empty(shape, np.float32)
            mine_out = [new(k, (len(mine), o.shape[1])) for k, o in enumerate(outs)]
        for buf, o in zip(mine_out, outs):
            buf[pos:pos + len(o)] = o.float().cpu().numpy()
        pos += len(x)
    if mine_out is not None and pos != len(mine):
        raise RuntimeError(f"encoded {pos} rows of {len(mine)}")
    if mine_out is None:
        mine_out = [np.empty((0, encoder.embed_dim), np.float32) for _ in shifts]
    result = []
    for out_mine in mine_out:
        if world == 1:
            result.append(out_mine)
            continue
        gathered = [None] * world
        dist.all_gather_object(gathered, out_mine)
        out = np.empty((len(rows), out_mine.shape[1]), np.float32)
        for r, part in enumerate(gathered):
            out[r::world] = part
        result.append(out)
    return result


def build_encoder(encoder: str | torch.nn.Module, data: LabelledData, first: Task, encoder_kw: dict,
                  seed: int) -> tuple[torch.nn.Module, str]:
    """``(module, name)``: a registry name built with seeded initial weights (``seed``); a module passes through.

    The label-free encoders (``kmeans_patches``, ``patch_dictionary``) are fitted here, without labels, on
    up to 10,000 images of the first task's training rows (drawn with ``seed``): no other image is seen.
    """
    if isinstance(encoder, torch.nn.Module):
        return encoder, type(encoder).__name__
    import memret.encoders as E

    enc = seeded_init(lambda: E.create(encoder, **encoder_kw), seed, 7)  # same seed, same initial weights
    if isinstance(enc, (E.PatchKMeansEncoder, E.PatchDictionaryEncoder)):
        enc.fit(label_free_fit_images(data, first, seed), seed=seed)
    return enc, encoder


def encoder_blocks(encoder: str | torch.nn.Module, encoder_kw: dict) -> tuple[int, ...] | None:
    """The widths of the encoder's blocks of features (``feature_blocks``), read without fitting or encoding it:
    a module's attribute, or for ``kmeans_patches`` its unfitted module's (buffers only); None for the others."""
    if isinstance(encoder, torch.nn.Module):
        blocks = getattr(encoder, "feature_blocks", None)
    elif encoder == "kmeans_patches":
        import memret.encoders as E

        blocks = E.create(encoder, **encoder_kw).feature_blocks
    else:
        return None
    return tuple(int(b) for b in blocks) if blocks is not None else None


def resolved_encoder_kw(encoder: str | torch.nn.Module, encoder_kw: dict) -> dict:
    """``encoder_kw`` with the encoder's own defaults filled in (its unfitted module's ``hparams``), for the
    label-free encoders, whose features depend on nothing else; other encoders' ``encoder_kw`` as given.

    :func:`memret.incremental.run.feature_cache_file` and ``run()``'s checkpoints key on this, so a cache written
    before a default changed is not read back as the new default's features.
    """
    if encoder in ("kmeans_patches", "patch_dictionary"):
        import memret.encoders as E

        return dict(E.create(encoder, **encoder_kw).hparams)
    return dict(encoder_kw)


def label_free_fit_images(data: LabelledData, first: Task, seed: int) -> torch.Tensor:
    """The images :func:`build_encoder` fits a label-free encoder on: up to 10,000 of task ``first``'s training
    rows, drawn with ``seed``, in row order."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(first.train_rows, size=min(len(first.train_rows), 10_000), replace=False)
    return torch.cat(list(batches(data.train, np.sort(rows), 512)))
