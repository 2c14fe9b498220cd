"""The trainable side of :class:`memret.retrieval.TextEncoder`: the same transformers model and pooling as a
``torch.nn.Module``, and the export that writes a folder ``TextEncoder`` and transformers load directly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn


class Encoder(nn.Module):
    """A transformers encoder with masked mean (or CLS) pooling and optional L2 normalisation.

    Args:
        model: a transformers ``AutoModel`` (BERT family).
        pooling: ``"mean"`` or ``"cls"``.
        normalize: L2-normalise the embeddings.
    """

    def __init__(self, model: nn.Module, pooling: str = "mean", normalize: bool = False) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling {pooling!r}; known: ['cls', 'mean']")
        self.model, self.pooling, self.normalize = model, pooling, normalize

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and (B, L) attention mask -> (B, D) embeddings (fp32)."""
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = emb.float()
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb


def load_encoder(path: str | os.PathLike, pooling: str | None = None, normalize: bool | None = None):
    """The starting point of a run: ``(Encoder, tokenizer, max_length)``.

    Pooling, normalisation and max length are what :class:`TextEncoder` reads from the folder (a
    sentence-transformers folder declares them; explicit ``pooling`` / ``normalize`` override), so training
    optimises the embedding that evaluation uses. ``max_length`` is the folder's declared passage length
    (512 if none): the length the exported model keeps, whatever truncation training used for speed.
    """
    from memret.retrieval.encoder import TextEncoder

    ref = TextEncoder(str(path), pooling=pooling, normalize=normalize, device="cpu")
    ref.model.train()
    return Encoder(ref.model, ref.pooling, ref.normalize), ref.tokenizer, ref.passage_max_length


def save_encoder(encoder: Encoder, tokenizer, out: str | os.PathLike, max_length: int) -> Path:
    """Write ``out`` as a transformers model + tokenizer folder that is also a sentence-transformers folder
    (Transformer, Pooling and, if normalised, Normalize modules), so ``TextEncoder(out)`` applies the same
    pooling, normalisation and max length as training did.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": encoder.embed_dim, "pooling_mode_cls_token": encoder.pooling == "cls",
        "pooling_mode_mean_tokens": encoder.pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": int(max_length),
                                                               "do_lower_case": False}, indent=2))
    return out
