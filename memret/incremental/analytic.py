"""Class-incremental methods over analytic heads (:mod:`memret.heads`): ``ranpac``, ``slda``, ``mtn_ranpac``.

See :mod:`memret.incremental.methods` for the common interface and the table of methods.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from memret.aggregator import MemoryTransformerNetwork
from memret.heads import SLDA, RanPAC
from memret.incremental.methods import Method
from memret.incremental.mtn import input_projection, mtn_scores, train_mtn
from memret.incremental.training import derive_seed, generator, seeded_init
from memret.memory import ExemplarBank

__all__ = ["AnalyticMethod", "MTNRanPACMethod", "choose_shrinkage", "holdout_rows"]


def holdout_rows(rows: np.ndarray, seed: int, fraction: float = 0.2) -> np.ndarray:
    """(N,) bool: the dataset rows held out for choosing a head's hyper-parameter.

    A function of each row and ``seed`` only, so the held-out set (and so the chosen ridge)
    does not depend on the class order or on how the rows are split into tasks.
    """
    r = np.asarray(rows, dtype=np.uint64) + np.uint64(derive_seed(seed, 11))
    with np.errstate(over="ignore"):  # splitmix64: a hash of the row
        r = (r ^ (r >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        r = (r ^ (r >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        r = r ^ (r >> np.uint64(31))
    return (r % np.uint64(1 << 20)).astype(np.float64) / (1 << 20) < fraction


def choose_shrinkage(X: np.ndarray, y: np.ndarray, held: np.ndarray, grid, n_classes: int) -> float:
    """The SLDA shrinkage in ``grid`` (the first best) scoring highest on the rows ``held`` (bool mask), the
    discriminant learnt from the other rows."""
    probe = SLDA(n_classes, shrinkage=min(grid)).fit_task(X[~held], y[~held])
    best, best_acc = None, -1.0
    for s in grid:
        acc = float((probe.set_shrinkage(s).predict(X[held]) == y[held]).mean())
        if acc > best_acc:
            best, best_acc = s, acc
    return float(best)


class AnalyticMethod(Method):
    """``ranpac`` / ``slda``: an analytic head from :mod:`memret.heads`, learnt from statistics task by task.

    The bank still takes each task in (same budget and policy as the other methods), but the
    predictions are the head's alone (``uses_memory = False``: nothing is read from the memory).
    RanPAC's ridge strength is chosen on held-out rows (:func:`holdout_rows`, a function of the
    row, so the choice is order-invariant); SLDA's shrinkage on a held-out 20% of the first task's
    rows, among ``cfg.slda_shrinkages``, then kept for the rest of the stream.
    """

    uses_memory = False
    regime = "analytic"

    def __init__(self, *a, kind: str, **kw) -> None:
        super().__init__(*a, **kw)
        self.name = kind
        if kind == "ranpac":
            self.model = RanPAC(self.n_classes, projection=self.cfg.ranpac_projection, seed=derive_seed(self.seed, 9))
        else:
            self.model = SLDA(self.n_classes, shrinkage=self.cfg.slda_shrinkages[0])

    def learn(self, task, X, y, rows, fit=True):
        if not fit:
            raise ValueError(f"{self.name} learns its head from frozen features: run(train_encoder=True) is not "
                             "supported for it")
        self._remember(X, y, rows, store=False)
        out: dict = {}
        if isinstance(self.model, RanPAC):
            self.model.fit_task(X, y, holdout=holdout_rows(rows, self.seed))
            out["ridge"] = self.model.lam
        else:
            if task == 0 and len(self.cfg.slda_shrinkages) > 1:
                out["shrinkage"] = self._choose_shrinkage(X, y, rows)
            self.model.fit_task(X, y)
        if self.bank.dim == self.feat_dim:  # the memory fills as for every method; the head never reads it
            self.bank.update(X, y, refs=rows)
        return out

    def _choose_shrinkage(self, X, y, rows) -> float:
        best = choose_shrinkage(X, y, holdout_rows(rows, self.seed), self.cfg.slda_shrinkages, self.n_classes)
        self.model = SLDA(self.n_classes, shrinkage=best)
        return best

    def scores(self, X):
        if len(X) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        return self.model.scores(X).astype(np.float32)

    def state_dict(self):
        out = {**super().state_dict(), "head": self.model.state_dict()}
        if isinstance(self.model, SLDA):
            out["shrinkage"] = torch.tensor(self.model.shrinkage)
        return out

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "shrinkage" in state:
            self.model = SLDA(self.n_classes, shrinkage=float(state["shrinkage"]))
        self.model.load_state_dict(state["head"])


class MTNRanPACMethod(Method):
    """The MTN with a RanPAC head as its base classifier (method ``mtn_ranpac``).

    Each task, the RanPAC head takes the task in (as ``ranpac``); the bank takes it in; then
    the transformer trains on the task plus the memory as it stood before the task (class-balanced,
    leave-one-out retrieval, as ``mtn``), on the MTN's own loss and the fused loss of
    ``scale * ranpac_scores + mtn_logits``, with ``scale`` learnt (the head itself stays analytic).
    Prediction: the same fused logits (``cfg.fusion``: ``"sum"``, ``"mtn_only"`` or ``"classifier_only"``,
    the last being RanPAC alone).
    """

    name = "mtn_ranpac"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        cfg = self.cfg
        self.head_method = AnalyticMethod(self.feat_dim, self.n_classes, ExemplarBank(1, total=1), cfg, self.seed,
                                          kind="ranpac")  # a placeholder bank: this method fills its own
        self.proj = input_projection(self.feat_dim, cfg, self.seed)
        self.mtn = seeded_init(lambda: MemoryTransformerNetwork(
            self.feat_dim if self.proj is None else self.proj.shape[1], self.n_classes, cfg.mtn_width,
            cfg.mtn_layers, cfg.mtn_heads,
            dropout=cfg.mtn_dropout), self.seed, 3)
        # ridge outputs live on a 0..1 scale, logits on a wider one: the scale is learnt with the MTN
        self.scale = nn.Parameter(torch.tensor(float(cfg.ranpac_scale)))
        self.opt = torch.optim.AdamW(list(self.mtn.parameters()) + [self.scale], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)

    def _fuse(self, base: torch.Tensor, mtn: torch.Tensor) -> torch.Tensor:
        if self.cfg.fusion == "mtn_only":
            return mtn
        if self.cfg.fusion == "classifier_only":
            return self.scale * base
        return self.scale * base + mtn

    def _base(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.head_method.model.scores(X))

    def learn(self, task, X, y, rows, fit=True):
        before = (self.bank.features.copy(), self.bank.labels.copy(), self.bank.refs.copy())
        self.head_method.learn(task, X, y, rows, fit=fit)
        self._remember(X, y, rows)
        mask = torch.full((self.n_classes,), float("-inf"))
        mask[self.seen] = 0.0
        loss, n = train_mtn(self.mtn, self.opt, self.bank, X, y, rows, self.cfg, generator(self.seed, 4, task),
                            mask, base=self._base, fuse=self._fuse, replay=before, proj=self.proj)
        return {"loss": loss, "train_size": n, "ridge": self.head_method.model.lam, "scale": float(self.scale.detach())}

    def scores(self, X):
        return mtn_scores(self.mtn, self.bank, X, self.cfg.k, base=self._base, fuse=self._fuse, proj=self.proj)

    def state_dict(self):
        return {**super().state_dict(), "mtn": self.mtn.state_dict(), "opt": self.opt.state_dict(),
                "scale": self.scale.detach().clone(), "head": self.head_method.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.mtn.load_state_dict(state["mtn"])
        with torch.no_grad():
            self.scale.copy_(state["scale"])
        self.opt.load_state_dict(state["opt"])
        self.head_method.load_state_dict(state["head"])
