"""LOCA (Caron, Houlsby, Schmid 2022): query patches predict where they lie in a masked reference view,
plus a prototype (cluster) loss against an EMA teacher.

From the paper and ``google-research/scenic`` ``projects/loca`` (README, config): a reference view and
query views (one large, several small "focal" ones) are cut from the same image, the queries *inside*
the reference; the reference keeps only a fraction of its patches (20 % in the paper); each query patch
token cross-attends to the kept reference tokens and is classified over all reference positions (the
true position is known from the crop geometry: :func:`query_targets`). The cluster loss makes each
query's pooled feature predict the EMA teacher's sharpened (``0.05``) prototype assignment of the whole
reference at student temperature ``0.1``; the teacher's scores are centred as in DINO so that the
assignment cannot collapse onto one prototype. memret's version is written from the paper's description
(scenic's JAX code was not at hand); it is, as the issue says, the first PyTorch one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.pretrain.dino import DINOHead, teacher_probs, updated_center
from memret.pretrain.masking import n_patch_tokens, random_keep, vit_of, vit_pool, vit_tokens
from memret.pretrain.objective import Objective, make_teacher, momentum_schedule, unwrap
from memret.pretrain.views import CIFAR_MEAN, CIFAR_STD, CropSpec, crop, mirror, normalize, photometric, sample_boxes


# ============ views with known geometry ============
class LocaViews:
    """A reference crop and query crops sampled inside it; one flip per image; colour per view.

    Args:
        ref: the reference crop (its ``scale`` is of the image area). query: the large query crops
            (``scale`` is of the *reference's* area). focal: the small query crops (same convention).
    """

    def __init__(self, ref: CropSpec, query: CropSpec, focal: CropSpec | None = None, mean=CIFAR_MEAN,
                 std=CIFAR_STD) -> None:
        self.specs = [ref, query] + ([focal] if focal is not None and focal.count else [])
        if ref.count != 1:
            raise ValueError("LOCA uses exactly one reference view")
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def n_views(self) -> int:
        return sum(s.count for s in self.specs)

    def __call__(self, images: torch.Tensor, gen: torch.Generator, n_total: int | None = None,
                 offset: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(views, boxes)`` as :class:`~memret.pretrain.views.MultiCrop`; ``boxes`` are in the (flipped)
        image's coordinates, ``views[0]`` / ``boxes[0]`` the reference."""
        B = images.shape[0]
        n_total = B if n_total is None else n_total
        rows = slice(offset, offset + B)
        x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
        flip = torch.rand(n_total, generator=gen)[rows] < 0.5
        ref = sample_boxes(n_total, self.specs[0].scale, gen)[rows]
        boxes = [ref]
        for spec in self.specs[1:]:
            for _ in range(spec.count):
                rel = sample_boxes(n_total, spec.scale, gen)[rows]          # inside the reference, relative to it
                w, h = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
                boxes.append(torch.stack([ref[:, 0] + rel[:, 0] * w, ref[:, 1] + rel[:, 1] * h,
                                          ref[:, 0] + rel[:, 2] * w, ref[:, 1] + rel[:, 3] * h], dim=1))
        views, i = [], 0
        for spec in self.specs:
            for _ in range(spec.count):
                src = torch.where(flip[:, None], mirror(boxes[i]), boxes[i])
                v = photometric(crop(x, src, spec.size, flip), spec, gen, n_total, rows)
                views.append(normalize(v, self.mean, self.std))
                i += 1
        return views, boxes


def loca_views(global_size: int = 32, local_size: int = 16, n_local: int = 4) -> LocaViews:
    """Reference 0.4-1 of the image; one query 0.3-1 of the reference at full size; ``n_local`` focal 0.05-0.3."""
    return LocaViews(CropSpec(global_size, (0.4, 1.0)), CropSpec(global_size, (0.3, 1.0)),
                     CropSpec(local_size, (0.05, 0.3), n_local))


def query_targets(ref_box: torch.Tensor, query_box: torch.Tensor, query_grid: int, ref_grid: int) -> torch.Tensor:
    """The reference position (row-major index on the ``ref_grid`` x ``ref_grid`` patch grid) under the
    centre of every query patch.

    Args:
        ref_box, query_box: (B, 4) ``(x0, y0, x1, y1)`` in the same image coordinates.

    Returns:
        int64 (B, query_grid ** 2), row-major over the query's patches.
    """
    c = (torch.arange(query_grid, dtype=ref_box.dtype, device=ref_box.device) + 0.5) / query_grid
    qx = query_box[:, :1] + c * (query_box[:, 2:3] - query_box[:, :1])           # (B, g) image x of columns
    qy = query_box[:, 1:2] + c * (query_box[:, 3:4] - query_box[:, 1:2])
    rx = (qx - ref_box[:, :1]) / (ref_box[:, 2:3] - ref_box[:, :1])              # in the reference, [0, 1]
    ry = (qy - ref_box[:, 1:2]) / (ref_box[:, 3:4] - ref_box[:, 1:2])
    col = (rx * ref_grid).floor().long().clamp(0, ref_grid - 1)
    row = (ry * ref_grid).floor().long().clamp(0, ref_grid - 1)
    return (row[:, :, None] * ref_grid + col[:, None, :]).flatten(1)


# ============ model ============
class PositionHead(nn.Module):
    """Query patch tokens cross-attend to the kept reference tokens, then a linear map to positions."""

    def __init__(self, dim: int, n_positions: int, heads: int = 4) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_out = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.out = nn.Linear(dim, n_positions)

    def forward(self, queries: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(B, Nq, D) x (B, Nr, D) -> (B, Nq, n_positions) logits."""
        kv = self.norm_kv(reference)
        x = queries + self.attn(self.norm_q(queries), kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.norm_out(x))
        return self.out(x)


class LocaStudent(nn.Module):
    def __init__(self, backbone: nn.Module, n_positions: int, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        vit = vit_of(backbone, "LOCA")
        self.backbone = backbone
        self.position = PositionHead(backbone.embed_dim, n_positions)
        self.head = DINOHead(backbone.embed_dim, out_dim, hidden, bottleneck)
        self.prefix = vit.num_prefix_tokens

    def forward(self, views: list[torch.Tensor], keep: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Position logits per query view [(B, Nq_v, R)] and cluster scores of the queries (Q * B, K).

        With ``keep=None`` (the teacher): no positions, the cluster scores of the whole reference ``views[0]``.
        """
        if keep is None:
            return [], self.head(self.backbone(views[0]))
        vit = vit_of(self.backbone, "LOCA")
        ref = vit_tokens(vit, views[0], keep)[:, self.prefix:]                       # (B, kept, D)
        logits, pooled = [], []
        for q in views[1:]:
            t = vit_tokens(vit, q)
            logits.append(self.position(t[:, self.prefix:], ref))
            pooled.append(vit_pool(vit, t))
        return logits, self.head(torch.cat(pooled))


class LOCA(Objective):
    """LOCA around a memret ViT encoder.

    Args:
        encoder: a ViT encoder. views: :func:`loca_views`. ref_keep: fraction of reference patches kept (0.2).
        cluster_weight: weight of the prototype loss. out_dim, hidden, bottleneck: cluster head (4096 outputs
            in the paper). student_temp, teacher_temp: 0.1 and 0.05 (sharpening). center_momentum: as DINO.
        momentum_teacher: start of the EMA momentum cosine (-> 1).
    """

    name = "loca"

    def __init__(self, encoder: nn.Module, views: LocaViews | None = None, ref_keep: float = 0.2,
                 cluster_weight: float = 1.0, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128,
                 student_temp: float = 0.1, teacher_temp: float = 0.05, center_momentum: float = 0.9,
                 momentum_teacher: float = 0.996) -> None:
        super().__init__()
        vit = vit_of(encoder, "LOCA")
        self.views = views or loca_views()
        ref_size = self.views.specs[0].size
        self.ref_grid = ref_size // vit.patch_embed.patch_size[0]
        self.student = LocaStudent(encoder, self.ref_grid ** 2, out_dim, hidden, bottleneck)
        self.teacher = make_teacher(self.student)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.ref_keep, self.cluster_weight = ref_keep, cluster_weight
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.center_momentum, self.momentum_teacher = center_momentum, momentum_teacher

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {"momentum": momentum_schedule(self.momentum_teacher, total_steps)}

    def forward(self, views: list[torch.Tensor], boxes: list[torch.Tensor], values: dict[str, float],
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        # Step 1: keep a random ref_keep of the reference's patches (one draw per batch)
        n_ref = n_patch_tokens(unwrap(self.student).backbone, views[0])
        keep = random_keep(n_ref, max(1, round(n_ref * self.ref_keep)),
                           gen if gen is not None else torch.Generator().manual_seed(0))
        logits, s_out = self.student(views, keep)
        # Step 2: position loss: every query patch classifies its reference position
        pos_losses, correct, total = [], 0.0, 0
        for lg, box in zip(logits, boxes[1:]):
            grid = int(round(lg.shape[1] ** 0.5))
            target = query_targets(boxes[0], box, grid, self.ref_grid).to(lg.device)
            pos_losses.append(F.cross_entropy(lg.float().flatten(0, 1), target.flatten()))
            correct += float((lg.argmax(-1) == target).sum())
            total += target.numel()
        pos_loss = torch.stack(pos_losses).mean()
        # Step 3: cluster loss against the teacher's centred, sharpened view of the whole reference
        with torch.no_grad():
            t_out = self.teacher(views[:1])[1].float()
            t = teacher_probs(t_out, self.center, self.teacher_temp)
            self.center.copy_(updated_center(self.center, t_out, self.center_momentum))
        s_logp = F.log_softmax(s_out.float() / self.student_temp, dim=-1)
        cluster = -(t.repeat(len(views) - 1, 1) * s_logp).sum(-1).mean()
        loss = pos_loss + self.cluster_weight * cluster
        return loss, {"position": float(pos_loss.detach()), "cluster": float(cluster.detach()),
                      "position_acc": correct / max(total, 1)}
