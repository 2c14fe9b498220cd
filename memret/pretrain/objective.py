"""What the four objectives share: the contract the training loop drives, the EMA teacher, the
projection MLP, and running an encoder over several views (grouped by resolution).

An objective is an ``nn.Module`` that owns everything it learns and its loss (``contriever``'s
``MoCo.forward -> (loss, stats)``):

- ``student``: the trainable part (``student.backbone`` is the memret encoder, plus heads/prototypes);
  the loop optimises ``student.parameters()`` and may wrap ``student`` for data-parallel training;
- ``teacher``: an EMA copy of (part of) the student, or ``None``;
- ``views``: the :class:`~memret.pretrain.views.MultiCrop` that turns uint8 images into its views;
- ``schedules(total_steps, steps_per_epoch)``: its own per-step values (EMA momentum, temperatures...);
- ``forward(views, boxes, values, gen) -> (loss, stats)``; ``after_backward(values)`` (e.g. DINO
  freezes its last layer at first); ``momentum_update(m)``;
- ``encoder()``: the network to evaluate and export (the teacher's backbone where there is a teacher).
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from memret.train import cosine_schedule


class Objective(nn.Module):
    """Base class; subclasses set ``student``, ``teacher`` and ``views`` and implement ``forward``."""

    name = "objective"

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {}

    def after_backward(self, values: dict[str, float]) -> None:
        """Called between ``backward`` and the optimiser step (gradients exist)."""

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        if self.teacher is not None:
            for mod in (self.teacher, self.student):  # fully_shard: both back to their shards (DTensors)
                if hasattr(mod, "reshard"):
                    mod.reshard()
            ema_update(self.teacher, unwrap(self.student), m)

    def encoder(self) -> nn.Module:
        """The backbone to evaluate and export: the EMA teacher's when there is one (DINO, MSN, LOCA)."""
        return (self.teacher if self.teacher is not None else unwrap(self.student)).backbone

    def train(self, mode: bool = True) -> "Objective":
        super().train(mode)
        if self.teacher is not None:  # as in DINO, the teacher's batch norm keeps using batch statistics
            self.teacher.train(mode)
        return self


def unwrap(m: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (``m`` itself otherwise)."""
    return m.module if hasattr(m, "module") and isinstance(m, nn.parallel.DistributedDataParallel) else m


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` (no gradients; updated only by :func:`ema_update`)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """``teacher <- m * teacher + (1 - m) * student`` over the parameters both have, by name.

    Buffers (batch-norm statistics) are left alone: the teacher tracks its own, as in DINO.

    Raises:
        ValueError: the teacher has a parameter the student lacks (they are not copies of each other).
    """
    sp = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        if name not in sp:
            raise ValueError(f"teacher parameter {name!r} has no student counterpart")
        t.mul_(m).add_(sp[name].detach(), alpha=1 - m)


def momentum_schedule(base: float, total_steps: int, final: float = 1.0) -> np.ndarray:
    """DINO's EMA momentum: a half cosine from ``base`` to ``final`` over the run."""
    return cosine_schedule(base, final, 1, total_steps)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3, batch_norm: bool = False,
        last_bn: bool = False) -> nn.Sequential:
    """Linear-(BN)-GELU blocks then a linear output: the projection MLP of DINO/MSN/SwAV heads.

    ``layers == 1`` is a single linear map.
    """
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {layers}")
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden)] + ([nn.BatchNorm1d(hidden)] if batch_norm else []) + [nn.GELU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


def forward_views(backbone: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Run ``backbone`` once per run of consecutive same-size views (``dino``'s MultiCropWrapper).

    Returns:
        (V * B, D): the pooled features of every view, view-major (all images of view 0 first).
    """
    out, start = [], 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.append(backbone(torch.cat(list(views[start:end]))))
        start = end
    return torch.cat(out)


def trunc_normal_init(module: nn.Module) -> None:
    """DINO's head initialisation: truncated normal (std 0.02) weights, zero biases, for every Linear."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
