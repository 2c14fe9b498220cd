"""Multi-crop views made on the device from a batch of uint8 images, in one batched pass per crop.

DINO, SwAV and MSN read several random crops of every image (``dino/main_dino.py``
``DataAugmentationDINO``: 2 global crops at scale 0.4-1 and 8 local crops at 0.05-0.4, flip,
colour jitter 0.4/0.4/0.2/0.1 with p 0.8, grey p 0.2, blur, solarisation on the second global view).
memret makes them with ``affine_grid`` + ``grid_sample`` on whole batches instead of per-image PIL
transforms in DataLoader workers: on 2 CPU cores the workers would compete with training for the same
cores, and on a GPU the views cost almost nothing. Every random number comes from one
``torch.Generator`` drawn for the *global* batch, so a rank of a data-parallel run makes exactly the
views the single-process run makes for the same images (its rows of the same draw).

Crop boxes are returned in normalised image coordinates (after the flip), which LOCA needs to know
where a query patch lies inside the reference view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class CropSpec:
    """One kind of crop: ``count`` crops of ``size`` px covering ``scale`` of the image area.

    ``blur`` and ``solarize`` are probabilities; ``jitter`` the probability of colour jitter.
    """

    size: int
    scale: tuple[float, float]
    count: int = 1
    blur: float = 0.0
    solarize: float = 0.0
    jitter: float = 0.8
    grey: float = 0.2

    def __post_init__(self) -> None:
        if self.size <= 0 or self.count < 0:
            raise ValueError(f"crop size must be positive and count >= 0, got {self.size}, {self.count}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")


def dino_crops(global_size: int = 32, local_size: int = 16, n_local: int = 6, global_scale=(0.4, 1.0),
               local_scale=(0.05, 0.4), blur: bool = False) -> list[CropSpec]:
    """DINO's multi-crop: two global crops (blur 1.0 / 0.1, solarise 0 / 0.2) and ``n_local`` local crops.

    Blur is off by default: at 32 px (CIFAR) a Gaussian blur wipes out most of the image, and SimCLR's
    CIFAR recipe drops it too.
    """
    b = (1.0, 0.1, 0.5) if blur else (0.0, 0.0, 0.0)
    return [CropSpec(global_size, global_scale, 1, blur=b[0]),
            CropSpec(global_size, global_scale, 1, blur=b[1], solarize=0.2),
            CropSpec(local_size, local_scale, n_local, blur=b[2])]


class MultiCrop:
    """Random resized crops + flip + colour jitter + grey + blur + solarise, batched.

    Args:
        specs: the crop kinds, in output order (each contributes ``count`` views).
        mean, std: normalisation applied last.
        shared_flip: one flip per image for all its crops (LOCA: the reference and the queries must
            agree on left and right); otherwise every crop flips independently.
    """

    def __init__(self, specs: list[CropSpec], mean=CIFAR_MEAN, std=CIFAR_STD, shared_flip: bool = False) -> None:
        if not specs:
            raise ValueError("MultiCrop needs at least one CropSpec")
        self.specs = list(specs)
        self.mean, self.std = tuple(mean), tuple(std)
        self.shared_flip = shared_flip

    @property
    def n_views(self) -> int:
        return sum(s.count for s in self.specs)

    def __call__(self, images: torch.Tensor, gen: torch.Generator, n_total: int | None = None,
                 offset: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Views of a batch.

        Args:
            images: uint8 (B, 3, H, W) (or float in [0, 1]) on the compute device.
            gen: CPU generator; random numbers are drawn for ``n_total`` images and rows
                ``offset : offset + B`` are used (a data-parallel rank's share of the global batch).

        Returns:
            ``(views, boxes)``: ``views[v]`` float (B, 3, s_v, s_v), normalised; ``boxes[v]`` float (B, 4)
            ``(x0, y0, x1, y1)`` in [0, 1] image coordinates after the flip.
        """
        B = images.shape[0]
        n_total = B if n_total is None else n_total
        if not 0 <= offset <= n_total - B:
            raise ValueError(f"rows {offset}:{offset + B} do not fit a global batch of {n_total}")
        x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
        rows = slice(offset, offset + B)
        flip_all = torch.rand(n_total, generator=gen)[rows] < 0.5  # image-level flip (shared_flip)
        views, boxes = [], []
        for spec in self.specs:
            for _ in range(spec.count):
                box = sample_boxes(n_total, spec.scale, gen)[rows]
                flip = flip_all if self.shared_flip else torch.rand(n_total, generator=gen)[rows] < 0.5
                # with a shared flip the box is in mirrored-image coordinates: crop its mirror image, then mirror
                src = torch.where(flip[:, None], mirror(box), box) if self.shared_flip else box
                v = photometric(crop(x, src, spec.size, flip), spec, gen, n_total, rows)
                views.append(normalize(v, self.mean, self.std))
                boxes.append(box)
        return views, boxes


