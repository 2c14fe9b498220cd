"""MSN (Assran et al. 2022): masked anchor views matched to an unmasked target view through learnable
prototypes, with target sharpening, Sinkhorn balancing and the ME-MAX regulariser.

Follows ``facebookresearch/msn`` (``src/losses.py`` ``init_msn_loss``, ``src/msn_train.py``): views are
[target, anchor, focal anchors...]; the first anchor drops a random ``mask_ratio`` of its patches (only
the kept ones go through the ViT, one draw for the batch), focal anchors are small unmasked crops; the
target goes through the EMA target encoder. Both sides are projected (MLP with BN), L2-normalised and
compared to L2-normalised prototypes by a soft nearest-neighbour softmax at ``tau``; the target's
probabilities are sharpened (``T``) and Sinkhorn-balanced; the loss is the cross-entropy to every anchor
plus ``memax_weight`` times ME-MAX, ``sum(p_bar log p_bar) + log K`` of the batch-mean anchor prediction
``p_bar`` (all-reduced with its gradient): zero at a uniform mean prediction, positive otherwise, so
minimising it spreads the batch over the prototypes.

Why not ``lightly.loss.MSNLoss``: memret needs the patch dropping inside its own encoders and the
all-reduced ME-MAX/Sinkhorn for data-parallel equality; the loss itself is short enough to test by hand.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.pretrain.masking import n_patch_tokens, random_keep, vit_of, vit_pool, vit_tokens
from memret.pretrain.objective import Objective, make_teacher, mlp, momentum_schedule, unwrap
from memret.pretrain.swav import sinkhorn
from memret.pretrain.views import CropSpec, MultiCrop
from memret.train import rank_world


def msn_views(global_size: int = 32, local_size: int = 16, n_local: int = 6) -> MultiCrop:
    """[target, anchor] random crops (0.3-1 of the area) and ``n_local`` focal anchors (0.05-0.3)."""
    return MultiCrop([CropSpec(global_size, (0.3, 1.0), 2), CropSpec(local_size, (0.05, 0.3), n_local)])


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    """``p ** (1 / T)`` renormalised per row."""
    s = p ** (1.0 / T)
    return s / s.sum(dim=1, keepdim=True)


def me_max(probs: torch.Tensor) -> torch.Tensor:
    """ME-MAX: ``sum(p_bar log p_bar) + log K`` (>= 0, zero when the batch-mean prediction is uniform).

    ``p_bar`` is the mean over every rank's rows, with gradients flowing back to each rank's share.
    """
    avg = probs.mean(dim=0)
    world = rank_world()[1]
    if world > 1:
        import torch.distributed.nn.functional as dnn

        avg = dnn.all_reduce(avg) / world
    return (avg * torch.log(avg.clamp_min(1e-12))).sum() + math.log(avg.numel())


class MSNBranch(nn.Module):
    """Backbone + projection MLP + prototypes; one call embeds every anchor (DDP allows one forward a step)."""

    def __init__(self, backbone: nn.Module, hidden: int, out_dim: int, n_prototypes: int) -> None:
        super().__init__()
        vit_of(backbone, "MSN")
        self.backbone = backbone
        self.projector = mlp(backbone.embed_dim, hidden, out_dim, 3, batch_norm=True)
        bound = 1 / out_dim ** 0.5
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, out_dim).uniform_(-bound, bound))

    def forward(self, views: list[torch.Tensor], keep: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised projections (V * B, d) of ``views`` (the first with only ``keep`` patches) and the
        L2-normalised prototypes (K, d)."""
        vit = vit_of(self.backbone, "MSN")
        z = [self.projector(vit_pool(vit, vit_tokens(vit, views[0], keep)))]
        for run in _same_size_runs(views[1:]):
            z.append(self.projector(vit_pool(vit, vit_tokens(vit, torch.cat(run)))))
        return F.normalize(torch.cat(z).float(), dim=1), F.normalize(self.prototypes.float(), dim=1)


class MSN(Objective):
    """MSN around a memret ViT encoder.

    Args:
        encoder: a ViT encoder (``vit_tiny_cifar`` ...). views: [target, anchor, focal...] (:func:`msn_views`).
        mask_ratio: fraction of the anchor's patches dropped (0.15 for ViT-S/16 in the paper; higher for
            small images). hidden, out_dim, n_prototypes: projector and prototypes (2048, 256, 1024).
        tau: soft nearest-neighbour temperature. sharpen_T: target sharpening. memax_weight: ME-MAX weight.
        use_sinkhorn: balance the targets. momentum_target: start of the EMA momentum (-> 1).
    """

    name = "msn"

    def __init__(self, encoder: nn.Module, views: MultiCrop | None = None, mask_ratio: float = 0.3,
                 hidden: int = 1024, out_dim: int = 256, n_prototypes: int = 1024, tau: float = 0.1,
                 sharpen_T: float = 0.25, memax_weight: float = 1.0, use_sinkhorn: bool = True,
                 momentum_target: float = 0.996) -> None:
        super().__init__()
        self.views = views or msn_views()
        if self.views.n_views < 2:
            raise ValueError("MSN needs a target and at least one anchor view")
        self.student = MSNBranch(encoder, hidden, out_dim, n_prototypes)
        self.teacher = make_teacher(self.student)  # its prototypes are never used: targets use the student's
        self.mask_ratio, self.tau, self.sharpen_T = mask_ratio, tau, sharpen_T
        self.memax_weight, self.use_sinkhorn, self.momentum_target = memax_weight, use_sinkhorn, momentum_target

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {"momentum": momentum_schedule(self.momentum_target, total_steps)}

    def forward(self, views: list[torch.Tensor], boxes: list[torch.Tensor], values: dict[str, float],
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        # Step 1: anchors: the first keeps a random (1 - mask_ratio) of its patches, the focal ones are whole
        n_patches = n_patch_tokens(unwrap(self.student).backbone, views[1])
        keep = random_keep(n_patches, max(1, round(n_patches * (1 - self.mask_ratio))),
                           gen if gen is not None else torch.Generator().manual_seed(0))
        z, protos = self.student(views[1:], keep)                                  # (A * B, d), (K, d)
        probs = F.softmax(z @ protos.t() / self.tau, dim=1)
        # Step 2: targets from the EMA target encoder: sharpened, balanced, repeated for every anchor
        with torch.no_grad():
            h, _ = self.teacher(views[:1])
            t = sharpen(F.softmax(h @ protos.detach().t() / self.tau, dim=1), self.sharpen_T)
            if self.use_sinkhorn:
                t = sinkhorn(t)
            t = t.repeat(len(views) - 1, 1)
        # Step 3: cross-entropy to the targets plus ME-MAX
        ce = -(t * torch.log(probs.clamp_min(1e-12))).sum(dim=1).mean()
        reg = me_max(probs)
        return ce + self.memax_weight * reg, {"ce": float(ce.detach()), "memax": float(reg.detach())}


def _same_size_runs(views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    runs: list[list[torch.Tensor]] = []
    for v in views:
        if runs and runs[-1][0].shape[-2:] == v.shape[-2:]:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs
