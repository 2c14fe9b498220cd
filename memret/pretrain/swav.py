"""SwAV (Caron et al. 2020), the objective of SEER: online clustering with Sinkhorn codes and swapped
prediction over multi-crop views.

Follows ``facebookresearch/swav`` ``main_swav.py``: features -> projection MLP -> L2 norm -> scores
against L2-normalised prototypes; the codes of each global view come from Sinkhorn-Knopp (``epsilon``
0.05, 3 iterations, all-reduced across ranks so the equal-partition constraint holds over the global
batch); every other view predicts them with a softmax at temperature 0.1; prototypes are frozen for
the first part of the run. No feature queue: the queue helps at batch sizes far below the number of
prototypes, and memret's short runs use batch 64-256 against 512 prototypes (set ``n_prototypes``).

The same :func:`sinkhorn` serves MSN (on sharpened probabilities rather than ``exp(scores / eps)``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from memret.pretrain.objective import Objective, forward_views, mlp, unwrap
from memret.pretrain.views import CropSpec, MultiCrop
from memret.train import rank_world


@torch.no_grad()
def sinkhorn(q: torch.Tensor, n_iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp on a non-negative (B, K) matrix, over the batch of every rank.

    Alternately scales prototypes (columns) to total mass 1/K and samples (rows) to 1/B_global, the
    sample step last; returns the codes scaled so each row sums to 1.

    Returns:
        (B, K) codes: rows sum to 1; columns sum to about B_global / K / world per rank after enough
        iterations (the equal-partition constraint).
    """
    world = rank_world()[1]
    Q = q.double().t().clone()                          # (K, B)
    K, B = Q.shape[0], Q.shape[1] * world
    total = Q.sum()
    if world > 1:
        dist.all_reduce(total)
    Q /= total
    for _ in range(n_iters):
        rows = Q.sum(dim=1, keepdim=True)
        if world > 1:
            dist.all_reduce(rows)
        Q /= rows * K
        Q /= Q.sum(dim=0, keepdim=True) * B
    return (Q * B).t().to(q.dtype)


def swav_views(global_size: int = 32, local_size: int = 16, n_local: int = 6,
               global_scale: tuple[float, float] = (0.14, 1.0)) -> MultiCrop:
    """SwAV's multi-crop: 2 global crops (``global_scale`` of the area, 0.14-1 by default) and ``n_local``
    local crops (0.05-0.14)."""
    return MultiCrop([CropSpec(global_size, tuple(global_scale), 2), CropSpec(local_size, (0.05, 0.14), n_local)])


class SwAVBranch(nn.Module):
    def __init__(self, backbone: nn.Module, hidden: int, out_dim: int, n_prototypes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(backbone.embed_dim, hidden, out_dim, 2, batch_norm=True)
        self.prototypes = nn.Linear(out_dim, n_prototypes, bias=False)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = F.normalize(self.projector(forward_views(self.backbone, views)), dim=1)
        return self.prototypes(z)                      # (V * B, K) cosine scores


def swapped_prediction(scores: torch.Tensor, n_views: int, n_assign: int = 2, temperature: float = 0.1,
                       epsilon: float = 0.05, sinkhorn_iters: int = 3) -> torch.Tensor:
    """SwAV's loss: codes of each of the first ``n_assign`` views, predicted from every other view.

    Args:
        scores: (V * B, K) prototype scores, view-major.
    """
    chunks = scores.float().chunk(n_views)
    total = []
    for i in range(n_assign):
        with torch.no_grad():
            # cosine scores lie in [-1, 1]: exp(1 / 0.05) ~ 5e8 is safe, and no per-rank shift may enter
            q = sinkhorn(torch.exp(chunks[i].double() / epsilon), sinkhorn_iters)
        for v in range(n_views):
            if v != i:
                total.append(-(q * F.log_softmax(chunks[v] / temperature, dim=1)).sum(1).mean())
    return torch.stack(total).mean()


class SwAV(Objective):
    """SwAV around any memret encoder (no teacher: ``encoder()`` is the student's backbone).

    Args:
        hidden, out_dim: projection MLP (2048 -> 128 in the paper). n_prototypes: clusters (3000 on ImageNet).
        temperature, epsilon, sinkhorn_iters: as in the paper. freeze_prototypes_frac: fraction of the run
            during which the prototypes get no update (SwAV: the first epoch).
    """

    name = "swav"

    def __init__(self, encoder: nn.Module, views: MultiCrop | None = None, hidden: int = 512, out_dim: int = 128,
                 n_prototypes: int = 512, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iters: int = 3,
                 freeze_prototypes_frac: float = 0.05) -> None:
        super().__init__()
        self.views = views or swav_views()
        self.student = SwAVBranch(encoder, hidden, out_dim, n_prototypes)
        self.teacher = None
        self.temperature, self.epsilon, self.sinkhorn_iters = temperature, epsilon, sinkhorn_iters
        self.freeze_prototypes_frac = freeze_prototypes_frac

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {"freeze_prototypes": (np.arange(total_steps) < self.freeze_prototypes_frac * total_steps) * 1.0}

    def forward(self, views: list[torch.Tensor], boxes: list[torch.Tensor], values: dict[str, float],
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        # Step 1: keep the prototypes on the unit sphere (SwAV normalises them before every step)
        with torch.no_grad():
            w = unwrap(self.student).prototypes.weight
            w.copy_(F.normalize(w, dim=1))
        # Step 2: scores of every view, codes of the global ones, swapped prediction
        scores = self.student(views)
        loss = swapped_prediction(scores, len(views), 2, self.temperature, self.epsilon, self.sinkhorn_iters)
        return loss, {}

    def after_backward(self, values: dict[str, float]) -> None:
        if values.get("freeze_prototypes", 0.0) > 0:
            unwrap(self.student).prototypes.weight.grad = None
