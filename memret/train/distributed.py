"""``torchrun`` set-up and tear-down shared by memret's loops; a single process is the world of one.

Tear-down is barrier, then ``destroy_process_group``: one rank destroying gloo while its peer is still
inside a collective aborts the peer ("terminate called without an active exception").
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank_world()[0] == 0


def barrier() -> None:
    """``dist.barrier()`` when a group is initialised; nothing otherwise."""
    if rank_world()[1] > 1:
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy; ``x`` itself in a single process)."""
    if rank_world()[1] == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / rank_world()[1]


@contextlib.contextmanager
def distributed_session(device: str = "cpu") -> Iterator[tuple[int, int]]:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), yield (rank, world).

    NCCL for CUDA devices, gloo otherwise; on CUDA each rank takes ``cuda:LOCAL_RANK``. A group that is
    already initialised is used as is and left alone on exit.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owned = world > 1 and not (dist.is_available() and dist.is_initialized())
    if owned:
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    try:
        yield rank_world()
    finally:
        if owned:
            dist.barrier()
            dist.destroy_process_group()
