"""DINO (Caron et al. 2021): self-distillation with an EMA teacher, centring + sharpening, multi-crop.

Follows ``facebookresearch/dino`` (``main_dino.py`` ``DINOLoss``, ``vision_transformer.py``
``DINOHead``): the student sees every crop, the teacher only the global ones; the loss is the
cross-entropy between the teacher's centred, sharpened softmax and the student's softmax over all
(teacher view, other student view) pairs; the centre is an EMA of the teacher's batch means (all-reduced
across ranks); the head is an MLP, an L2-normalised bottleneck and a weight-normalised last layer whose
norm is fixed to 1 (``norm_last_layer``) and whose weights stay frozen for the first steps.

Why not ``lightly.loss.DINOLoss``: the loss here is three pure functions (tested against hand-made
tensors), the teacher temperature comes from a precomputed per-step array like every other schedule,
and the weight-normalised layer is written out (``torch.nn.utils.weight_norm`` is deprecated and its
parametrised replacement does not shard under ``fully_shard``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from memret.pretrain.objective import (
    Objective, forward_views, make_teacher, mlp, momentum_schedule, trunc_normal_init,
)
from memret.pretrain.views import MultiCrop, dino_crops
from memret.train import rank_world


class WeightNormLinear(nn.Module):
    """``y = g * x @ (v / ||v||)^T`` with one norm per output unit, no bias (DINO's last layer)."""

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool = False) -> None:
        super().__init__()
        self.v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.g * F.normalize(self.v, dim=1))


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear to ``out_dim`` prototypes scores.

    Args:
        in_dim: the encoder's ``embed_dim``. out_dim: number of output dimensions (65536 in the paper).
        hidden, bottleneck, layers: MLP shape (2048, 256, 3 in the paper). batch_norm: BN in the MLP
            (DINO's ResNet-50 recipe). norm_last_layer: fix the last layer's norms to 1.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden: int = 2048, bottleneck: int = 256, layers: int = 3,
                 batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden, bottleneck, layers, batch_norm)
        trunc_normal_init(self.mlp)
        self.last_layer = WeightNormLinear(bottleneck, out_dim, learn_norm=not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class Branch(nn.Module):
    """Backbone + head applied to a list of views; ``backbone`` is the memret encoder being trained."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.head(forward_views(self.backbone, views))


def dino_views(global_size: int = 32, local_size: int = 16, n_local: int = 6,
               global_scale: tuple[float, float] = (0.4, 1.0)) -> MultiCrop:
    """DINO's multi-crop at CIFAR scale: 2 global crops (``global_scale`` of the area, DINO's 0.4-1 by default;
    0.08-1 is the CIFAR recipe without local crops) and ``n_local`` local ones (0.05-0.4)."""
    return MultiCrop(dino_crops(global_size, local_size, n_local, global_scale=global_scale))


# ============ the loss as pure functions ============
def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float, n_views: int) -> torch.Tensor:
    """DINO's cross-entropy over (teacher global view i, student view v != i) pairs.

    Args:
        student_out: (V * B, K) student scores, view-major. teacher_out: (G * B, K) teacher scores of the
            G global views (the first G student views are the same crops).
        center: (1, K) running centre. student_temp, teacher_temp: softmax temperatures.
        n_views: V.

    Returns:
        scalar loss (mean over pairs and images).
    """
    n_global = teacher_out.shape[0] * n_views // student_out.shape[0]
    s = F.log_softmax(student_out / student_temp, dim=-1).chunk(n_views)
    t = teacher_probs(teacher_out, center, teacher_temp).detach().chunk(n_global)
    terms = [(-q * s[v]).sum(-1).mean() for i, q in enumerate(t) for v in range(n_views) if v != i]
    return torch.stack(terms).mean()


def teacher_probs(teacher_out: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Centring and sharpening: ``softmax((t - center) / temp)``."""
    return F.softmax((teacher_out - center) / temp, dim=-1)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float) -> torch.Tensor:
    """``m * center + (1 - m) * mean(teacher_out)``, the mean taken over every rank's batch."""
    batch_sum = teacher_out.sum(dim=0, keepdim=True)
    n = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
    if rank_world()[1] > 1:
        dist.all_reduce(batch_sum)
        dist.all_reduce(n)
    return center * momentum + batch_sum / n * (1 - momentum)


