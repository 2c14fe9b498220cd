"""Checkpoints for exact resume: model/optimizer state dicts, the loop's counters, and every RNG state
(python, numpy, torch CPU and CUDA), written atomically so a crash mid-save keeps the previous one."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from memret.persist import atomic_write


def rng_state() -> dict[str, Any]:
    """The process-wide RNG states (python, numpy legacy, torch CPU, CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Atomically write ``state`` (state dicts, counters, generators' states, config) with ``torch.save``.

    Objects with a ``state_dict()`` method (modules, optimizers, GradScalers) are stored as their state dict;
    ``torch.Generator`` objects as their state. Returns the path written.
    """
    def plain(v: Any) -> Any:
        if isinstance(v, torch.Generator):
            return {"__generator__": v.get_state()}
        if hasattr(v, "state_dict") and callable(v.state_dict):
            return v.state_dict()
        return v

    blob = {k: plain(v) for k, v in state.items()}
    return atomic_write(path, lambda f: torch.save(blob, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", **targets: Any) -> dict[str, Any]:
    """Read a checkpoint and load the entries named in ``targets`` into those objects in place.

    ``load_checkpoint(p, model=m, optimizer=opt, gen=g)`` calls ``m.load_state_dict(ckpt["model"])`` and so on
    (a ``torch.Generator`` gets ``set_state``). Returns the whole checkpoint dict (counters, config, ...).

    Raises:
        FileNotFoundError: no checkpoint at ``path``. KeyError: a target is not in the checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # weights_only=False: the checkpoint holds RNG states (tuples, numpy arrays) written by this module.
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    for name, obj in targets.items():
        if name not in ckpt:
            raise KeyError(f"checkpoint {path} has no {name!r}; it has {sorted(ckpt)}")
        if isinstance(obj, torch.Generator):
            obj.set_state(ckpt[name]["__generator__"])
        else:
            obj.load_state_dict(ckpt[name])
    return ckpt
