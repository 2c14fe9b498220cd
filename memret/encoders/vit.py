"""ViT with the ViT-22B recipe as options, and FlexiViT, both on timm's VisionTransformer.

ViT-22B (Dehghani et al. 2023) changes three things, each a flag here:
``parallel`` (attention and MLP read the same LayerNorm output and are summed,
timm's ``ParallelScalingBlock``), ``qk_norm`` (LayerNorm on queries and keys),
and no biases in the QKV projection (``qkv_bias=False``) and LayerNorms
(``norm_bias=False``).

FlexiViT (Beyer et al. 2023) keeps one set of base-size parameters (patch
embedding kernel, position embedding grid) and, at every training step, runs
at a patch size drawn from a configured distribution: the kernel is PI-resized
(the pseudo-inverse of bilinear resizing, so a resized kernel applied to a
bilinearly upsampled patch gives the original token) and the position embedding
bilinearly resized to the new grid. Inference runs at any listed patch size.
"""

from __future__ import annotations

import functools
from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.encoders.base import Encoder, load_weights

SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}  # width, depth, heads


def build_vit(size: str, patch_size: int = 16, img_size: int = 224, parallel: bool = False, qk_norm: bool = False,
              qkv_bias: bool = True, norm_bias: bool = True, drop_path_rate: float = 0.0, **kw):
    """A timm ``VisionTransformer`` (no classifier head) with the ViT-22B knobs."""
    from timm.models.vision_transformer import Block, ParallelScalingBlock, VisionTransformer

    if size not in SIZES:
        raise ValueError(f"unknown ViT size {size!r}; known: {sorted(SIZES)}")
    width, depth, heads = SIZES[size]
    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, num_classes=0, embed_dim=width, depth=depth, num_heads=heads,
        qkv_bias=qkv_bias, qk_norm=qk_norm, drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=1e-6, bias=norm_bias),
        block_fn=ParallelScalingBlock if parallel else Block, **kw)


def vit_encoder(size: str, pretrained: bool | str = False, checkpoint=None, **kw) -> Encoder:
    if pretrained:
        from memret.encoders.base import timm_model

        name = pretrained if isinstance(pretrained, str) else f"vit_{size}_patch{kw.get('patch_size', 16)}_224"
        return Encoder(timm_model(name, pretrained=name, checkpoint=checkpoint))
    model = build_vit(size, **kw)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return Encoder(model)


# ============ PI-resize and FlexiViT ============
@functools.lru_cache(maxsize=64)
def _pi_resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """(new_h*new_w, old_h*old_w) matrix P with P @ w = the PI-resized kernel (cached per size pair).

    B maps an old-size patch to its bilinear resize (column i = resize of basis vector i);
    PI-resize picks w' minimising ||B^T w' - w||, i.e. w' = pinv(B^T) w.
    """
    basis = torch.eye(old[0] * old[1], dtype=torch.float64).reshape(-1, 1, *old)
    B = F.interpolate(basis, size=new, mode="bilinear", antialias=False).reshape(old[0] * old[1], -1).T
    return torch.linalg.pinv(B.T).float()


def pi_resize_patch_embed(weight: torch.Tensor, new_size: Sequence[int]) -> torch.Tensor:
    """PI-resize a (D, C, h, w) patch-embedding kernel to (D, C, *new_size) (FlexiViT, eq. 4).

    Solves ``argmin_w' ||B^T w' - w||`` where ``B`` is bilinear resizing (no antialias), so that
    ``<w', resize(x)> = <w, x>`` for every patch ``x`` when upsampling. Same maths as timm's
    ``resample_patch_embed`` (the tests compare the two), but the pseudo-inverse is computed once per
    size pair rather than at every call: FlexiViT resizes at every training step.
    """
    old, new = tuple(weight.shape[-2:]), tuple(int(v) for v in new_size)
    if old == new:
        return weight
    P = _pi_resize_matrix(old, new).to(device=weight.device, dtype=weight.dtype)  # (new_n, old_n)
    return (weight.reshape(-1, old[0] * old[1]) @ P.T).reshape(*weight.shape[:2], *new)


