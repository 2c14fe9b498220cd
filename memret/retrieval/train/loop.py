"""The one training loop of memret's retrievers: any model-with-loss, any stream of global batches.

AdamW with a precomputed linear warm-up + decay schedule; bf16 autocast on CUDA; data parallel under
``torchrun`` (each rank takes its slice of the global batch, gradients are all-reduced by hand: the BERT
pooler gets no gradient and the MoCo key encoder and queue are not trained, which DDP would object to);
checkpoints with every RNG state for exact resume; tqdm progress; the loss log as JSONL and PNG.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from memret.train import (barrier, is_main, linear_warmup_decay, load_checkpoint, rank_world, rng_state,
                          save_checkpoint, set_rng_state)

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping of one run.

    ``steps`` fixes the schedule's length; with only ``minutes``, the first steps are timed and the schedule
    is sized to fit the time, then re-sized every ``resize_every`` steps from the measured pace (machines
    shared with other jobs speed up and slow down), so the warm-up + decay ends when the time ends. The
    budget counts across resumes. With both, ``minutes`` is only a hard stop.
    """

    lr: float = 5e-5
    warmup: float = 0.1              # fraction of the steps spent warming up
    weight_decay: float = 0.01
    beta2: float = 0.98              # Contriever: AdamW betas (0.9, 0.98), eps 1e-6
    eps: float = 1e-6
    clip: float | None = None        # gradient-norm clipping (None: off)
    steps: int | None = None
    minutes: float | None = None
    checkpoint_every: int = 100
    resize_every: int = 10           # minutes-sized schedules: re-size every N steps (0: never)
    export_every: int | None = None  # also export the encoder to out/step-N every N steps (model selection)
    seed: int = 0
    device: str = "cpu"
    amp: bool = True                 # bf16 autocast on CUDA (CPU always runs fp32)
    progress: bool = True


def _agree(x: float, op=None) -> float:
    """A value all ranks agree on (rank 0's, or the max with ``op="max"``)."""
    if rank_world()[1] == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    if op == "max":
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    else:
        dist.broadcast(t, 0)
    return float(t.item())


def resize(step: int, total: int, seconds_left: float, seconds_per_step: float, margin: float = 0.97) -> int:
    """The schedule length that ends when the time does: ``step`` plus the steps that fit in ``margin`` of
    ``seconds_left`` at ``seconds_per_step`` (at least one more step; never fewer than done)."""
    if seconds_per_step <= 0:
        return total
    return step + max(1, int(margin * max(seconds_left, 0.0) / seconds_per_step))


def _probe_seconds_per_step(model, batches, to_inputs, autocast, n: int = 3) -> float:
    """Time forward + backward on the first batches, then put model and RNGs back as they were."""
    saved, rngs = copy.deepcopy(model.state_dict()), rng_state()
    times = []
    it = batches(0)
    for _ in range(n):
        t0 = time.perf_counter()
        with autocast:
            loss, _ = model(**to_inputs(next(it)))
        loss.backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    set_rng_state(rngs)
    return min(times[1:]) if n > 1 else times[0]


