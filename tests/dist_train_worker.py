"""Worker for test_data_parallel_training: one rank of a gloo group (or world 1) running train_backbone."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from memret.incremental.backbone import Backbone, train_backbone
from memret.incremental.data import ArrayImages
from memret.incremental.training import TrainConfig


class TinyConvNet(torch.nn.Module):
    """No batch norm: a data-parallel step then equals the single-process step exactly."""

    embed_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def initial_model() -> Backbone:
    """The model every rank (and the single-process reference) starts from."""
    torch.manual_seed(0)
    return Backbone(TinyConvNet(), torch.nn.Linear(8, 4))


def train(rank: int, world: int) -> dict:
    g = np.random.default_rng(0)
    images = ArrayImages(g.integers(0, 255, (96, 16, 16, 3), dtype=np.uint8), np.arange(96) % 4)
    model = initial_model()
    cfg = TrainConfig(epochs=2, batch_size=16, encoder_lr=0.1)
    rows, mem_rows = np.arange(64), np.arange(64, 96)
    y, mem_y = np.arange(64) % 2, np.arange(64, 96) % 4
    train_backbone(model, images, rows, y, mem_rows, mem_y, [0, 1, 2, 3], cfg, seed=3, task=1, progress=False)
    return model.state_dict()


if __name__ == "__main__":
    out, rank, world = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.save(train(rank, world), out / f"state{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
