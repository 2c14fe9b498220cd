"""Where a run's features come from: a frozen encoder, or an encoder trained on the stream.

:func:`memret.incremental.run` asks a *representation* for the features of
training and test rows, task by task:

- :class:`FrozenFeatures`: every image encoded once (cached); nothing trains.
- :class:`TrainedEncoder` (``run(train_encoder=True)``): before each task the
  encoder and the method's linear head train end to end on images, under the
  method's regime (:attr:`Method.regime`): the current task only (finetune), all
  data seen (joint), the current task with an equally large batch from the
  exemplar memory at every step (replay, kNN, MTN), or replay plus iCaRL's
  distillation (sigmoid targets from the previous model for the old classes).
  Afterwards the stored exemplars are re-encoded, so the memory, kNN, class
  means and the MTN always see features of the current encoder. From scratch
  with a registry name; fine-tuning with ``encoder_kw={"checkpoint": PATH}``.

Under an initialised ``torch.distributed`` group (``torchrun``), training is
data parallel: every rank draws the same seeded batch, takes its 1/world share
and DistributedDataParallel averages the gradients, so a step equals the
single-process step on the whole batch (exactly, for models without batch
norm and batches divisible by the world size).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.incremental.features import extract_features
from memret.incremental.methods import Method
from memret.incremental.training import MemoryBatches, TrainConfig, generator, seeded_init, train_epochs


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fetch(data, rows: np.ndarray) -> torch.Tensor:
    """A stacked batch of the given dataset rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if hasattr(data, "batch"):
        return data.batch(rows)
    return torch.stack([data[int(i)][0] for i in rows])


