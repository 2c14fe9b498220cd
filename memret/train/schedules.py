"""Per-step schedules as precomputed arrays indexed by the global step (as ``dino/utils.py``'s
``cosine_scheduler``), so a loop reads ``lr[it]`` and a resumed run continues on the same curve."""

from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0,
                    start_warmup: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``start_warmup`` to ``base``, then a half cosine from ``base`` to ``final``.

    Args:
        base: value at the end of warm-up. final: value at the last step.
        epochs, steps_per_epoch: the schedule has ``epochs * steps_per_epoch`` entries.
        warmup_epochs: length of the linear warm-up in epochs (may be fractional).
        start_warmup: value at step 0 of the warm-up.

    Returns:
        float64 array of shape ``(epochs * steps_per_epoch,)``.

    Raises:
        ValueError: non-positive lengths or a warm-up longer than the schedule.
    """
    if epochs <= 0 or steps_per_epoch <= 0:
        raise ValueError(f"epochs and steps_per_epoch must be positive, got {epochs} and {steps_per_epoch}")
    total = int(epochs * steps_per_epoch)
    warm = int(round(warmup_epochs * steps_per_epoch))
    if not 0 <= warm <= total:
        raise ValueError(f"warm-up of {warm} steps does not fit a schedule of {total} steps")
    ramp = np.linspace(start_warmup, base, warm, endpoint=False) if warm else np.zeros(0)
    t = np.arange(total - warm)
    decay = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(len(t), 1)))
    out = np.concatenate([ramp, decay])
    assert len(out) == total
    return out


def linear_warmup_decay(base: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then linear decay to 0 (BERT/Contriever).

    Returns:
        float64 array of shape ``(total_steps,)``.
    """
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}")
    s = np.arange(total_steps, dtype=np.float64)
    up = (s + 1) / max(warmup_steps, 1)
    down = (total_steps - s) / max(total_steps - warmup_steps, 1)
    return base * np.where(s < warmup_steps, up, down).clip(0, 1)
