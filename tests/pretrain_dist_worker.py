"""Worker for test_data_parallel_equals_single_process: one rank of a 2-process gloo group (or world 1)
pre-training a tiny ViT with DINO, data-parallel (DDP) or sharded (FSDP ``fully_shard``)."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import memret.encoders as E
from memret.pretrain import DINO, PretrainConfig, UInt8Images, pretrain
from memret.pretrain.dino import dino_views


def run(out: Path, rank: int, world: int, sharding: str) -> dict:
    g = np.random.default_rng(0)
    images = UInt8Images(g.integers(0, 255, (32, 16, 16, 3), dtype=np.uint8))
    torch.manual_seed(0)
    enc = E.create("vit_tiny_cifar", img_size=16, patch_size=8, dynamic_img_size=True)
    obj = DINO(enc, views=dino_views(16, 8, 2), out_dim=64, hidden=32, bottleneck=16, momentum_teacher=0.9)
    losses = []
    cfg = PretrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_frac=0.0, seed=5, sharding=sharding)
    pretrain(obj, images, cfg, out_dir=out, progress=False, on_step=lambda s, v: losses.append(v))
    teacher = torch.load(out / "checkpoint.pt", weights_only=True)["teacher"]
    return {"losses": np.asarray(losses), "teacher": teacher}


if __name__ == "__main__":
    out, rank, world, sharding = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    res = run(out / "run", rank, world, sharding)
    torch.save({"losses": torch.as_tensor(res["losses"]), "teacher": res["teacher"]}, out / f"out{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
