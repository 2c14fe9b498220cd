"""Running a ViT encoder on a subset of its patches (MSN's masked anchors, LOCA's masked reference).

memret's ViT encoders wrap timm's ``VisionTransformer`` (``encoder.model``); dropping patch tokens after
the position embedding and before the blocks means only the kept patches are computed, as in
``msn/src/deit.py`` ``forward_features(patch_drop=...)``. Other encoder families have no tokens to
drop, and these objectives say so.
"""

from __future__ import annotations

import torch
from torch import nn

_VIT_PARTS = ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head", "num_prefix_tokens")


def vit_of(encoder: nn.Module, objective: str) -> nn.Module:
    """The timm ViT inside a memret encoder.

    Raises:
        ValueError: the encoder is not a patch-token transformer (names the objective that needs one).
    """
    vit = getattr(encoder, "model", None)
    if vit is None or not all(hasattr(vit, a) for a in _VIT_PARTS):
        raise ValueError(f"{objective} masks patch tokens and needs a ViT encoder (e.g. vit_tiny_cifar); "
                         f"got {type(getattr(encoder, 'model', encoder)).__name__}")
    return vit


def n_patch_tokens(encoder: nn.Module, x: torch.Tensor) -> int:
    """Number of patch tokens the encoder's ViT makes from images shaped like ``x`` (no computation)."""
    ph, pw = vit_of(encoder, "patch masking").patch_embed.patch_size
    return (x.shape[-2] // ph) * (x.shape[-1] // pw)


def random_keep(n_patches: int, keep: int, gen: torch.Generator) -> torch.Tensor:
    """``keep`` patch indices out of ``n_patches``, sorted, drawn from ``gen`` (one draw for the whole
    batch, as MSN does, so every rank of a data-parallel run drops the same patches)."""
    if not 1 <= keep <= n_patches:
        raise ValueError(f"cannot keep {keep} of {n_patches} patches")
    return torch.randperm(n_patches, generator=gen)[:keep].sort().values


def vit_tokens(vit: nn.Module, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens (B, prefix + n, D) after the final norm, computed on the kept patches only.

    Args:
        vit: a timm VisionTransformer (see :func:`vit_of`). x: images (B, 3, H, W).
        keep: int64 (n,) patch indices to keep (row-major over the patch grid); ``None`` keeps all.
    """
    t = vit._pos_embed(vit.patch_embed(x))           # (B, prefix + N, D)
    if keep is not None:
        p = vit.num_prefix_tokens
        t = torch.cat([t[:, :p], t[:, p:].index_select(1, keep.to(t.device))], dim=1)
    t = vit.norm_pre(vit.patch_drop(t))
    return vit.norm(vit.blocks(t))


def vit_pool(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The encoder's pooled feature (B, D) from its tokens (class token or average, as configured)."""
    return vit.forward_head(tokens, pre_logits=True)
