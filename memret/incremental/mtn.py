"""Feeding and training the Memory Transformer Network over an exemplar memory.

Shared by the ``mtn`` method of :func:`memret.incremental.run`
(:class:`~memret.incremental.methods.MTNMethod`) and the Avalanche
:class:`~memret.incremental.plugins.MTNPlugin`: :func:`retrieve` turns queries into
the MTN's inputs (the k nearest exemplars), :func:`train_mtn` trains it on a task
with leave-one-out retrieval, so a training sample never sees its own exemplar.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.aggregator import MemoryTransformerNetwork
from memret.incremental.training import TrainConfig, balanced_weights, generator, train_epochs
from memret.memory import ExemplarBank


def input_projection(dim: int, cfg: TrainConfig, seed: int) -> torch.Tensor | None:
    """A fixed, seeded Gaussian map (dim, cfg.mtn_input_dim) for the MTN's inputs, or None.

    Wide features (e.g. the 8,192-d patch dictionary) make the MTN's query and memory projections
    dominate its CPU cost; above ``cfg.mtn_input_dim`` dimensions the transformer reads a random
    projection of the features (distances kept up to ~1/sqrt(mtn_input_dim), Johnson-Lindenstrauss).
    Retrieval, the memory and the linear classifier keep the full features.
    """
    m = cfg.mtn_input_dim
    if not m or dim <= m:
        return None
    return torch.randn(dim, m, generator=generator(seed, 12)) / m ** 0.5


def neighbours(bank: ExemplarBank, X: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """The k nearest exemplars of queries ``X`` (B, D) as bank indices.

    Returns:
        indices (B, k) int64 into the bank (0 where no neighbour was found), labels (B, k) int64
        (-1 = no neighbour, masked by the MTN) and query-neighbour similarities (B, k) float32.
        ``exclude`` (B,) refs: query i never gets an exemplar whose ref is ``exclude[i]`` (leave-one-out).
    """
    if len(X) == 0:
        return (torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k))
    D, I = bank.knn(X, k, exclude=exclude)
    safe = np.where(I >= 0, I, 0)
    labels = torch.from_numpy(np.where(I >= 0, bank.labels[safe], -1))
    sims = torch.from_numpy(np.where(I >= 0, D, 0.0).astype(np.float32))
    return torch.from_numpy(safe), labels, sims


def retrieve(bank: ExemplarBank, X: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """MTN inputs for queries ``X`` (B, D): neighbour features (B, k, D) float32, labels and similarities.

    As :func:`neighbours`, with the features gathered. Zero queries give zero-row tensors.
    """
    idx, labels, sims = neighbours(bank, X, k, exclude)
    if len(X) == 0:
        return torch.zeros(0, k, bank.dim), labels, sims
    return torch.from_numpy(bank.features[idx.numpy()]), labels, sims


@torch.no_grad()
def mtn_scores(mtn: MemoryTransformerNetwork, bank: ExemplarBank, X: np.ndarray, k: int,
               clf: nn.Module | None = None, fuse=None, batch: int = 1024, base=None,
               proj: torch.Tensor | None = None) -> np.ndarray:
    """(N, n_classes) eval-mode MTN logits of queries ``X`` (N, D), fused with ``clf``'s when given.

    ``fuse(clf_logits, mtn_logits)`` combines them (default: the sum). ``base`` (a function of the
    numpy features, e.g. an analytic head's scores) takes ``clf``'s place; ``proj`` maps the transformer's
    inputs (:func:`input_projection`). Zero queries give (0, n_classes).
    """
    mtn.eval()
    if clf is not None:
        clf.eval()
    if base is not None:
        clf = base
    out = [np.zeros((0, mtn.n_classes), np.float32)]
    mem = torch.from_numpy(bank.features)
    mem = mem @ proj if proj is not None else mem
    for s in range(0, len(X), batch):
        xb = X[s:s + batch]
        idx, nl, ns = neighbours(bank, xb, k)
        xt = torch.from_numpy(xb)
        logits = mtn(xt @ proj if proj is not None else xt, mem[idx], nl, ns)
        if clf is not None:
            c = base(xb) if base is not None else clf(xt)
            logits = fuse(c, logits) if fuse is not None else c + logits
        out.append(logits.numpy())
    return np.concatenate(out)


def train_mtn(mtn: MemoryTransformerNetwork, opt: torch.optim.Optimizer, bank: ExemplarBank, X: np.ndarray,
              y: np.ndarray, refs: np.ndarray, cfg: TrainConfig, gen: torch.Generator, mask: torch.Tensor,
              clf: nn.Module | None = None, fuse=None,
              replay: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, base=None,
              proj: torch.Tensor | None = None) -> tuple[float, int]:
    """Train the MTN (and ``clf``, through its own and the fused loss) on the task's data plus old exemplars.

    The bank must already hold the current task's exemplars: training retrieves from the memory the
    test will see, with leave-one-out by ``refs`` (a sample never sees itself). The old exemplars
    trained on are ``replay`` (features, labels, refs: the memory as it was before this task, at the
    old classes' full quotas, as replay uses it) or, by default, the bank's old classes. ``base``: a fixed
    scorer of numpy features (an analytic head) in ``clf``'s place; its scores are computed once and only
    the fused loss ``fuse(base, mtn)`` reaches it. ``proj``: the transformer's input map
    (:func:`input_projection`). Returns (loss, samples).
    """
    if replay is None:
        old = ~np.isin(bank.labels, np.unique(y))
        replay = (bank.features[old], bank.labels[old], bank.refs[old])
    Xt = np.concatenate([X, replay[0]])
    yt = np.concatenate([y, replay[1]])
    rt = np.concatenate([np.asarray(refs, dtype=bank.refs.dtype), np.asarray(replay[2], dtype=bank.refs.dtype)])
    # once per task (the memory is fixed within a task); neighbours are kept as bank indices and gathered
    # per minibatch, so (N, k, D) features never live at once
    I_t, nl, ns = neighbours(bank, Xt, cfg.k, exclude=rt)
    mem_feats = torch.from_numpy(bank.features.copy())
    base_t = torch.from_numpy(np.asarray(base(Xt))) if base is not None else None
    Xt_t, yt_t = torch.from_numpy(Xt), torch.from_numpy(yt)
    Xq = Xt_t
    if proj is not None:  # computed once per task: the transformer reads projected queries and neighbours
        Xq, mem_feats = Xt_t @ proj, mem_feats @ proj
    # The current task has all its data, old classes only their exemplars: without balancing,
    # both heads learn to favour the newest classes.
    weight = balanced_weights(yt, mask.numel()) if cfg.balanced else None

    def step(idx):
        target = yt_t[idx]
        out = mtn(Xq[idx], mem_feats[I_t[idx]], nl[idx], ns[idx]) + mask
        loss = F.cross_entropy(out, target, weight=weight)
        if base_t is not None:
            loss = loss + F.cross_entropy(fuse(base_t[idx], out) + mask, target, weight=weight)
        elif clf is not None:
            logits = clf(Xt_t[idx]) + mask
            loss = loss + F.cross_entropy(logits, target, weight=weight) + F.cross_entropy(fuse(logits, out), target,
                                                                                          weight=weight)
        return loss

    mtn.train()
    if clf is not None:
        clf.train()
    return train_epochs(step, len(yt), cfg, opt, gen), int(len(yt))
