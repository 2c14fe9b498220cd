"""The one training function every objective runs through (``dino/main_dino.py`` ``train_dino`` /
``train_one_epoch``, written out as a single narrated function).

Per step: draw the global batch's views from a generator that is a pure function of (seed, step), take
this rank's rows, read lr / weight decay / EMA momentum / the objective's own values from precomputed
arrays, forward + loss, backward, clip, AdamW step, EMA update of the teacher. After each epoch: the
k-NN monitor (through memret's ``DenseIndex``) and a checkpoint (``train_state.pt`` for exact resume,
``checkpoint.pt`` with the teacher's encoder for ``memret.encoders.create(NAME, checkpoint=...)``).

A time budget (``minutes``) becomes a step count before the first step, from the measured speed of a few
throw-away steps on a copy of the objective, so the cosine schedules end where the budget ends; a hard
stop still ends the run if the machine slows down.

Data parallel: under ``torchrun`` the student is wrapped in DDP (``sharding="ddp"``) or sharded with
torch's ``fully_shard`` (``sharding="fsdp"``, teacher sharded alike so the EMA runs shard by shard).
Every rank makes the views of its own slice of the same global draw, so the run equals the
single-process run on the whole batch (up to batch norm, which sees only the local slice).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from memret.pretrain.objective import Objective
from memret.pretrain.views import step_generator
from memret.train import barrier, cosine_schedule, is_main, load_checkpoint, rank_world, rng_state, save_checkpoint
from memret.train import set_rng_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain` (DINO's defaults where they fit a small machine).

    ``epochs`` or ``minutes`` fixes the length; ``lr`` is per 256 images (scaled by the global batch).
    ``knn_every``: epochs between k-NN monitor evaluations (0: only at the end).
    """

    epochs: int | None = None
    minutes: float | None = None
    batch_size: int = 256
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_frac: float = 0.1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    seed: int = 0
    knn_every: int = 1
    amp: bool | None = None
    sharding: Literal["ddp", "fsdp"] = "ddp"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.minutes is None):
            raise ValueError("give exactly one of epochs and minutes")
        if self.batch_size < 1 or (self.epochs is not None and self.epochs < 1):
            raise ValueError(f"batch_size and epochs must be positive, got {self.batch_size}, {self.epochs}")
        if self.sharding not in ("ddp", "fsdp"):
            raise ValueError(f"sharding must be 'ddp' or 'fsdp', got {self.sharding!r}")


@dataclass
class PretrainResult:
    epochs: float
    steps: int
    seconds_train: float
    losses: list[float] = field(default_factory=list)       # mean loss per epoch
    knn: list[tuple[float, float]] = field(default_factory=list)  # (epoch, k-NN top-1) monitor history
    images_per_second: float = 0.0
    stopped_by_clock: bool = False


