"""Class-incremental methods over encoder features, all driving one ExemplarBank.

Each method sees the stream task by task through ``learn(task, X, y, rows)``
(features, labels and dataset rows of the task's training data) and answers
``scores(X) -> (N, n_classes)``; classes not seen yet are masked to -inf by the
caller. State lives in the method object; training loops are plain functions.

| method   | trains on                     | predicts with                                   |
|----------|-------------------------------|-------------------------------------------------|
| finetune | current task only             | linear classifier (lower bound)                 |
| joint    | all data seen so far          | linear classifier (upper bound)                 |
| replay   | current task + memory (ER)    | linear classifier                               |
| icarl    | — (memory, herding)           | nearest class mean of the exemplars (iCaRL NCM) |
| knn      | — (memory)                    | similarity-weighted vote of the k nearest       |
| mtn      | current task + memory         | classifier logits + MTN over k retrieved        |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.aggregator import MemoryTransformerNetwork
from memret.memory import ExemplarBank

METHODS = ("finetune", "joint", "replay", "icarl", "knn", "mtn")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and method knobs shared by the trained methods."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    k: int = 10                 # neighbours for knn and mtn
    knn_temperature: float = 0.07
    mtn_layers: int = 2
    mtn_heads: int = 4
    mtn_width: int = 256
    mtn_dropout: float = 0.0     # CPU dropout costs more than the rest of a small MTN step
    balanced: bool = True       # MTN: class-balanced loss over current data + memory
    fusion: str = "sum"         # "sum" | "mtn_only" | "classifier_only"
    schedule: str = "cosine"    # "cosine" | "constant" learning rate within a task
    # ---- the encoder, when run(train_encoder=True) trains it (from scratch, or fine-tuning a checkpoint)
    encoder_epochs: int | None = None   # default: ``epochs``
    encoder_lr: float = 0.05            # SGD with momentum, cosine within a task (Avalanche/PyCIL CIFAR recipe)
    encoder_momentum: float = 0.9
    encoder_weight_decay: float = 5e-4
    augment: bool = True                # random crop (pad 1/8 of the side) + horizontal flip
    recalibrate_bn: bool = True         # exact batch-norm statistics for the trained weights, after each task


def _generator(seed: int, *salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0]))


def _seeded_init(module_fn, seed: int, *salt: int) -> nn.Module:
    """Build a module with a private RNG: parameter init is reproducible and the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0]))
        return module_fn()