# ============ the objective ============
class DINO(Objective):
    """DINO around any memret encoder.

    Args:
        encoder: a memret encoder (``embed_dim``, ``forward -> (B, D)``); it becomes the student backbone,
            a copy the teacher's.
        views: the multi-crop maker; its first two views must be the global crops (default
            :func:`~memret.pretrain.views.dino_crops` at 32 px with 6 local crops of 16 px).
        out_dim, hidden, bottleneck, head_layers, batch_norm_head: head shape.
        student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_frac: temperatures; the
            teacher's rises linearly from ``warmup_teacher_temp`` over that fraction of the run.
        center_momentum: EMA of the centre. momentum_teacher: start of the EMA momentum cosine (-> 1).
        freeze_last_layer_frac: fraction of the run during which the head's last layer gets no update.
        norm_last_layer: fix the last layer's norms to 1 (False: learn them; solo-learn's CIFAR setting).
    """

    name = "dino"

    def __init__(self, encoder: nn.Module, views: MultiCrop | None = None, out_dim: int = 4096, hidden: int = 1024,
                 bottleneck: int = 256, head_layers: int = 3, batch_norm_head: bool = False,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_frac: float = 0.0, center_momentum: float = 0.9,
                 momentum_teacher: float = 0.996, freeze_last_layer_frac: float = 0.0,
                 norm_last_layer: bool = True) -> None:
        super().__init__()
        self.views = views or MultiCrop(dino_crops())
        if self.views.specs[0].count + (self.views.specs[1].count if len(self.views.specs) > 1 else 0) < 2:
            raise ValueError("DINO needs two global views first in its MultiCrop")
        head = DINOHead(encoder.embed_dim, out_dim, hidden, bottleneck, head_layers, batch_norm_head, norm_last_layer)
        self.student = Branch(encoder, head)
        self.teacher = make_teacher(self.student)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_frac, self.center_momentum = warmup_teacher_temp_frac, center_momentum
        self.momentum_teacher, self.freeze_last_layer_frac = momentum_teacher, freeze_last_layer_frac

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        warm = int(round(self.warmup_teacher_temp_frac * total_steps))
        temp = np.full(total_steps, self.teacher_temp)
        temp[:warm] = np.linspace(self.warmup_teacher_temp, self.teacher_temp, warm)
        freeze = (np.arange(total_steps) < self.freeze_last_layer_frac * total_steps).astype(np.float64)
        return {"momentum": momentum_schedule(self.momentum_teacher, total_steps), "teacher_temp": temp,
                "freeze_last_layer": freeze}

    def forward(self, views: list[torch.Tensor], boxes: list[torch.Tensor], values: dict[str, float],
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        # Step 1: the teacher sees the two global views, the student all of them
        with torch.no_grad():
            t_out = self.teacher(views[:2]).float()                                     # (2B, K)
        s_out = self.student(views).float()                                             # (V*B, K)
        # Step 2: cross-entropy against the centred, sharpened teacher
        loss = dino_loss(s_out, t_out, self.center, self.student_temp, values["teacher_temp"], len(views))
        # Step 3: move the centre towards the batch mean (all ranks)
        self.center.copy_(updated_center(self.center, t_out, self.center_momentum))
        with torch.no_grad():
            p = teacher_probs(t_out, self.center, values["teacher_temp"])
            entropy = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
        return loss, {"teacher_entropy": entropy}

    def after_backward(self, values: dict[str, float]) -> None:
        if values.get("freeze_last_layer", 0.0) > 0:
            for p in self.student_head().last_layer.parameters():
                p.grad = None

    def student_head(self) -> DINOHead:
        s = self.student
        return (s.module if hasattr(s, "module") else s).head