def pretrain(objective: Objective, images: Any, config: PretrainConfig, device: str | torch.device = "cpu",
             out_dir: str | Path | None = None, monitor: Callable[[nn.Module], float] | None = None,
             progress: bool = True, encoder_meta: dict[str, Any] | None = None,
             on_step: Callable[[int, float], None] | None = None) -> PretrainResult:
    """Train ``objective`` on unlabelled ``images`` (uint8 (3, H, W) items, e.g. :class:`UInt8Images`).

    Args:
        objective: DINO / MSN / LOCA / SwAV around an encoder (moved to ``device`` here).
        images: the training images; with ``out_dir``, a run found there is resumed exactly.
        monitor: ``f(encoder) -> k-NN top-1``, called every ``config.knn_every`` epochs and at the end.
        encoder_meta: stored in ``checkpoint.pt`` beside the weights (encoder name and kwargs).
        on_step: ``f(step, loss)`` after every step (tests record the loss curve with it).

    Returns:
        :class:`PretrainResult` (per-epoch losses, monitor history, throughput).
    """
    rank, world = rank_world()
    device = torch.device(device)
    out = Path(out_dir) if out_dir is not None else None
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} does not split over {world} ranks")
    local_bs = config.batch_size // world
    steps_per_epoch = len(images) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(images)} images give no full batch of {config.batch_size}")
    amp = device.type == "cuda" if config.amp is None else config.amp
    objective.to(device).train()

    # ============ planning the run: a step count fixes every schedule ============
    state_path = out / "train_state.pt" if out is not None else None
    resumed = state_path is not None and state_path.is_file()
    if resumed:
        plan = torch.load(state_path, map_location="cpu", weights_only=False)["plan"]
    else:
        if config.epochs is not None:
            total = config.epochs * steps_per_epoch
        else:
            sec = _seconds_per_step(objective, images, config, local_bs, device, amp)
            total = max(1, int(config.minutes * 60 / sec))
            total = int(_all_reduce_max(total, device))
        plan = {"total_steps": total, "steps_per_epoch": steps_per_epoch, "batch_size": config.batch_size}
    total_steps = plan["total_steps"]
    if plan["steps_per_epoch"] != steps_per_epoch or plan["batch_size"] != config.batch_size:
        raise ValueError(f"{state_path} was planned for {plan}; this run has {steps_per_epoch} steps of "
                         f"{config.batch_size}: use another --out or the same data and batch size")
    n_epochs = math.ceil(total_steps / steps_per_epoch)

    # ============ schedules (pure arrays indexed by global step) ============
    warm = config.warmup_frac
    lr = cosine_schedule(config.lr * config.batch_size / 256, config.min_lr, 1, total_steps, warm)
    wd = cosine_schedule(config.weight_decay, config.weight_decay_end, 1, total_steps)
    extra = objective.schedules(total_steps, steps_per_epoch)

    # ============ wrapping for data parallel, optimiser ============
    student = _parallelise(objective, config.sharding, device) if world > 1 else None
    decay = [p for p in objective.student.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in objective.student.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=float(lr[0]))

    # ============ resuming ============
    start_step, result = 0, PretrainResult(epochs=0.0, steps=0, seconds_train=0.0)
    if resumed:
        ck = load_checkpoint(state_path, map_location="cpu")
        _load_state(objective, optimizer, ck, config.sharding if world > 1 else None)
        start_step = ck["step"]
        result = PretrainResult(**ck["result"])
        set_rng_state(ck["rng"])
        log.info("resumed %s at step %d of %d", state_path, start_step, total_steps)

    # ============ training ============
    bar = _progress(total_steps, start_step, progress and is_main())
    clock = time.perf_counter()
    budget = None if config.minutes is None else config.minutes * 60
    step = start_step
    loss_sum, loss_n = 0.0, 0
    while step < total_steps:
        epoch, it = divmod(step, steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(images))
        rows = order[it * config.batch_size:(it + 1) * config.batch_size]
        # Step 1: this rank's images, and its rows of the global batch's views
        batch = _fetch(images, rows[rank * local_bs:(rank + 1) * local_bs]).to(device, non_blocking=True)
        gen = step_generator(config.seed, step)
        views, boxes = objective.views(batch, gen, n_total=config.batch_size, offset=rank * local_bs)
        if config.channels_last:  # NHWC: faster convolutions on CPUs (the weights were converted by the caller)
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        values = {k: float(v[step]) for k, v in extra.items()}
        # Step 2: schedules into the optimiser
        for i, g in enumerate(optimizer.param_groups):
            g["lr"] = float(lr[step])
            if i == 0:
                g["weight_decay"] = float(wd[step])
        # Step 3: forward and loss (bfloat16 autocast on GPUs)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, stats = objective(views, boxes, values, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower lr or raise the teacher "
                                     "temperature / EMA momentum")
        # Step 4: backward, clip, step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        objective.after_backward(values)
        if config.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([p for p in objective.student.parameters() if p.grad is not None],
                                           config.clip_grad)
        optimizer.step()
        # Step 5: EMA teacher
        objective.momentum_update(values.get("momentum", 0.0))

        step += 1
        loss_v = float(loss.detach())
        loss_sum, loss_n = loss_sum + loss_v, loss_n + 1
        if on_step is not None:
            on_step(step, loss_v)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", **{k: f"{v:.3g}" for k, v in stats.items()})
        elapsed = time.perf_counter() - clock
        out_of_time = budget is not None and result.seconds_train + elapsed > budget
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps or out_of_time

        # ============ end of epoch: monitor, checkpoint ============
        if end_of_epoch:
            result.seconds_train += elapsed
            result.steps, result.epochs = step, step / steps_per_epoch
            result.losses.append(loss_sum / max(loss_n, 1))
            result.images_per_second = result.steps * config.batch_size / max(result.seconds_train, 1e-9)
            loss_sum, loss_n = 0.0, 0
            last = step == total_steps or out_of_time
            if monitor is not None and ((config.knn_every and (epoch + 1) % config.knn_every == 0) or last):
                with _gathered(objective):
                    acc = monitor(objective.encoder())
                result.knn.append((round(result.epochs, 4), acc))
                log.info("epoch %.2f  loss %.4f  k-NN %.4f", result.epochs, result.losses[-1], acc)
            if out is not None:
                _save(out, objective, optimizer, step, plan, result, encoder_meta,
                      config.sharding if world > 1 else None)
            clock = time.perf_counter()
            if out_of_time:
                result.stopped_by_clock = True
                log.warning("time budget spent at step %d of %d", step, total_steps)
                break
    bar.close()
    if student is not None and config.sharding == "ddp":
        objective.student = student
    if student is not None and config.sharding == "fsdp":
        _unshard(objective)  # leave whole weights behind for evaluation and export
    return result