def fit(model: torch.nn.Module, batches: Callable[[int], Iterator[dict]], to_inputs: Callable[[dict], dict],
        cfg: LoopConfig, out: str | Path, export: Callable[[Path], None]) -> dict:
    """Train ``model`` (``model(**inputs) -> (loss, stats)``) and export it to ``out``.

    Args:
        model: the model-with-loss, already on ``cfg.device``.
        batches: ``batches(start_step)`` yields the global batches of steps ``start_step, start_step + 1, ...``.
        to_inputs: turns a global batch into this rank's keyword inputs (its slice, tokenized, on device).
        cfg: the run's settings.
        out: output folder; ``checkpoint.pt`` there is resumed from.
        export: ``export(out)`` writes the trained encoder (called on rank 0 at the end).

    Returns:
        A summary: steps done, total steps, seconds, last and first logged losses.
    """
    out = Path(out)
    rank, world = rank_world()
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda"
                else nullcontext())
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # biases and LayerNorm weights, as BERT recipes do
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, cfg.beta2), eps=cfg.eps)

    # ------------------------------------------------------------------ resume, or size the schedule
    step, history, total = 0, [], cfg.steps
    ckpt_path = out / CHECKPOINT
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, map_location=device, model=model, optimizer=opt)
        step, history, total = ckpt["step"], ckpt["history"], ckpt["total_steps"]
        if history:  # the time budget counts the time already spent
            t_start -= history[-1]["seconds"]
        set_rng_state(ckpt["rng"][rank] if len(ckpt["rng"]) == world else ckpt["rng"][0])
        log.info("resumed from %s at step %d of %d", ckpt_path, step, total)
    if step == 0:  # dropout masks; a resumed run restores the generator instead
        torch.manual_seed(cfg.seed + 1000 * rank)
    timed = cfg.steps is None and cfg.minutes is not None  # the schedule follows the clock
    if total is None:
        if cfg.minutes is None:
            raise ValueError("give the number of steps, the minutes, or both")
        per_step = _agree(_probe_seconds_per_step(model, batches, to_inputs, autocast), op="max")
        total = resize(0, 1, cfg.minutes * 60 - (time.perf_counter() - t_start), per_step, 0.95)
        log.info("%.2f s per step: %d steps fit in %.1f minutes", per_step, total, cfg.minutes)
    lr = linear_warmup_decay(cfg.lr, total, int(round(cfg.warmup * total)))

    def checkpoint() -> None:
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if is_main():
            save_checkpoint(ckpt_path, model=model, optimizer=opt, step=step, history=history,
                            total_steps=total, rng=rngs, config=asdict(cfg))
            write_log(out, history)
        barrier()

    # ------------------------------------------------------------------ the loop
    model.train()
    it = batches(step)
    bar = None
    if cfg.progress and is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="training", unit="step", dynamic_ncols=True)
    t_loop, step_loop = time.perf_counter(), step
    while step < total:
        if (timed and cfg.resize_every and step > step_loop and (step - step_loop) % cfg.resize_every == 0):
            now = time.perf_counter()
            pace = _agree((now - t_loop) / (step - step_loop), op="max")
            new = int(_agree(resize(step, total, cfg.minutes * 60 - (now - t_start), pace)))
            if new != total:
                if abs(new - total) >= max(2, total // 50):
                    log.info("%.2f s per step: schedule re-sized from %d to %d steps", pace, total, new)
                total = new
                lr = linear_warmup_decay(cfg.lr, total, int(round(cfg.warmup * total)))
                if bar is not None:
                    bar.total = total
                    bar.refresh()
        if cfg.minutes is not None and _agree(time.perf_counter() - t_start > cfg.minutes * 60, op="max"):
            log.warning("time budget of %.1f minutes reached at step %d of %d", cfg.minutes, step, total)
            break
        for g in opt.param_groups:
            g["lr"] = float(lr[step])
        with autocast:
            loss, stats = model(**to_inputs(next(it)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:  # the global batch's gradient: mean of the ranks' gradients of their slice's mean loss
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"loss is {stats['loss']} at step {step}; lower the learning rate")
        step += 1
        history.append({"step": step, "lr": float(lr[step - 1]), "seconds": time.perf_counter() - t_start, **stats})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['accuracy']:.1f}")
        if step % cfg.checkpoint_every == 0 and step < total:
            checkpoint()
        if cfg.export_every and step % cfg.export_every == 0 and step < total and is_main():
            export(out / f"step-{step}")
    if bar is not None:
        bar.close()

    # ------------------------------------------------------------------ save, export, plot
    checkpoint()
    if is_main():
        export(out)
        plot_loss(history, out / "loss.png")
    barrier()
    return {"steps": step, "total_steps": total, "seconds": time.perf_counter() - t_start,
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None}


def write_log(out: Path, history: list[dict]) -> None:
    """The per-step log (loss, accuracy, lr, seconds) as ``log.jsonl``, rewritten whole."""
    (out / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def plot_loss(history: list[dict], path: Path, window: int = 20) -> None:
    """Loss per step and its running mean over ``window`` steps, as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no loss plot")
        return
    if not history:
        return
    steps = [h["step"] for h in history]
    loss = [h["loss"] for h in history]
    w = max(1, min(window, len(loss) // 5 or 1))
    smooth = [sum(loss[max(0, i - w + 1):i + 1]) / len(loss[max(0, i - w + 1):i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label=f"running mean ({w})")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
