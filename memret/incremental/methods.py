"""Class-incremental methods over encoder features, all driving one ExemplarBank.

Each method sees the stream task by task through ``learn(task, X, y, rows)``
(features, labels and dataset rows of the task's training data) and answers
``scores(X) -> (N, n_classes)``; classes not seen yet are masked to -inf by the
caller. State lives in the method object; training loops are plain functions
(:mod:`memret.incremental.training`: the config, seeded generators and the minibatch loop;
:mod:`memret.incremental.mtn`: the MTN's retrieval and training, shared with the Avalanche plugin).

| method   | trains on                     | predicts with                                   |
|----------|-------------------------------|-------------------------------------------------|
| finetune | current task only             | linear classifier (lower bound)                 |
| joint    | all data seen so far          | linear classifier (upper bound)                 |
| replay   | current task + memory (ER)    | linear classifier                               |
| icarl    | — (memory, herding)           | nearest class mean of the exemplars (iCaRL NCM) |
| knn      | — (memory)                    | similarity-weighted vote of the k nearest       |
| mtn      | current task + memory         | classifier logits + MTN over k retrieved        |
| ranpac   | current task (statistics)     | RanPAC ridge head (:mod:`memret.heads`)          |
| slda     | current task (statistics)     | streaming LDA head (:mod:`memret.heads`)         |
| mtn_ranpac | current task + memory       | RanPAC scores (scaled) + MTN over k retrieved   |
| mtn_slda | current task + memory         | SLDA scores (scaled) + MTN over k retrieved     |

``ranpac`` and ``slda`` learn from sufficient statistics (no exemplars, no forgetting by
construction); the bank still fills, with the same budget and policy, so the table's
memory column means the same for every method, but their predictions never read it.
``mtn_ranpac`` / ``mtn_slda`` are the MTN with the analytic head in place of the linear classifier:
the head learns as in ``ranpac`` / ``slda`` and the transformer learns, on the current task
plus the memory, a correction to ``scale * head_scores`` (``scale`` learnt with it).
Those four live in :mod:`memret.incremental.analytic`; :mod:`memret.incremental.catalog`
maps every name to its class (``METHODS``, ``make_method``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.incremental.mtn import input_projection, make_mtn, mtn_scores, train_mtn
from memret.incremental.training import (MemoryBatches, TrainConfig, balanced_weights, generator, seeded_init,
                                         train_epochs)
from memret.memory import ExemplarBank

__all__ = ["KNNMethod", "LinearMethod", "MTNMethod", "Method", "NCMMethod", "TrainConfig"]


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
        self.balanced = data == "replay" and self.cfg.balanced_replay
        self.clf = seeded_init(lambda: nn.Linear(self.feat_dim, self.n_classes), self.seed, 1)
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
        mem = MemoryBatches(self.bank.features[old], self.bank.labels[old], generator(self.seed, 5, task))

        def step(idx):
            xb, yb = Xt[idx], yt[idx]
            if len(mem):
                xm, ym = mem.next(len(idx))
                xb, yb = torch.cat([xb, xm]), torch.cat([yb, ym])
            return F.cross_entropy(self.clf(xb) + mask, yb, weight=weight)

        # Optionally the MTN's class-balanced loss (cfg.balanced_replay): each class weighs as much as the
        # others, whether it has a task's data or only its exemplars (weights from the task's + memory counts).
        weight = None
        if self.balanced and len(mem):
            weight = balanced_weights(np.concatenate([y, self.bank.labels[old]]), self.n_classes)
        self.clf.train()
        loss = train_epochs(step, len(yt), self.cfg, self.opt, generator(self.seed, 2, task))
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
        if len(X) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        D, I = self.bank.knn(X, self.cfg.k)
        w = np.where(I >= 0, np.exp((D - 1.0) / self.cfg.knn_temperature), 0.0)
        out = np.zeros((len(X), self.n_classes), dtype=np.float64)
        labels = self.bank.labels[np.where(I >= 0, I, 0)]
        np.add.at(out, (np.repeat(np.arange(len(X)), I.shape[1]), labels.ravel()), w.ravel())
        return out.astype(np.float32)


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
        self.proj = input_projection(self.feat_dim, cfg, self.seed)
        self.mtn = seeded_init(lambda: make_mtn(self.feat_dim if self.proj is None else self.proj.shape[1],
                                                self.n_classes, cfg), self.seed, 3)
        self.opt = torch.optim.AdamW(list(self.clf.parameters()) + list(self.mtn.parameters()), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)

    def learn(self, task, X, y, rows, fit=True):
        # ``fit`` is ignored: with a trained encoder the classifier already saw the task end to end, and the
        # transformer (with the classifier, through the fused loss) still trains here on the new features
        # Replay the memory as it stood before this task (old classes at their full quotas, as replay does),
        # but retrieve from the memory after it took the task in (the memory the test will see).
        before = (self.bank.features.copy(), self.bank.labels.copy(), self.bank.refs.copy())
        self._remember(X, y, rows)
        loss, n = train_mtn(self.mtn, self.opt, self.bank, X, y, rows, self.cfg, generator(self.seed, 4, task),
                            self._mask(), clf=self.clf, fuse=self._fuse, replay=before, proj=self.proj)
        return {"loss": loss, "train_size": n}

    def _fuse(self, clf: torch.Tensor, mtn: torch.Tensor) -> torch.Tensor:
        if self.cfg.fusion == "mtn_only":
            return mtn
        if self.cfg.fusion == "classifier_only":
            return clf
        return clf + mtn

    def scores(self, X):
        return mtn_scores(self.mtn, self.bank, X, self.cfg.k, clf=self.clf, fuse=self._fuse, proj=self.proj,
                          retrieval=self.cfg.mtn_retrieval, per_class=self.cfg.mtn_per_class)

    def state_dict(self):
        return {**super().state_dict(), "mtn": self.mtn.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.mtn.load_state_dict(state["mtn"])
