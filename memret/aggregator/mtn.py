"""The Memory Transformer Network (Iscen et al., BMVC 2022) as memret builds it.

For a query feature, the k nearest exemplars are retrieved from the exemplar
memory; a small transformer reads one token for the query and one per
neighbour and predicts from the query token. Token layout (memret's choice;
the paper's exact layout is not public):

    tok_0 = W_q f(x) + e_query
    tok_i = W_m f(n_i) + E_label[y_i] + w_s * sim(x, n_i) + e_memory [+ E_rank[i - 1]]   (i = 1..k)

``E_rank`` (``use_rank``) embeds a neighbour's position in the similarity-sorted list; without it
the network is invariant to the order of the neighbours. Neighbours missing from the memory
(label -1) are masked out of attention.
During training a sample never sees itself among its neighbours: the caller
retrieves with leave-one-out (``ExemplarBank.knn(..., exclude=refs)``).
"""

from __future__ import annotations

import torch
from torch import nn


class MemoryTransformerNetwork(nn.Module):
    """Aggregates a query and its retrieved neighbours into class logits.

    Args:
        feat_dim: dimension of the encoder features.
        n_classes: size of the label space (all classes the stream will ever show).
        width, layers, heads: transformer size (pre-norm encoder layers, GELU MLP of 4x width).
        use_similarity: add the query-neighbour similarity to each neighbour token.
        dropout: inside the transformer.
        use_rank: add a learnt embedding of each neighbour's rank (its position among the neighbours, which
            must come sorted by similarity, as :func:`memret.incremental.mtn.retrieve` gives them).
        max_rank: the most neighbours a query may have with ``use_rank``.
    """

    def __init__(self, feat_dim: int, n_classes: int, width: int = 256, layers: int = 2, heads: int = 4,
                 use_similarity: bool = True, dropout: float = 0.1, use_rank: bool = False,
                 max_rank: int = 64) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.q_proj = nn.Linear(feat_dim, width)
        self.m_proj = nn.Linear(feat_dim, width)
        self.label_emb = nn.Embedding(n_classes, width)
        self.sim_proj = nn.Linear(1, width) if use_similarity else None
        self.type_emb = nn.Parameter(torch.zeros(2, width))
        nn.init.normal_(self.type_emb, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)
        # made last, so the other weights are initialised as without ranks (same seed, same draws)
        self.rank_emb = nn.Parameter(torch.zeros(max_rank, width)) if use_rank else None
        if self.rank_emb is not None:
            nn.init.normal_(self.rank_emb, std=0.02)

    def forward(self, query: torch.Tensor, neigh: torch.Tensor, neigh_labels: torch.Tensor,
                neigh_sims: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, n_classes).

        Args:
            query: (B, D) query features.
            neigh: (B, k, D) neighbour features.
            neigh_labels: (B, k) int labels, -1 where no neighbour was found (masked).
            neigh_sims: (B, k) similarities to the query (used when ``use_similarity``).

        Raises:
            ValueError: ``use_similarity`` without ``neigh_sims``, or ``use_rank`` with more than ``max_rank``
                neighbours.
        """
        pad = neigh_labels < 0  # (B, k)
        q = self.q_proj(query).unsqueeze(1) + self.type_emb[0]  # (B, 1, W)
        m = self.m_proj(neigh) + self.label_emb(neigh_labels.clamp(min=0)) + self.type_emb[1]  # (B, k, W)
        if self.sim_proj is not None:
            if neigh_sims is None:
                raise ValueError("this MTN uses similarities: pass neigh_sims")
            m = m + self.sim_proj(torch.nan_to_num(neigh_sims, neginf=0.0, posinf=0.0).unsqueeze(-1))
        if self.rank_emb is not None:
            k = neigh_labels.shape[1]
            if k > len(self.rank_emb):
                raise ValueError(f"{k} neighbours per query, but this MTN embeds ranks up to max_rank="
                                 f"{len(self.rank_emb)}")
            m = m + self.rank_emb[:k]
        tokens = torch.cat([q, m], dim=1)  # (B, 1 + k, W)
        mask = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)  # True = ignore
        out = self.encoder(tokens, src_key_padding_mask=mask)
        return self.head(self.norm(out[:, 0]))