def resize_pos_embed(pos: torch.Tensor, new_grid: Sequence[int], prefix: int = 1) -> torch.Tensor:
    """Bilinearly resize a (1, prefix + g*g, D) position embedding to a new grid."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos, list(new_grid), num_prefix_tokens=prefix, interpolation="bilinear",
                                  antialias=False)


def sample_patch_size(sizes: Sequence[int], probs: Sequence[float] | None, seed: int, step: int) -> int:
    """The patch size of training step ``step``: a pure function of (seed, step), so runs resume exactly."""
    return int(np.random.default_rng([seed, step]).choice(np.asarray(sizes), p=probs))


class FlexiViT(Encoder):
    """A ViT whose patch size can change at every step.

    Args:
        vit: a timm ``VisionTransformer`` built at the base patch size and image size.
        patch_sizes: the sizes training samples from (each must divide the image size).
        patch_probs: their probabilities (uniform by default).
        seed: seeds the per-step patch-size draws.
        eval_patch_size: patch size used when ``forward`` is called in eval mode without one.
    """

    def __init__(self, vit: nn.Module, patch_sizes: Sequence[int], patch_probs: Sequence[float] | None = None,
                 seed: int = 0, eval_patch_size: int | None = None) -> None:
        super().__init__(vit)
        self.img_size = int(vit.patch_embed.img_size[0])
        bad = [p for p in patch_sizes if self.img_size % p]
        if bad:
            raise ValueError(f"patch sizes {bad} do not divide the image size {self.img_size}")
        self.patch_sizes = tuple(int(p) for p in patch_sizes)
        self.patch_probs = None if patch_probs is None else tuple(float(p) for p in patch_probs)
        self.seed = seed
        self.eval_patch_size = eval_patch_size or self.patch_sizes[len(self.patch_sizes) // 2]
        # counts training forwards, for the per-step draw; a buffer, so it is saved and restored with the
        # weights and a resumed run continues the patch-size sequence where it stopped
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights saved before train_step was a buffer: start the patch-size sequence at step 0, as they did
        state_dict.setdefault(prefix + "train_step", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def patch_size_for(self, step: int) -> int:
        return sample_patch_size(self.patch_sizes, self.patch_probs, self.seed, step)

    def _tokens(self, x: torch.Tensor, patch_size: int | None) -> torch.Tensor:
        if patch_size is None:
            if self.training:
                patch_size = self.patch_size_for(int(self.train_step))
                self.train_step.add_(1)
            else:
                patch_size = self.eval_patch_size
        vit = self.model
        proj = vit.patch_embed.proj
        w = pi_resize_patch_embed(proj.weight, (patch_size, patch_size))
        t = F.conv2d(x, w, proj.bias, stride=patch_size)  # (B, D, H/p, W/p)
        grid = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)  # (B, N, D)
        pos = vit.pos_embed
        if pos.shape[1] != grid[0] * grid[1] + vit.num_prefix_tokens:
            pos = resize_pos_embed(pos, grid, vit.num_prefix_tokens)
        cls = vit.cls_token.expand(t.shape[0], -1, -1)
        t = torch.cat([cls, t], dim=1) + pos
        t = vit.norm_pre(vit.pos_drop(t))
        return vit.norm(vit.blocks(t))

    def forward_features(self, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        return self._tokens(x, patch_size)

    def forward(self, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        return self.model.forward_head(self._tokens(x, patch_size), pre_logits=True)


def flexivit_encoder(size: str, img_size: int, base_patch: int, patch_sizes: Sequence[int],
                     checkpoint=None, **kw) -> FlexiViT:
    flexi_kw = {k: kw.pop(k) for k in ("patch_probs", "seed", "eval_patch_size") if k in kw}
    vit = build_vit(size, patch_size=base_patch, img_size=img_size, **kw)
    if checkpoint is not None:
        load_weights(vit, checkpoint)
    return FlexiViT(vit, patch_sizes, **flexi_kw)
