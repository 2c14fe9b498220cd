"""Class-incremental methods over analytic heads (:mod:`memret.heads`): ``ranpac``, ``slda``, ``mtn_ranpac``,
``mtn_slda``.

See :mod:`memret.incremental.methods` for the common interface and the table of methods.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from memret.heads import SLDA, BlockSLDA, RanPAC
from memret.incremental.methods import Method
from memret.incremental.mtn import input_projection, make_mtn, mtn_scores, train_mtn
from memret.incremental.training import derive_seed, generator, seeded_init
from memret.memory import ExemplarBank

__all__ = ["AnalyticMethod", "MTNAnalyticMethod", "holdout_rows"]


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


class AnalyticMethod(Method):
    """``ranpac`` / ``slda``: an analytic head from :mod:`memret.heads`, learnt from statistics task by task.

    The bank still takes each task in (same budget and policy as the other methods), but the
    predictions are the head's alone (``uses_memory = False``: nothing is read from the memory).
    RanPAC's ridge strength and SLDA's shrinkage (among ``cfg.slda_shrinkages``) are re-chosen after
    every task on the held-out rows of all the tasks seen so far, read through held-out statistics (no
    sample kept); the rows are held out by :func:`holdout_rows`, a function of the row, so the final
    choice, and the final head, are the same for any class order.
    """

    uses_memory = False
    regime = "analytic"

    def __init__(self, *a, kind: str, **kw) -> None:
        super().__init__(*a, **kw)
        self.name = kind
        if kind == "ranpac":
            self.model = RanPAC(self.n_classes, projection=self.cfg.ranpac_projection, seed=derive_seed(self.seed, 9))
        elif self.cfg.slda_blocks and sum(self.cfg.slda_blocks) != self.feat_dim:
            raise ValueError(f"slda_blocks {self.cfg.slda_blocks} sum to {sum(self.cfg.slda_blocks)}, the features "
                             f"have {self.feat_dim} dimensions")
        elif self.cfg.slda_blocks and len(self.cfg.slda_blocks) > 1:
            self.model = BlockSLDA(self.n_classes, self.cfg.slda_blocks, shrinkage="auto",
                                   shrinkages=self.cfg.slda_shrinkages)
        else:
            self.model = SLDA(self.n_classes, shrinkage="auto", shrinkages=self.cfg.slda_shrinkages)

    def learn(self, task, X, y, rows, fit=True):
        if not fit:
            raise ValueError(f"{self.name} learns its head from frozen features: run(train_encoder=True) is not "
                             "supported for it")
        self._remember(X, y, rows, store=False)
        out: dict = {}
        self.model.fit_task(X, y, holdout=holdout_rows(rows, self.seed))
        out.update(self.info())
        if self.bank.dim == self.feat_dim:  # the memory fills as for every method; the head never reads it
            self.bank.update(X, y, refs=rows)
        return out

    def info(self) -> dict[str, float]:
        """The head's chosen hyper-parameter: ``ridge``, or ``shrinkage`` (``shrinkage_<i>`` for block i > 0)."""
        m = self.model
        if isinstance(m, RanPAC):
            return {"ridge": m.lam}
        if isinstance(m, BlockSLDA):
            return {("shrinkage" if i == 0 else f"shrinkage_{i}"): s for i, s in enumerate(m.shrinkage)}
        return {"shrinkage": m.shrinkage}

    def scores(self, X):
        if len(X) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        return self.model.scores(X).astype(np.float32)

    def state_dict(self):
        return {**super().state_dict(), "head": self.model.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.model.load_state_dict(state["head"])


class MTNAnalyticMethod(Method):
    """The MTN with an analytic head as its base classifier (methods ``mtn_ranpac``, ``mtn_slda``).

    Each task, the head takes the task in (as ``ranpac`` / ``slda``); the bank takes it in; then
    the transformer trains on the task plus the memory as it stood before the task (class-balanced,
    leave-one-out retrieval, as ``mtn``), on the MTN's own loss and the fused loss of
    ``scale * head_scores + mtn_logits``, with ``scale`` learnt (the head itself stays analytic).
    Prediction: the same fused logits (``cfg.fusion``: ``"sum"``, ``"mtn_only"`` or ``"classifier_only"``,
    the last being the head alone).
    """

    def __init__(self, *a, kind: str = "ranpac", **kw) -> None:
        super().__init__(*a, **kw)
        cfg = self.cfg
        self.name = f"mtn_{kind}"
        self.head_method = AnalyticMethod(self.feat_dim, self.n_classes, ExemplarBank(1, total=1), cfg, self.seed,
                                          kind=kind)  # a placeholder bank: this method fills its own
        self.proj = input_projection(self.feat_dim, cfg, self.seed)
        self.mtn = seeded_init(lambda: make_mtn(self.feat_dim if self.proj is None else self.proj.shape[1],
                                                self.n_classes, cfg), self.seed, 3)
        # ridge outputs live on a 0..1 scale, logits on a wider one (SLDA's scores are log-likelihoods up to a
        # constant, on the logits' scale already): the scale is learnt with the MTN
        self.scale = nn.Parameter(torch.tensor(float(cfg.ranpac_scale) if kind == "ranpac" else 1.0))
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
        return {"loss": loss, "train_size": n, "scale": float(self.scale.detach()), **self.head_method.info()}

    def scores(self, X):
        return mtn_scores(self.mtn, self.bank, X, self.cfg.k, base=self._base, fuse=self._fuse, proj=self.proj,
                          retrieval=self.cfg.mtn_retrieval, per_class=self.cfg.mtn_per_class)

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
