"""Frozen-feature evaluation: k-NN classification (DINO's weighted vote, k = 20, T = 0.07) through memret's
``DenseIndex``, and a linear probe.

``knn_classify`` follows ``dino/eval_knn.py``: L2-normalised features, the k most cosine-similar
training features vote for their label with weight ``exp(similarity / T)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from memret.pretrain.views import CIFAR_MEAN, CIFAR_STD, normalize


@torch.inference_mode()
def extract_features(encoder: nn.Module, images: Any, batch_size: int = 256, device: str | torch.device = "cpu",
                     mean=CIFAR_MEAN, std=CIFAR_STD) -> np.ndarray:
    """``encoder(x)`` for every image, in eval mode (the mode is restored afterwards).

    Args:
        images: a :class:`~memret.pretrain.data.UInt8Images` (fast path) or any dataset of ``(uint8 (3, H, W), label)``.

    Returns:
        float32 (N, D).
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            idx = np.arange(start, min(start + batch_size, len(images)))
            if hasattr(images, "batch"):
                x = images.batch(idx)
            else:
                x = torch.stack([images[int(i)][0] for i in idx])
            x = normalize(x.to(device).float().div(255), mean, std)
            out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out).numpy()


def knn_classify(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, k: int = 20,
                 temperature: float = 0.07, n_classes: int | None = None) -> np.ndarray:
    """Weighted k-NN votes over cosine similarity, searched with ``memret.DenseIndex`` (exact, ``Flat``).

    Args:
        train_feats: (N, D) bank features. train_labels: (N,) ints >= 0. test_feats: (M, D).
        k: neighbours. temperature: vote weight ``exp(sim / temperature)``.

    Returns:
        int64 (M,) predicted labels.
    """
    from memret import DenseIndex

    train_labels = np.asarray(train_labels, np.int64)
    if train_labels.min() < 0:
        raise ValueError("k-NN needs labelled bank features (labels >= 0)")
    n_classes = int(n_classes or train_labels.max() + 1)
    index = DenseIndex(train_feats.shape[1], "Flat", metric="cosine")
    index.add(np.arange(len(train_feats)), train_feats)
    sims, ids = index.search(test_feats, min(k, len(train_feats)))
    w = np.exp((sims - 1.0) / temperature)  # exp(sim / T) up to a per-row constant: no overflow
    votes = np.zeros((len(test_feats), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(test_feats)), ids.shape[1]), train_labels[ids].ravel()), w.ravel())
    return votes.argmax(1)


def knn_accuracy(encoder: nn.Module, bank: Any, test: Any, k: int = 20, temperature: float = 0.07,
                 device: str | torch.device = "cpu", batch_size: int = 256, mean=CIFAR_MEAN, std=CIFAR_STD) -> float:
    """Top-1 k-NN accuracy of ``encoder``'s features: ``bank`` images vote for ``test`` images."""
    fb = extract_features(encoder, bank, batch_size, device, mean, std)
    ft = extract_features(encoder, test, batch_size, device, mean, std)
    pred = knn_classify(fb, np.asarray(bank.targets), ft, k, temperature)
    return float((pred == np.asarray(test.targets)).mean())


def linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray,
                 weight_decays=(0.0, 1e-4, 1e-3), epochs: int = 100, val_fraction: float = 0.1,
                 seed: int = 0) -> dict[str, float]:
    """Softmax regression on standardised frozen features (full-batch Adam, lr 1e-2 with cosine decay).

    The weight decay is chosen on a held-out ``val_fraction`` of the training features (never on the test
    set); the chosen model is then refit on all training features and scored on the test set.

    Returns:
        ``{"top1": test accuracy, "weight_decay": chosen, "val_top1": its validation accuracy}``.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_feats))
    n_val = max(1, int(len(perm) * val_fraction))
    va, tr = perm[:n_val], perm[n_val:]
    best = max(((_fit_eval(train_feats[tr], train_labels[tr], train_feats[va], train_labels[va], wd, epochs, seed), wd)
                for wd in weight_decays), key=lambda t: t[0])
    top1 = _fit_eval(train_feats, train_labels, test_feats, test_labels, best[1], epochs, seed)
    return {"top1": top1, "weight_decay": best[1], "val_top1": best[0]}


def _fit_eval(xtr, ytr, xte, yte, wd: float, epochs: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    xtr, xte = torch.as_tensor(xtr, dtype=torch.float32), torch.as_tensor(xte, dtype=torch.float32)
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr, yte = torch.as_tensor(np.asarray(ytr), dtype=torch.long), torch.as_tensor(np.asarray(yte), dtype=torch.long)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    lin = nn.Linear(xtr.shape[1], n_classes)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float((lin(xte).argmax(1) == yte).float().mean())
