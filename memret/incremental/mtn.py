"""Feeding and training the Memory Transformer Network over an exemplar memory.

Shared by the ``mtn`` method of :func:`memret.incremental.run`
(:class:`~memret.incremental.methods.MTNMethod`), the MTN over an analytic head
(:class:`~memret.incremental.analytic.MTNAnalyticMethod`) and the Avalanche
:class:`~memret.incremental.plugins.MTNPlugin`: :func:`make_mtn` builds the network a
:class:`~memret.incremental.training.TrainConfig` asks for, :func:`retrieve` turns queries into
its inputs (the k nearest exemplars of the memory, or with ``retrieval="per_class"`` the nearest
of each class), :func:`train_mtn` trains it on a task with leave-one-out retrieval, so a training
sample never sees its own exemplar.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memret.aggregator import MemoryTransformerNetwork
from memret.index.dense import as_matrix
from memret.incremental.training import TrainConfig, balanced_weights, generator, train_epochs
from memret.memory import ExemplarBank, checks

Retrieval = Literal["global", "per_class"]


def make_mtn(in_dim: int, n_classes: int, cfg: TrainConfig) -> MemoryTransformerNetwork:
    """The MTN ``cfg`` describes (size, dropout, rank embedding) over ``in_dim``-d inputs.

    With ``cfg.mtn_rank`` it embeds ranks up to the most neighbours a query can get: ``cfg.k``, or with
    per-class retrieval ``cfg.mtn_per_class`` per class of the stream.
    """
    most = cfg.mtn_per_class * n_classes if cfg.mtn_retrieval == "per_class" else cfg.k
    return MemoryTransformerNetwork(in_dim, n_classes, cfg.mtn_width, cfg.mtn_layers, cfg.mtn_heads,
                                    dropout=cfg.mtn_dropout, use_rank=cfg.mtn_rank, max_rank=most)


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


def class_neighbours(bank: ExemplarBank, X: np.ndarray, per_class: int, exclude: np.ndarray | None = None,
                     batch: int = 4096):
    """The ``per_class`` nearest exemplars of each class in the memory, for queries ``X`` (B, D).

    Exact, by the bank's metric (``"cosine"``, ``"ip"``, or ``"l2"``: its squared distance, smaller closer),
    over ``bank.features`` in query batches of ``batch``. With C classes held, a query gets T = per_class * C
    neighbours (per_class when the memory is empty), sorted from the most similar; a class with fewer
    exemplars left (after leave-one-out) pads with label -1, sorted last.

    Returns:
        As :func:`neighbours`, with T columns: indices (B, T) int64 into the bank (0 at a pad), labels (B, T)
        int64 (-1 = pad) and scores (B, T) float32 as :meth:`ExemplarBank.knn` gives them (0 at a pad).
        ``exclude`` (B,) refs: query i never gets an exemplar whose ref is ``exclude[i]`` (-1: none).
    """
    per_class = checks.check_int("per_class", per_class, 1)
    classes = np.unique(bank.labels)
    B, T = len(X), per_class * max(len(classes), 1)
    idx = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -1, dtype=torch.long)
    sims = torch.zeros(B, T)
    if B == 0 or len(bank) == 0:
        return idx, labels, sims
    q = torch.from_numpy(as_matrix(X, bank.dim, "queries"))
    ex = None
    if exclude is not None:
        ex = checks.as_refs(exclude, B, "exclude")
        checks.same_ref_kind(bank.refs, ex, "exclude")
    mem = torch.from_numpy(bank.features)
    if bank.metric == "cosine":
        q, mem = F.normalize(q, dim=1), F.normalize(mem, dim=1)
    rows = [torch.from_numpy(np.flatnonzero(bank.labels == c)) for c in classes]
    for s in range(0, B, batch):
        # 1. a key per (query, exemplar), larger = closer; excluded exemplars at -inf (real keys are finite)
        score = q[s:s + batch] @ mem.T  # (b, N)
        if bank.metric == "l2":
            score = (q[s:s + batch] ** 2).sum(1, keepdim=True) + (mem ** 2).sum(1) - 2 * score
        key = -score if bank.metric == "l2" else score.clone()
        if ex is not None:
            own = (bank.refs[None, :] == ex[s:s + batch, None]) & (ex[s:s + batch, None] != -1)
            key[torch.from_numpy(np.asarray(own, dtype=bool))] = -torch.inf
        # 2. each class's per_class best, padded to per_class at -inf
        keys, picks = [], []
        for r in rows:
            v, p = key[:, r].topk(min(per_class, len(r)), dim=1)
            pad = per_class - v.shape[1]
            keys.append(F.pad(v, (0, pad), value=-torch.inf))
            picks.append(F.pad(r[p], (0, pad), value=0))
        # 3. one list per query, sorted from the closest; pads (and excluded rows) last
        v, order = torch.cat(keys, 1).sort(dim=1, descending=True, stable=True)
        i = torch.cat(picks, 1).gather(1, order)
        real = v > -torch.inf
        idx[s:s + batch] = torch.where(real, i, 0)
        labels[s:s + batch] = torch.where(real, torch.from_numpy(bank.labels)[i], -1)
        sims[s:s + batch] = torch.where(real, score.gather(1, i), 0.0)
    return idx, labels, sims


def find_neighbours(bank: ExemplarBank, X: np.ndarray, k: int, exclude: np.ndarray | None = None,
                    retrieval: Retrieval = "global", per_class: int = 2):
    """:func:`neighbours` (``retrieval="global"``, k of the whole memory) or :func:`class_neighbours`
    (``"per_class"``, ``per_class`` of each class; ``k`` unused).

    Raises:
        ValueError: an unknown ``retrieval``.
    """
    if retrieval == "global":
        return neighbours(bank, X, k, exclude)
    if retrieval == "per_class":
        return class_neighbours(bank, X, per_class, exclude)
    raise ValueError(f"unknown retrieval {retrieval!r}; known: ['global', 'per_class']")


def retrieve(bank: ExemplarBank, X: np.ndarray, k: int, exclude: np.ndarray | None = None,
             retrieval: Retrieval = "global", per_class: int = 2):
    """MTN inputs for queries ``X`` (B, D): neighbour features (B, T, D) float32, labels and similarities.

    As :func:`find_neighbours`, with the features gathered: T = k, or per_class x the classes in the memory.
    Zero queries give zero-row tensors.
    """
    idx, labels, sims = find_neighbours(bank, X, k, exclude, retrieval, per_class)
    if len(X) == 0:
        return torch.zeros(0, idx.shape[1], bank.dim), labels, sims
    return torch.from_numpy(bank.features[idx.numpy()]), labels, sims


@torch.no_grad()
def mtn_scores(mtn: MemoryTransformerNetwork, bank: ExemplarBank, X: np.ndarray, k: int,
               clf: nn.Module | None = None, fuse=None, batch: int = 1024, base=None,
               proj: torch.Tensor | None = None, retrieval: Retrieval = "global",
               per_class: int = 2) -> np.ndarray:
    """(N, n_classes) eval-mode MTN logits of queries ``X`` (N, D), fused with ``clf``'s when given.

    ``fuse(clf_logits, mtn_logits)`` combines them (default: the sum). ``base`` (a function of the
    numpy features, e.g. an analytic head's scores) takes ``clf``'s place; ``proj`` maps the transformer's
    inputs (:func:`input_projection`); ``retrieval`` / ``per_class`` choose the neighbours as in
    :func:`find_neighbours` (pass ``cfg.mtn_retrieval`` / ``cfg.mtn_per_class`` the MTN was trained with).
    Zero queries give (0, n_classes).
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
        idx, nl, ns = find_neighbours(bank, xb, k, retrieval=retrieval, per_class=per_class)
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
    test will see (as ``cfg.mtn_retrieval`` asks), with leave-one-out by ``refs`` (a sample never sees
    itself). The old exemplars trained on are ``replay`` (features, labels, refs: the memory as it was
    before this task, at the old classes' full quotas, as replay uses it) or, by default, the bank's old
    classes. With ``cfg.mtn_train == "memory"`` the training set is the bank's contents alone (``X``,
    ``y``, ``refs`` and ``replay`` unused). ``base``: a fixed scorer of numpy features (an analytic head)
    in ``clf``'s place; its scores are computed once and only the fused loss ``fuse(base, mtn)`` reaches
    it. ``proj``: the transformer's input map (:func:`input_projection`). Returns (loss, samples).
    """
    if cfg.mtn_train == "memory":
        Xt, yt, rt = bank.features.copy(), bank.labels.copy(), bank.refs.copy()
    else:
        if replay is None:
            old = ~np.isin(bank.labels, np.unique(y))
            replay = (bank.features[old], bank.labels[old], bank.refs[old])
        Xt = np.concatenate([X, replay[0]])
        yt = np.concatenate([y, replay[1]])
        rt = np.concatenate([np.asarray(refs, dtype=bank.refs.dtype),
                             np.asarray(replay[2], dtype=bank.refs.dtype)])
    # once per task (the memory is fixed within a task); neighbours are kept as bank indices and gathered
    # per minibatch, so (N, k, D) features never live at once
    I_t, nl, ns = find_neighbours(bank, Xt, cfg.k, rt, cfg.mtn_retrieval, cfg.mtn_per_class)
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
