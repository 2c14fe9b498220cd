"""Contrastive objectives for retrievers, each a model-with-loss returning ``(loss, stats)``.

- :class:`MoCo`: Contriever's pre-training objective. A momentum (EMA) copy of the encoder embeds the keys;
  negatives come from a queue of past keys; loss = cross-entropy over ``[positive | queue]`` / temperature.
- :class:`InBatch`: every other key of the global batch is a negative (plus optional hard negatives); used for
  the in-batch pre-training variant and for supervised fine-tuning.

Under ``torchrun`` each rank embeds its slice of the global batch; keys are all-gathered (with gradients for
:class:`InBatch`, without for the MoCo queue) so the objective equals the single-process one on the same
global batch, and the loop averages gradients across ranks.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from memret.retrieval.train.encoder import Encoder
from memret.train import all_reduce_mean, rank_world


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice (gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather(x: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """Concatenate the (n, ...) tensors of all ranks in rank order -> (world * n, ...); ``x`` in one process."""
    if rank_world()[1] == 1:
        return x
    if grad:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def _stats(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, q: torch.Tensor,
           k: torch.Tensor) -> dict[str, float]:
    """Global loss, top-1 accuracy (%) of the positive, and per-dimension std of query/key embeddings."""
    acc = (logits.argmax(-1) == labels).float().mean() * 100
    local = torch.stack([loss.detach(), acc, q.detach().std(0).mean(), k.detach().std(0).mean()])
    loss_, acc_, stdq, stdk = all_reduce_mean(local).tolist()
    return {"loss": loss_, "accuracy": acc_, "stdq": stdq, "stdk": stdk}


def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                     exclude: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of ``logits / temperature`` against the positive's column.

    Args:
        logits: (B, K) similarities of each query to K candidates.
        labels: (B,) column of each query's positive.
        temperature: softmax temperature (Contriever: 0.05).
        exclude: optional (B, K) bool, True where a candidate must not count as a negative (a known positive
            of that query other than its target); those logits are set to -inf.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.

    Returns:
        The mean loss over the B queries (a scalar).
    """
    return nn.functional.cross_entropy(mask_known(logits, labels, exclude) / temperature, labels,
                                       label_smoothing=label_smoothing)


def mask_known(logits: torch.Tensor, labels: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """``logits`` with the excluded (B, K) entries set to -inf, except each query's target column."""
    if exclude is None:
        return logits
    exclude = exclude.clone()
    exclude[torch.arange(len(labels)), labels] = False  # never mask the target itself
    return logits.masked_fill(exclude, float("-inf"))


class MoCo(nn.Module):
    """Momentum contrast over crop pairs (Contriever's ``src/moco.py``).

    Args:
        encoder: the query encoder (trained); a frozen deep copy becomes the key encoder.
        queue_size: negatives kept (Contriever: 131,072); a multiple of nothing in particular, it wraps.
        momentum: EMA factor of the key encoder (Contriever: 0.9995).
        temperature: softmax temperature (Contriever: 0.05).
        label_smoothing: as in cross-entropy.

    The queue starts as random unit vectors (as in Contriever) and is overwritten, oldest first, by the
    keys of each step, gathered over ranks.
    """

    def __init__(self, encoder: Encoder, queue_size: int = 131_072, momentum: float = 0.9995,
                 temperature: float = 0.05, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if queue_size < 1 or not 0 <= momentum <= 1 or temperature <= 0:
            raise ValueError(f"need queue_size >= 1, 0 <= momentum <= 1, temperature > 0; got {queue_size}, "
                             f"{momentum}, {temperature}")
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.momentum, self.temperature, self.label_smoothing = momentum, temperature, label_smoothing
        g = torch.Generator().manual_seed(0)
        self.register_buffer("queue", nn.functional.normalize(torch.randn(queue_size, encoder.embed_dim,
                                                                          generator=g), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def encoder(self) -> Encoder:
        """The trained (query) encoder, the one exported."""
        return self.encoder_q

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- momentum * key + (1 - momentum) * query, parameter by parameter."""
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest entries with ``keys`` (N, D); the pointer wraps around the queue."""
        size = self.queue.shape[0]
        keys = keys.detach().to(self.queue.dtype)[-size:]
        rows = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[rows] = keys
        self.queue_ptr.fill_(int((self.queue_ptr + len(keys)) % size))

    def forward(self, q_ids, q_mask, k_ids, k_mask) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, Lq) query crops and (B, Lk) key crops of this rank -> (loss, stats)."""
        q = self.encoder_q(q_ids, q_mask)  # (B, D)
        with torch.no_grad():
            self.momentum_update()
            k = self.encoder_k(k_ids, k_mask)  # (B, D), no gradient to keys
        pos = (q * k).sum(-1, keepdim=True)  # (B, 1)
        neg = q @ self.queue.clone().T  # (B, Q)
        logits = torch.cat([pos, neg], dim=1)
        labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
        loss = contrastive_loss(logits, labels, self.temperature, label_smoothing=self.label_smoothing)
        self.enqueue(gather(k, grad=False))
        return loss, _stats(loss, logits, labels, q, k)


class InBatch(nn.Module):
    """In-batch negatives (Contriever's ``src/inbatch.py``), optionally with hard negatives.

    Args:
        encoder: one encoder for queries and passages.
        temperature: softmax temperature (0.05 suits normalised embeddings: sentence-transformers' scale 20).
        label_smoothing: as in cross-entropy.
    """

    def __init__(self, encoder: Encoder, temperature: float = 0.05, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.encoder, self.temperature, self.label_smoothing = encoder, temperature, label_smoothing

    def forward(self, q_ids, q_mask, k_ids, k_mask, n_ids=None, n_mask=None,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """This rank's slice of the batch -> (loss, stats).

        Args:
            q_ids, q_mask: (B, Lq) queries. k_ids, k_mask: (B, Lk) their positives.
            n_ids, n_mask: optional (B * h, Ln) hard negatives (h per query).
            exclude: optional (B, world * B * (1 + h)) bool over the gathered candidates
                ``[all positives | all negatives]``, True where a candidate is a known positive of the query.
        """
        rank, _ = rank_world()
        q = self.encoder(q_ids, q_mask)  # (B, D)
        k = self.encoder(k_ids, k_mask)  # (B, D)
        cands = [gather(k)]
        if n_ids is not None:
            cands.append(gather(self.encoder(n_ids, n_mask)))
        cands = torch.cat(cands)  # (world * B * (1 + h), D)
        logits = q @ cands.T
        labels = torch.arange(len(q), device=q.device) + rank * len(q)
        loss = contrastive_loss(logits, labels, self.temperature, exclude, self.label_smoothing)
        return loss, _stats(loss, mask_known(logits, labels, exclude), labels, q, k)
