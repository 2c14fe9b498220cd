"""ResNet baselines of class-incremental learning: ResNet-18 (timm) and the CIFAR ResNet-32 timm lacks."""

from __future__ import annotations

import torch
from torch import nn

from memret.encoders.base import Encoder, load_weights, timm_model


def resnet18_encoder(cifar_stem: bool = False, pretrained: bool | str = False, checkpoint=None) -> Encoder:
    """timm's ResNet-18; ``cifar_stem`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (32x32 inputs)."""
    model = timm_model("resnet18", pretrained=pretrained)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return Encoder(model)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet (6n+2 layers; n=5 is ResNet-32, the iCaRL/PyCIL backbone)."""

    def __init__(self, n: int = 5, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(_Basic(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.num_features = cin

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))  # (B, C, H, W)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return f.mean(dim=(2, 3))


def resnet32_encoder(checkpoint=None, depth: int | None = None, width: int | None = None) -> Encoder:
    """He et al.'s CIFAR ResNet: ``depth`` = 6n+2 layers (32 by default; 8, 14, 20 are cheaper), stage widths
    ``(width, 2 width, 4 width)`` (16 by default). Left unset, depth and width are read from ``checkpoint``
    when one is given (a memret.pretrain checkpoint of a ResNet-20 loads under this name), else 32 and 16.
    """
    if checkpoint is not None and (depth is None or width is None):
        d, w = _cifar_resnet_shape(checkpoint)
        depth, width = depth or d, width or w
    depth, width = depth or 32, width or 16
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n+2 layers (8, 14, 20, 32, 44, 56, ...), got depth {depth}")
    model = CifarResNet(n=(depth - 2) // 6, widths=(width, 2 * width, 4 * width))
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return Encoder(model)


def _cifar_resnet_shape(checkpoint) -> tuple[int | None, int | None]:
    """(depth, width) of the CIFAR ResNet stored in ``checkpoint`` ((None, None) when it is not one)."""
    from pathlib import Path

    from memret.encoders.convert import convert_checkpoint

    path = Path(checkpoint)
    if not path.is_file() or path.suffix == ".safetensors":
        return None, None
    state = convert_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
    blocks = {k.split(".")[1] for k in state if k.startswith("layers.") and k.endswith(".conv1.weight")}
    stem = state.get("stem.0.weight")
    if not blocks or stem is None:
        return None, None
    return 6 * (len(blocks) // 3) + 2, int(stem.shape[0])
