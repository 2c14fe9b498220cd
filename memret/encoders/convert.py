"""Checkpoint formats -> plain timm state dicts, as pure functions over dicts of tensors."""

from __future__ import annotations

from typing import Any, Mapping

# Where each self-supervised codebase keeps the backbone inside its checkpoint.
_NESTED = ("model", "state_dict", "teacher", "target_encoder", "encoder", "student")
# Prefixes added by DDP wrappers and multi-crop/projector wrappers (DINO's MultiCropWrapper, MSN).
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# Projection/prototype heads of the pretraining objectives: not part of the encoder.
_HEADS = ("head.", "fc.", "prototypes", "projector.", "pred.")


def unwrap(ckpt: Mapping[str, Any], prefer: tuple[str, ...] = _NESTED) -> Mapping[str, Any]:
    """The innermost mapping of tensors: DINO keeps the teacher under ``"teacher"``, MSN the
    target encoder under ``"target_encoder"``, timm/torchvision save the bare state dict."""
    for key in prefer:
        inner = ckpt.get(key) if isinstance(ckpt, Mapping) else None
        if isinstance(inner, Mapping) and inner:
            return unwrap(inner, prefer)
    return ckpt


def strip_prefixes(state: Mapping[str, Any], prefixes: tuple[str, ...] = _PREFIXES) -> dict[str, Any]:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def convert_checkpoint(ckpt: Mapping[str, Any], drop_heads: bool = True) -> dict[str, Any]:
    """timm-named backbone weights from a timm, DINO or MSN checkpoint (already loaded as a dict)."""
    state = strip_prefixes(unwrap(ckpt))
    if drop_heads:
        state = {k: v for k, v in state.items() if not k.startswith(_HEADS)}
    return state