def train_epochs(model_step, n: int, cfg: TrainConfig, opt: torch.optim.Optimizer, gen: torch.Generator,
                 lr: float | None = None, epochs: int | None = None, progress: str | None = None) -> float:
    """Plain minibatch loop: ``model_step(idx) -> loss`` on shuffled index batches; returns the last epoch's mean loss.

    The optimizer lives across tasks (its moments carry over, as in Avalanche's strategies); the
    learning-rate schedule restarts each task. ``lr``/``epochs`` override the config's; ``progress``
    names a per-batch progress bar.
    """
    lr, epochs = cfg.lr if lr is None else lr, cfg.epochs if epochs is None else epochs
    for group in opt.param_groups:
        group["lr"] = lr
    per_epoch = max(1, -(-n // cfg.batch_size))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch) if cfg.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * per_epoch, desc=progress, leave=False)
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = model_step(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.detach().item() * len(idx), count + len(idx)
            if bar is not None:
                bar.update()
        last = total / max(count, 1)
    if bar is not None:
        bar.close()
    return last


class _MemoryBatches:
    """Endless minibatches over the memory: successive seeded permutations, cut into batches."""

    def __init__(self, X: np.ndarray, y: np.ndarray, gen: torch.Generator) -> None:
        self.X, self.y, self.gen = torch.from_numpy(X), torch.from_numpy(y), gen
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def __len__(self) -> int:
        return len(self.y)

    def next(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = []
        while n > 0:
            if self.pos >= len(self.order):
                self.order, self.pos = torch.randperm(len(self.y), generator=self.gen), 0
            take = self.order[self.pos:self.pos + n]
            self.pos += len(take)
            n -= len(take)
            idx.append(take)
        i = torch.cat(idx)
        return self.X[i], self.y[i]


class Method:
    """Common state: the bank, the seen classes, the config."""

    name = "base"
    uses_memory = True
    # what a trained encoder learns from under this method: "finetune" (current task), "joint" (all seen),
    # "replay" (current task + memory batches) or "icarl" (replay + distillation from the previous model)
    regime = "replay"

    def __init__(self, feat_dim: int, n_classes: int, bank: ExemplarBank, cfg: TrainConfig, seed: int) -> None:
        self.feat_dim, self.n_classes, self.bank, self.cfg, self.seed = feat_dim, n_classes, bank, cfg, seed
        self.seen: list[int] = []

    def learn(self, task: int, X: np.ndarray, y: np.ndarray, rows: np.ndarray, fit: bool = True) -> dict:
        """Take in task ``task``: features ``X``, labels ``y``, dataset rows ``rows``.

        ``fit=False`` when the classifier was already trained together with the encoder
        (``run(train_encoder=True)``): the method then only updates its memory and seen classes
        (MTN still trains its transformer on the new features).
        """
        raise NotImplementedError

    @property
    def head(self) -> nn.Module | None:
        """The linear classifier trained together with the encoder, if the method has one."""
        return None

    def scores(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"seen": list(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        self.seen = list(state["seen"])

    def _remember(self, X, y, rows, store: bool = True) -> None:
        self.seen += [c for c in dict.fromkeys(y.tolist()) if c not in self.seen]
        if self.uses_memory and store:
            self.bank.update(X, y, refs=rows)


class LinearMethod(Method):
    """finetune / joint / replay: one linear classifier over the features, trained with cross-entropy."""

    def __init__(self, *a, data: str, **kw) -> None:
        super().__init__(*a, **kw)
        self.name, self.data, self.regime = data, data, data
        self.uses_memory = data == "replay"
        self.clf = _seeded_init(lambda: nn.Linear(self.feat_dim, self.n_classes), self.seed, 1)
        self.opt = torch.optim.AdamW(self.clf.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self._seen_X: list[np.ndarray] = []
        self._seen_y: list[np.ndarray] = []

    @property
    def head(self):
        return self.clf

    def learn(self, task, X, y, rows, fit=True):
        # The memory takes the new task in only after training (as in ER and Avalanche's ReplayPlugin):
        # storing first would shrink the old classes' quotas before they are replayed.
        self._remember(X, y, rows, store=False)
        if fit:
            out = self._fit(task, X, y)
        else:
            out = {}
        if self.uses_memory:
            self.bank.update(X, y, refs=rows)
        return out

    def _fit(self, task, X, y) -> dict:
        if self.data == "joint":
            self._seen_X.append(X)
            self._seen_y.append(y)
            X, y = np.concatenate(self._seen_X), np.concatenate(self._seen_y)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        mask = self._mask()
        # Experience replay (Chaudhry et al. 2019; Avalanche's ReplayDataLoader): every minibatch of new
        # data is joined by an equally large minibatch drawn from the memory's old classes.
        old = ~np.isin(self.bank.labels, np.unique(y)) if self.uses_memory else np.zeros(0, bool)
        mem = _MemoryBatches(self.bank.features[old], self.bank.labels[old], _generator(self.seed, 5, task))

        def step(idx):
            xb, yb = Xt[idx], yt[idx]
            if len(mem):
                xm, ym = mem.next(len(idx))
                xb, yb = torch.cat([xb, xm]), torch.cat([yb, ym])
            return F.cross_entropy(self.clf(xb) + mask, yb)

        self.clf.train()
        loss = train_epochs(step, len(yt), self.cfg, self.opt, _generator(self.seed, 2, task))
        return {"loss": loss, "train_size": int(len(yt) + len(mem))}

    def _mask(self) -> torch.Tensor:
        m = torch.full((self.n_classes,), float("-inf"))
        m[self.seen] = 0.0
        return m

    @torch.no_grad()
    def scores(self, X):
        self.clf.eval()
        return self.clf(torch.from_numpy(X)).numpy()

    def state_dict(self):
        return {**super().state_dict(), "clf": self.clf.state_dict(), "opt": self.opt.state_dict(),
                "seen_X": [torch.from_numpy(a) for a in self._seen_X],
                "seen_y": [torch.from_numpy(a) for a in self._seen_y]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.clf.load_state_dict(state["clf"])
        self.opt.load_state_dict(state["opt"])
        self._seen_X = [a.numpy() for a in state["seen_X"]]
        self._seen_y = [a.numpy() for a in state["seen_y"]]


class MemoryOnlyMethod(Method):
    """Methods that only fill the memory and predict from it (no training)."""

    def learn(self, task, X, y, rows, fit=True):
        self._remember(X, y, rows)
        return {}


class NCMMethod(MemoryOnlyMethod):
    """iCaRL's classifier over a frozen encoder: herding exemplars, nearest class mean (cosine)."""

    name = "icarl"
    regime = "icarl"

    def scores(self, X):
        cls, means = self.bank.class_means()
        q = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        out = np.full((len(X), self.n_classes), -np.inf, dtype=np.float32)
        out[:, cls] = q @ means.T
        return out


class KNNMethod(MemoryOnlyMethod):
    """kNN voting over the memory: votes weighted by exp(similarity / temperature)."""

    name = "knn"

    def scores(self, X):
        D, I = self.bank.knn(X, self.cfg.k)
        w = np.where(I >= 0, np.exp((D - 1.0) / self.cfg.knn_temperature), 0.0)
        out = np.zeros((len(X), self.n_classes), dtype=np.float64)
        labels = self.bank.labels[np.where(I >= 0, I, 0)]
        np.add.at(out, (np.repeat(np.arange(len(X)), I.shape[1]), labels.ravel()), w.ravel())
        return out.astype(np.float32)


def retrieve(bank: ExemplarBank, X: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """MTN inputs for queries ``X``: neighbour features (B, k, D), labels (B, k; -1 = none) and similarities."""
    D, I = bank.knn(X, k, exclude=exclude)
    safe = np.where(I >= 0, I, 0)
    feats = torch.from_numpy(bank.features[safe])
    labels = torch.from_numpy(np.where(I >= 0, bank.labels[safe], -1))
    sims = torch.from_numpy(np.where(I >= 0, D, 0.0).astype(np.float32))
    return feats, labels, sims


def train_mtn(mtn: MemoryTransformerNetwork, opt: torch.optim.Optimizer, bank: ExemplarBank, X: np.ndarray,
              y: np.ndarray, refs: np.ndarray, cfg: TrainConfig, gen: torch.Generator, mask: torch.Tensor,
              clf: nn.Module | None = None, fuse=None,
              replay: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[float, int]:
    """Train the MTN (and ``clf``, through its own and the fused loss) on the task's data plus old exemplars.

    The bank must already hold the current task's exemplars: training retrieves from the memory the
    test will see, with leave-one-out by ``refs`` (a sample never sees itself). The old exemplars
    trained on are ``replay`` (features, labels, refs: the memory as it was before this task, at the
    old classes' full quotas, as replay uses it) or, by default, the bank's old classes. Returns (loss, samples).
    """
    if replay is None:
        old = ~np.isin(bank.labels, np.unique(y))
        replay = (bank.features[old], bank.labels[old], bank.refs[old])
    Xt = np.concatenate([X, replay[0]])
    yt = np.concatenate([y, replay[1]])
    rt = np.concatenate([np.asarray(refs, dtype=bank.refs.dtype), np.asarray(replay[2], dtype=bank.refs.dtype)])
    nf, nl, ns = retrieve(bank, Xt, cfg.k, exclude=rt)  # once per task: the memory is fixed within a task
    Xt_t, yt_t = torch.from_numpy(Xt), torch.from_numpy(yt)
    # The current task has all its data, old classes only their exemplars: without balancing,
    # both heads learn to favour the newest classes.
    weight = None
    if cfg.balanced:
        counts = np.bincount(yt, minlength=mask.numel()).astype(np.float32)
        weight = torch.from_numpy(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(np.unique(yt)), 0))

    def step(idx):
        target = yt_t[idx]
        out = mtn(Xt_t[idx], nf[idx], nl[idx], ns[idx]) + mask
        loss = F.cross_entropy(out, target, weight=weight)
        if clf is not None:
            logits = clf(Xt_t[idx]) + mask
            loss = loss + F.cross_entropy(logits, target, weight=weight) + F.cross_entropy(fuse(logits, out), target,
                                                                                          weight=weight)
        return loss

    mtn.train()
    if clf is not None:
        clf.train()
    return train_epochs(step, len(yt), cfg, opt, gen), int(len(yt))


class MTNMethod(LinearMethod):
    """Replay classifier + Memory Transformer Network reading the k nearest exemplars.

    The memory is updated with the current task first, so training retrieves from
    the same memory the test will (old exemplars + the current classes' exemplars);
    a training sample's own entry is excluded (leave-one-out by dataset row).
    """

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, data="replay", **kw)
        self.name, self.regime = "mtn", "replay"
        cfg = self.cfg
        self.mtn = _seeded_init(lambda: MemoryTransformerNetwork(
            self.feat_dim, self.n_classes, cfg.mtn_width, cfg.mtn_layers, cfg.mtn_heads,
            dropout=cfg.mtn_dropout), self.seed, 3)
        self.opt = torch.optim.AdamW(list(self.clf.parameters()) + list(self.mtn.parameters()), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)

    def _neighbours(self, X: np.ndarray, exclude: np.ndarray | None):
        return retrieve(self.bank, X, self.cfg.k, exclude)

    def learn(self, task, X, y, rows, fit=True):
        # ``fit`` is ignored: with a trained encoder the classifier already saw the task end to end, and the
        # transformer (with the classifier, through the fused loss) still trains here on the new features
        # Replay the memory as it stood before this task (old classes at their full quotas, as replay does),
        # but retrieve from the memory after it took the task in (the memory the test will see).
        before = (self.bank.features.copy(), self.bank.labels.copy(), self.bank.refs.copy())
        self._remember(X, y, rows)
        loss, n = train_mtn(self.mtn, self.opt, self.bank, X, y, rows, self.cfg, _generator(self.seed, 4, task),
                            self._mask(), clf=self.clf, fuse=self._fuse, replay=before)
        return {"loss": loss, "train_size": n}

    def _fuse(self, clf: torch.Tensor, mtn: torch.Tensor) -> torch.Tensor:
        if self.cfg.fusion == "mtn_only":
            return mtn
        if self.cfg.fusion == "classifier_only":
            return clf
        return clf + mtn

    @torch.no_grad()
    def scores(self, X):
        self.clf.eval(), self.mtn.eval()
        out = []
        for s in range(0, len(X), 1024):
            xb = X[s:s + 1024]
            nf, nl, ns = self._neighbours(xb, exclude=None)
            xt = torch.from_numpy(xb)
            out.append(self._fuse(self.clf(xt), self.mtn(xt, nf, nl, ns)).numpy())
        return np.concatenate(out)

    def state_dict(self):
        return {**super().state_dict(), "mtn": self.mtn.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.mtn.load_state_dict(state["mtn"])


def make_method(name: str, feat_dim: int, n_classes: int, bank: ExemplarBank, cfg: TrainConfig, seed: int) -> Method:
    args = (feat_dim, n_classes, bank, cfg, seed)
    if name in ("finetune", "joint", "replay"):
        return LinearMethod(*args, data=name)
    table = {"icarl": NCMMethod, "knn": KNNMethod, "mtn": MTNMethod}
    if name not in table:
        raise KeyError(f"unknown method {name!r}; known: {list(METHODS)}")
    return table[name](*args)