def augment_params(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets in [0, 2*pad] and flip flags for ``n`` images of side ``size`` (pad = size // 8)."""
    pad = max(1, size // 8)
    return torch.randint(0, 2 * pad + 1, (n, 2), generator=gen), torch.rand(n, generator=gen) < 0.5


def augment(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop after zero padding (pad = side // 8) and horizontal flip: the CIFAR recipe, batched."""
    B, C, H, W = x.shape
    pad = max(1, H // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    r = (offsets[:, 0, None] + torch.arange(H))[:, None, :, None]             # (B, 1, H, 1)
    c = offsets[:, 1, None] + torch.arange(W)
    c = torch.where(flips[:, None], c.flip(1), c)[:, None, None, :]           # (B, 1, 1, W)
    return xp[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], r, c]


class Backbone(nn.Module):
    """encoder -> features -> linear head; what trains end to end."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def train_backbone(model: Backbone, images, rows: np.ndarray, y: np.ndarray, mem_rows: np.ndarray,
                   mem_y: np.ndarray, seen: list[int], cfg: TrainConfig, seed: int, task: int,
                   regime: str = "replay", old_model: Backbone | None = None, old_classes: list[int] | None = None,
                   device: str = "cpu", progress: bool = True) -> float:
    """One task of end-to-end training; returns the last epoch's mean loss.

    Args:
        images: the training dataset (rows index into it).
        rows, y: the task's training rows and labels (all seen rows for the joint regime).
        mem_rows, mem_y: exemplar rows and labels joined to every batch (replay / icarl); may be empty.
        seen: classes the logits may predict (the rest are masked out).
        regime: "finetune" | "joint" | "replay" | "icarl" (BCE + distillation on ``old_classes``).
        old_model: the model before this task (icarl distillation).
    """
    rank, world = _world()
    model.to(device).train()
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(device).index]
                                                  if device.startswith("cuda") else None)
    n_classes = model.head.out_features
    mask = torch.full((n_classes,), float("-inf"), device=device)
    mask[seen] = 0.0
    yt = torch.from_numpy(np.asarray(y))
    use_mem = regime in ("replay", "icarl") and len(mem_rows) > 0
    # an equally large memory batch per step, cycling through seeded permutations (Avalanche's ER)
    mem = MemoryBatches(np.asarray(mem_rows, dtype=np.int64), np.asarray(mem_y, dtype=np.int64),
                         generator(seed, 11, task))
    aug_gen = generator(seed, 12, task)
    size = fetch(images, rows[:1]).shape[-1]
    opt = torch.optim.SGD(model.parameters(), lr=cfg.encoder_lr, momentum=cfg.encoder_momentum,
                          weight_decay=cfg.encoder_weight_decay)
    if old_model is not None:
        old_model.to(device).eval()

    def step(idx: torch.Tensor) -> torch.Tensor:
        b_rows, b_y = rows[idx.numpy()], yt[idx]
        if use_mem:
            m_rows, m_y = mem.next(len(idx))
            b_rows, b_y = np.concatenate([b_rows, m_rows.numpy()]), torch.cat([b_y, m_y])
        # every rank draws the whole batch's randomness, then keeps its share
        offsets, flips = augment_params(len(b_rows), size, aug_gen)
        share = slice(rank, None, world)
        x = fetch(images, b_rows[share]).to(device)
        if cfg.augment:
            x = augment(x, offsets[share], flips[share])
        target = b_y[share].to(device)
        logits = net(x)
        if regime != "icarl":
            return F.cross_entropy(logits + mask, target)
        # iCaRL: sigmoid binary cross-entropy over the seen classes; old classes' targets come from the old model
        onehot = F.one_hot(target, n_classes).float()
        if old_model is not None and old_classes:
            with torch.no_grad():
                old = torch.sigmoid(old_model(x))
            onehot[:, old_classes] = old[:, old_classes]
        return F.binary_cross_entropy_with_logits(logits[:, seen], onehot[:, seen])

    n = len(rows)
    epochs = cfg.encoder_epochs if cfg.encoder_epochs is not None else cfg.epochs
    loss = train_epochs(step, n, cfg, opt, generator(seed, 10, task), lr=cfg.encoder_lr, epochs=epochs,
                        progress=f"task {task} encoder" if progress and rank == 0 else None)
    if cfg.recalibrate_bn:
        recalibrate_bn(model.encoder, images, np.concatenate([rows, mem_rows]) if use_mem else rows,
                       cfg.batch_size, device)
    model.eval()
    return loss


def recalibrate_bn(encoder: nn.Module, images, rows: np.ndarray, batch: int, device: str = "cpu") -> None:
    """Recompute batch-norm running statistics for the final weights (``torch.optim.swa_utils.update_bn``).

    The running averages trail the weights; after a short task (few steps) the eval-mode features
    can be off by orders of magnitude, which misleads every head that reads them. One forward pass
    over the task's images (and the memory's) makes them exact. Under ``torch.distributed`` each rank
    passes its share and the statistics are averaged, so replicas stay identical.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules()):
        return
    rank, world = _world()
    mine = rows[rank::world]
    batches = (fetch(images, mine[s:s + batch]).to(device) for s in range(0, len(mine), batch))
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, encoder, device=None)
    if world > 1:
        for m in encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for buf in (m.running_mean, m.running_var):
                    torch.distributed.all_reduce(buf)
                    buf /= world


class FrozenFeatures:
    """Features computed once by a frozen encoder."""

    trains = False

    def __init__(self, train: np.ndarray, test: np.ndarray) -> None:
        self.train, self.test = train, test
        self.dim = train.shape[1]

    def fit(self, method: Method, task, seen_rows: np.ndarray, ytr: np.ndarray) -> None:
        pass

    def train_features(self, rows: np.ndarray) -> np.ndarray:
        return self.train[rows]

    def test_features(self, rows: np.ndarray) -> np.ndarray:
        return self.test[rows]

    def refresh(self, bank) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TrainedEncoder:
    """An encoder (one copy per method) trained on the stream; see the module docstring."""

    trains = True

    def __init__(self, encoder: nn.Module, data, n_classes: int, cfg: TrainConfig, seed: int,
                 device: str = "cpu") -> None:
        if not any(p.requires_grad for p in encoder.parameters()):
            raise ValueError(f"{type(encoder).__name__} has no trainable parameters: train_encoder=True needs a "
                             "network encoder (e.g. resnet32_cifar, vit_tiny_cifar), not kmeans_patches")
        self.encoder, self.data, self.n_classes = copy.deepcopy(encoder), data, n_classes
        self.cfg, self.seed, self.device = cfg, seed, device
        self.dim = int(encoder.embed_dim)
        self.aux = None  # linear head for methods without a classifier (icarl, knn)
        self.last_loss = float("nan")

    def _head(self, method: Method) -> nn.Module:
        if method.head is not None:
            return method.head
        if self.aux is None:
            self.aux = seeded_init(lambda: nn.Linear(self.dim, self.n_classes), self.seed, 6)
        return self.aux

    def fit(self, method: Method, task, seen_rows: np.ndarray, ytr: np.ndarray) -> None:
        """Train encoder + head on the task under ``method.regime``."""
        regime = method.regime
        rows = seen_rows if regime == "joint" else task.train_rows
        old = ~np.isin(method.bank.labels, task.classes) if len(method.bank) else np.zeros(0, bool)
        mem_rows = method.bank.refs[old].astype(np.int64) if regime in ("replay", "icarl") else np.zeros(0, np.int64)
        mem_y = method.bank.labels[old] if len(mem_rows) else np.zeros(0, np.int64)
        head = self._head(method)
        model = Backbone(self.encoder, head)
        old_model = copy.deepcopy(model) if regime == "icarl" and method.seen else None
        seen = sorted(set(method.seen) | set(task.classes))
        self.last_loss = train_backbone(model, self.data.train, rows, ytr[rows], mem_rows, mem_y, seen, self.cfg,
                                        self.seed, task.index, regime, old_model, list(method.seen), self.device)

    def _encode(self, data, rows: np.ndarray) -> np.ndarray:
        return extract_features(self.encoder, data, device=self.device, rows=np.asarray(rows, dtype=np.int64))

    def train_features(self, rows: np.ndarray) -> np.ndarray:
        return self._encode(self.data.train, rows)

    def test_features(self, rows: np.ndarray) -> np.ndarray:
        return self._encode(self.data.test, rows)

    def refresh(self, bank) -> None:
        """Re-encode the stored exemplars with the current encoder."""
        if len(bank):
            bank.replace_features(self.train_features(bank.refs.astype(np.int64)))

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "aux": None if self.aux is None else self.aux.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        if state.get("aux") is not None:
            self.aux = nn.Linear(self.dim, self.n_classes)
            self.aux.load_state_dict(state["aux"])
