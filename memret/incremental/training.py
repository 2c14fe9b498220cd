"""Shared training pieces of the class-incremental methods: the config, seeded RNGs, the minibatch loop.

Everything random here is drawn from private generators derived from a seed and
a salt (``generator(seed, 2, task)``), so runs are reproducible, resume exactly
and never touch the global RNG. Used by :mod:`memret.incremental.methods`, the
MTN's trainer (:mod:`memret.incremental.mtn`), the encoder trainer
(:mod:`memret.incremental.backbone`) and the Avalanche plugins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from memret.heads.analytic import block_widths


MTN_RETRIEVALS = ("global", "per_class")
MTN_TRAINS = ("task", "memory")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and method knobs shared by the trained methods."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    k: int = 10                 # neighbours for knn and mtn
    knn_temperature: float = 0.07
    mtn_layers: int = 2
    mtn_heads: int = 4
    mtn_width: int = 256
    mtn_dropout: float = 0.0     # CPU dropout costs more than the rest of a small MTN step
    mtn_input_dim: int | None = 2048   # wider features reach the transformer through a fixed random projection
    balanced: bool = True       # MTN: class-balanced loss over current data + memory
    fusion: str = "sum"         # "sum" | "mtn_only" | "classifier_only"
    schedule: str = "cosine"    # "cosine" | "constant" learning rate within a task
    balanced_replay: bool = False   # replay: the MTN's class-balanced loss (isolates what the MTN adds)
    # ---- MTN design options (issue 12); the defaults are the MTN as first built
    # "global": the k nearest exemplars of the whole memory; "per_class": the mtn_per_class nearest of each class
    # in the memory (mtn_per_class x classes tokens, so the transformer sees every class held)
    mtn_retrieval: Literal["global", "per_class"] = "global"
    mtn_per_class: int = 2
    mtn_rank: bool = False          # a learnt embedding of each neighbour's rank in the similarity order
    # "task": train on the task's data + the old exemplars; "memory": on the memory's contents only (after it
    # took the task in)
    mtn_train: Literal["task", "memory"] = "task"
    # ---- analytic heads (ranpac, slda, mtn_ranpac)
    ranpac_projection: int = 4096   # RanPAC's random projection width M (0: ridge on the features)
    ranpac_scale: float = 10.0      # mtn_ranpac: initial scale of the ridge scores in the fused logits
    # SLDA's shrinkage grid, re-chosen after every task on held-out statistics of all tasks seen so far
    slda_shrinkages: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 0.3)
    # slda, mtn_slda: the widths of the feature blocks that get one SLDA each, scores summed (memret.heads.BlockSLDA);
    # None: one SLDA, except in run(), which reads the encoder's ``feature_blocks`` (kmeans_patches, layers=2)
    slda_blocks: tuple[int, ...] | None = None
    # frozen encoders: every image's feature is the mean of its own and its horizontal mirror's features, for
    # every method (flip-invariant; twice the encoding; the mirrors' features are cached beside the others)
    mirror_views: bool = False
    # frozen encoders: also the views translated by (s, s) and (-s, -s) pixels (reflect-padded) and, with
    # mirror_views, their mirrors; the feature is the mean over all views (each view one more encoding)
    shift_views: int = 0
    # ---- the encoder, when run(train_encoder=True) trains it (from scratch, or fine-tuning a checkpoint)
    encoder_epochs: int | None = None   # default: ``epochs``
    encoder_lr: float = 0.05            # SGD with momentum, cosine within a task (Avalanche/PyCIL CIFAR recipe)
    encoder_momentum: float = 0.9
    encoder_weight_decay: float = 5e-4
    augment: bool = True                # random crop (pad 1/8 of the side) + horizontal flip
    recalibrate_bn: bool = True         # exact batch-norm statistics for the trained weights, after each task

    def __post_init__(self) -> None:
        if self.mtn_retrieval not in MTN_RETRIEVALS:
            raise ValueError(f"unknown mtn_retrieval {self.mtn_retrieval!r}; known: {list(MTN_RETRIEVALS)}")
        if isinstance(self.mtn_per_class, bool) or not isinstance(self.mtn_per_class, int) or self.mtn_per_class < 1:
            raise ValueError(f"mtn_per_class must be an int >= 1, got {self.mtn_per_class!r}")
        if not isinstance(self.mtn_rank, bool):
            raise ValueError(f"mtn_rank must be a bool, got {self.mtn_rank!r}")
        if self.mtn_train not in MTN_TRAINS:
            raise ValueError(f"unknown mtn_train {self.mtn_train!r}; known: {list(MTN_TRAINS)}")
        if self.slda_blocks is not None:
            object.__setattr__(self, "slda_blocks", block_widths(self.slda_blocks, "slda_blocks"))


def derive_seed(seed: int, *salt: int) -> int:
    """A 32-bit seed for one purpose (``salt``) of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


def generator(seed: int, *salt: int) -> torch.Generator:
    """A private torch generator for one purpose of a run (e.g. ``generator(seed, 2, task)``: task shuffles)."""
    return torch.Generator().manual_seed(derive_seed(seed, *salt))


def seeded_init(module_fn, seed: int, *salt: int) -> nn.Module:
    """Build a module with a private RNG: parameter init is reproducible and the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *salt))
        return module_fn()


def balanced_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """(n_classes,) float32 cross-entropy weights under which every class present in ``labels`` weighs the same
    in total (``N / (n_c * classes present)``; 0 for absent classes): a task's full data and the old classes'
    few exemplars count alike."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
    return torch.from_numpy(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / np.count_nonzero(counts),
                                     0).astype(np.float32))


def train_epochs(model_step, n: int, cfg: TrainConfig, opt: torch.optim.Optimizer, gen: torch.Generator,
                 lr: float | None = None, epochs: int | None = None, progress: str | None = None) -> float:
    """Plain minibatch loop: ``model_step(idx) -> loss`` on shuffled index batches; returns the last epoch's mean loss.

    The optimizer lives across tasks (its moments carry over, as in Avalanche's strategies); the
    learning-rate schedule restarts each task. ``lr``/``epochs`` override the config's; ``progress``
    names a per-batch progress bar.
    """
    lr, epochs = cfg.lr if lr is None else lr, cfg.epochs if epochs is None else epochs
    for group in opt.param_groups:
        group["lr"] = lr
    per_epoch = max(1, -(-n // cfg.batch_size))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch) if cfg.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * per_epoch, desc=progress, leave=False)
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = model_step(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.detach().item() * len(idx), count + len(idx)
            if bar is not None:
                bar.update()
        last = total / max(count, 1)
    if bar is not None:
        bar.close()
    return last


class MemoryBatches:
    """Endless minibatches over the memory: successive seeded permutations, cut into batches.

    Args:
        X: (M, ...) memory samples (features, or dataset rows for the encoder trainer).
        y: (M,) their labels.
        gen: the generator the permutations are drawn from.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, gen: torch.Generator) -> None:
        self.X, self.y, self.gen = torch.from_numpy(X), torch.from_numpy(y), gen
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def __len__(self) -> int:
        return len(self.y)

    def next(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` (samples, labels), continuing the current permutation and starting new ones as needed."""
        idx = []
        while n > 0:
            if self.pos >= len(self.order):
                self.order, self.pos = torch.randperm(len(self.y), generator=self.gen), 0
            take = self.order[self.pos:self.pos + n]
            self.pos += len(take)
            n -= len(take)
            idx.append(take)
        i = torch.cat(idx)
        return self.X[i], self.y[i]
