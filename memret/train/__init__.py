"""What memret's training loops share (torch only, no model knowledge).

- :mod:`schedules`: precomputed per-step schedules (cosine with linear warm-up), pure and testable.
- :mod:`checkpoint`: atomic checkpoints with RNG states, for exact resume.
- :mod:`distributed`: ``torchrun`` set-up and tear-down (barrier, then destroy), rank/world helpers.

Each loop (self-supervised pre-training, retriever training, encoders trained on a stream) stays a
plain, narrated function in its own package and imports these.
"""

from memret.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from memret.train.distributed import (
    all_reduce_mean,
    barrier,
    distributed_session,
    is_main,
    rank_world,
)
from memret.train.schedules import cosine_schedule, linear_warmup_decay

__all__ = [
    "all_reduce_mean", "barrier", "cosine_schedule", "distributed_session", "is_main", "linear_warmup_decay",
    "load_checkpoint", "rank_world", "rng_state", "save_checkpoint", "set_rng_state",
]