def photometric(v: torch.Tensor, spec: CropSpec, gen: torch.Generator, n_total: int, rows: slice) -> torch.Tensor:
    """Colour jitter, grey, blur and solarisation of crops (B, 3, s, s) in [0, 1], per ``spec``'s probabilities;
    draws for ``n_total`` images and uses ``rows``."""
    p = torch.rand(n_total, 4, generator=gen)[rows].to(v.device)         # jitter, grey, blur, solarize coins
    jit = torch.rand(n_total, 5, generator=gen)[rows].to(v.device)       # brightness, contrast, saturation, hue, order
    v = colour(v, jit, p[:, 0] < spec.jitter)
    v = torch.where((p[:, 1] < spec.grey)[:, None, None, None], grey(v), v)
    if spec.blur > 0:
        sig = (0.1 + 1.9 * torch.rand(n_total, generator=gen)[rows]).to(v.device)
        v = torch.where((p[:, 2] < spec.blur)[:, None, None, None], blur(v, sig), v)
    if spec.solarize > 0:
        v = torch.where((p[:, 3] < spec.solarize)[:, None, None, None], torch.where(v >= 0.5, 1 - v, v), v)
    return v


def mirror(box: torch.Tensor) -> torch.Tensor:
    """The left-right mirror image of (n, 4) boxes ``(x0, y0, x1, y1)`` in [0, 1]."""
    return torch.stack([1 - box[:, 2], box[:, 1], 1 - box[:, 0], box[:, 3]], dim=1)


def sample_boxes(n: int, scale: tuple[float, float], gen: torch.Generator,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop boxes: area ~ U(scale), log-aspect ~ U(log ratio), clipped to the image.

    Returns:
        float (n, 4) ``(x0, y0, x1, y1)`` in [0, 1].
    """
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=gen)
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=gen)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    u = torch.rand(n, 2, generator=gen)
    x0, y0 = u[:, 0] * (1 - w), u[:, 1] * (1 - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def crop(x: torch.Tensor, box: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear resample of the boxes of ``x`` (B, C, H, W) to (B, C, size, size), optionally mirrored."""
    box = box.to(x.device, x.dtype)
    cx, cy = box[:, 0] + box[:, 2] - 1, box[:, 1] + box[:, 3] - 1     # centres in [-1, 1]
    sx, sy = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]             # half-extents in [-1, 1] units
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, repeated over the 3 channels."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def colour(x: torch.Tensor, u: torch.Tensor, apply: torch.Tensor, strength=(0.4, 0.4, 0.2, 0.1)) -> torch.Tensor:
    """torchvision-style ColorJitter with per-image factors drawn from ``u`` (B, 5) in [0, 1).

    Brightness, contrast and saturation factors ~ U(1 - s, 1 + s); hue rotates the chroma plane of YIQ
    by up to ``s * 2 pi`` (a linear stand-in for HSV hue shifting). The order is brightness, contrast,
    saturation, hue or its reverse (``u[:, 4]``), a cheap version of torchvision's random order.
    """
    B = x.shape[0]
    f = 1 + (2 * u[:, :3] - 1) * x.new_tensor(strength[:3])                    # (B, 3)
    ang = (2 * u[:, 3] - 1) * strength[3] * 2 * math.pi                          # (B,)

    def bright(y):
        return y * f[:, 0].view(B, 1, 1, 1)

    def contrast(y):
        m = grey(y).mean(dim=(1, 2, 3), keepdim=True)
        return (y - m) * f[:, 1].view(B, 1, 1, 1) + m

    def sat(y):
        g = grey(y)
        return (y - g) * f[:, 2].view(B, 1, 1, 1) + g

    def hue(y):
        yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        rgb = torch.linalg.inv(yiq)
        c, s = torch.cos(ang), torch.sin(ang)
        rot = torch.zeros(B, 3, 3, device=x.device, dtype=x.dtype)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, c, -s, s, c
        m = rgb @ rot @ yiq                                                       # (B, 3, 3)
        return torch.einsum("bij,bjhw->bihw", m, y)

    y = x
    fwd = (u[:, 4] < 0.5).view(B, 1, 1, 1)
    a = hue(sat(contrast(bright(y).clamp(0, 1)).clamp(0, 1)).clamp(0, 1)).clamp(0, 1)
    b = bright(contrast(sat(hue(y).clamp(0, 1)).clamp(0, 1)).clamp(0, 1)).clamp(0, 1)
    out = torch.where(fwd, a, b)
    return torch.where(apply.view(B, 1, 1, 1), out, x)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur with standard deviation ``sigma`` (B,) in pixels (kernel 2*ceil(2 sigma)+1)."""
    B, C, H, W = x.shape
    r = max(1, int(math.ceil(2 * float(sigma.max()))))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)                                               # (B, 2r+1)
    y = x.reshape(1, B * C, H, W)
    kh = k.repeat_interleave(C, 0).view(B * C, 1, 1, -1)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), kh, groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), kh.transpose(2, 3), groups=B * C)
    return y.view(B, C, H, W)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of global step ``step``: a pure function of (seed, step), so resumed and
    data-parallel runs draw the same views without carrying generator state."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))
