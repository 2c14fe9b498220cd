"""The encoder contract and the adapter that puts timm models behind it.

Every encoder is an ``nn.Module`` with ``embed_dim`` and
``forward(x) -> (B, D)`` (the pooled, pre-logits feature) and
``forward_features(x) -> (B, N, D)`` (tokens; for CNNs the flattened spatial map),
whatever its family. Returns never depend on train/eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memret.encoders.convert import convert_checkpoint


class Encoder(nn.Module):
    """Adapter over a timm model (or any module with ``forward_features`` / ``forward_head``)."""

    def __init__(self, model: nn.Module, embed_dim: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.embed_dim = int(embed_dim or getattr(model, "num_features"))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        if f.ndim == 4:  # CNN map (B, C, H, W) -> tokens (B, H*W, C)
            f = f.flatten(2).transpose(1, 2)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        return self.model.forward_head(f, pre_logits=True)


def load_weights(model: nn.Module, checkpoint: str | os.PathLike, strict_backbone: bool = True) -> nn.Module:
    """Load a local timm / DINO / MSN checkpoint file (``.pth``/``.pt``/``.safetensors``) into ``model``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file's weights do not fit the model (lists the mismatches).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        ckpt: Any = load_file(str(path))
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = convert_checkpoint(ckpt)
    own = model.state_dict()
    shape_bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_bad:
        raise ValueError(f"{path}: {len(shape_bad)} tensor(s) have other shapes than the model's, "
                         f"e.g. {shape_bad[:3]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "fc.", "head"))]
    if strict_backbone and (missing or unexpected):
        raise ValueError(f"{path} does not fit this model: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    return model


def timm_model(name: str, pretrained: bool | str = False, checkpoint: str | os.PathLike | None = None,
               **kwargs: Any) -> nn.Module:
    """``timm.create_model`` without a classifier head, with memret's weight options.

    Args:
        pretrained: ``True`` (timm's default weights for ``name``) or a timm ``"name.tag"``;
            needs the Hugging Face hub (or its cache), otherwise raises a clear error.
        checkpoint: a local checkpoint file (timm, DINO or MSN format).
    """
    import timm

    model_name = pretrained if isinstance(pretrained, str) else name
    try:
        model = timm.create_model(model_name, pretrained=bool(pretrained), num_classes=0, **kwargs)
    except (OSError, RuntimeError) as e:
        if pretrained:
            raise OSError(f"cannot fetch pretrained weights {model_name!r} ({e}). Offline, download the file "
                          "elsewhere and pass checkpoint=PATH.") from e
        raise
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model