# ============ helpers ============
def _fetch(images: Any, rows: np.ndarray) -> torch.Tensor:
    if hasattr(images, "batch"):
        return images.batch(rows)
    return torch.stack([images[int(i)][0] for i in rows])


def _seconds_per_step(objective: Objective, images: Any, config: PretrainConfig, local_bs: int,
                      device: torch.device, amp: bool, n: int = 3) -> float:
    """Median time of ``n`` steps (after one warm-up) on a deep copy: the real run is untouched."""
    cpu_rng = torch.get_rng_state()  # the probe must not shift the real run's random stream
    probe = copy.deepcopy(objective)
    opt = torch.optim.AdamW(probe.student.parameters(), lr=0.0)
    values = {k: float(v[0]) for k, v in probe.schedules(10, 10).items()}
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        gen = step_generator(config.seed + 7919, i)
        batch = _fetch(images, np.arange(i * local_bs, (i + 1) * local_bs) % len(images)).to(device)
        views, boxes = probe.views(batch, gen, n_total=local_bs)
        if config.channels_last:  # the same work as a real step (see the training loop)
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = probe(views, boxes, values, gen)
        opt.zero_grad()
        loss.backward()
        if config.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([p for p in probe.student.parameters() if p.grad is not None],
                                           config.clip_grad)
        opt.step()
        float(loss.detach())  # the loop reads the loss every step
        probe.momentum_update(values.get("momentum", 0.99))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    del probe, opt
    torch.set_rng_state(cpu_rng)
    return float(np.median(times[1:]))


def _all_reduce_max(x: int, device: torch.device) -> int:
    if rank_world()[1] == 1:
        return x
    import torch.distributed as dist

    t = torch.tensor([x], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _parallelise(objective: Objective, sharding: str, device: torch.device) -> nn.Module:
    """Wrap (DDP) or shard (FSDP) the student in place; returns the unwrapped student."""
    student = objective.student
    if sharding == "ddp":
        if device.type == "cuda":
            objective.student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            student = objective.student
        objective.student = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
        return student
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (rank_world()[1],))
    fully_shard(objective.student, mesh=mesh)
    if objective.teacher is not None:
        fully_shard(objective.teacher, mesh=mesh)
        objective.teacher.reshard()
    return objective.student


def _unshard(objective: Objective) -> list[nn.Module]:
    mods = [m for m in (objective.student, objective.teacher) if m is not None and hasattr(m, "unshard")]
    for m in mods:
        m.unshard()
    return mods


@contextlib.contextmanager
def _gathered(objective: Objective):
    """Whole (unsharded) weights inside the block when the objective was sharded with ``fully_shard``."""
    mods = _unshard(objective)
    try:
        yield
    finally:
        for m in mods:
            m.reshard()


def _state(objective: Objective, optimizer: torch.optim.Optimizer, sharding: str | None) -> tuple[dict, dict]:
    """(full objective state dict with the student unwrapped, optimiser state dict) on the CPU."""
    if sharding == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(objective, optimizer, options=opts)
    sd = {k.replace("student.module.", "student."): v.detach().cpu() for k, v in objective.state_dict().items()}
    return sd, optimizer.state_dict()


def _load_state(objective: Objective, optimizer: torch.optim.Optimizer, ck: dict, sharding: str | None) -> None:
    if sharding == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(objective, optimizer, model_state_dict=ck["objective"], optim_state_dict=ck["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        return
    sd = ck["objective"]
    if isinstance(objective.student, nn.parallel.DistributedDataParallel):
        sd = {("student.module." + k[len("student."):] if k.startswith("student.") else k): v for k, v in sd.items()}
    objective.load_state_dict(sd)
    optimizer.load_state_dict(ck["optimizer"])


def _save(out: Path, objective: Objective, optimizer: torch.optim.Optimizer, step: int, plan: dict,
          result: PretrainResult, meta: dict | None, sharding: str | None) -> None:
    """``train_state.pt`` (everything, for resume) and ``checkpoint.pt`` (the teacher's encoder)."""
    sd, opt_sd = _state(objective, optimizer, sharding)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / "train_state.pt", objective=sd, optimizer=opt_sd, step=step, plan=plan,
                        result=asdict(result), rng=rng_state())
        prefix = "teacher.backbone." if objective.teacher is not None else "student.backbone."
        enc = {"backbone." + k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        # "teacher" is the key memret.encoders' converter (and DINO's own format) looks for
        save_checkpoint(out / "checkpoint.pt", teacher=enc, objective_name=objective.name, step=step,
                        meta=json.loads(json.dumps(meta or {})))
    barrier()


def _progress(total: int, start: int, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=start, desc="pretrain", mininterval=5, dynamic_ncols=True)
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass
