"""memret.retrieval.train: crops, deletion, the MoCo queue, the losses, mining, resume, the CLI, torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memret.retrieval.train import (  # noqa: E402
    CropPairs, Encoder, FinetuneBatches, InBatch, LoopConfig, MoCo, Pairs, chunks, contrastive_loss, crop_pair,
    delete_words, example_rng, fit, holdout, iter_documents, load_encoder, mine, pairs_from_beir, pairs_from_jsonl,
    random_crop, save_encoder)

ROOT = Path(__file__).resolve().parents[1]
TOPICS = [["solar", "panel", "light", "power", "cell", "sun"], ["coffee", "bean", "roast", "cup", "brew", "milk"],
          ["lava", "magma", "ash", "rock", "heat", "crater"], ["river", "water", "fish", "boat", "bank", "flow"]]
WORDS = sorted({w for t in TOPICS for w in t} | {"the", "of", "and", "a"})


def _tiny_model(path: Path, dropout: float = 0.0, normalize: bool = True) -> str:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary, saved as a sentence-transformers folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})  # transformers 5 ignores vocab_file=
    assert tok("solar light")["input_ids"] == [2, vocab.index("solar"), vocab.index("light"), 3]
    tok.save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                         max_position_embeddings=128)).save_pretrained(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return str(path)


def _tiny_beir(root: Path, docs_per_topic: int = 6) -> Path:
    """Topic documents, one query per document whose positive is that document (train qrels)."""
    g = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    with open(root / "corpus.jsonl", "w") as fc, open(root / "queries.jsonl", "w") as fq, \
            open(root / "qrels" / "train.tsv", "w") as fr:
        fr.write("query-id\tcorpus-id\tscore\n")
        for t, words in enumerate(TOPICS):
            for i in range(docs_per_topic):
                did, qid = f"d{t}-{i}", f"q{t}-{i}"
                text = " ".join(g.choice(words, 24))
                fc.write(json.dumps({"_id": did, "title": words[i % len(words)], "text": text}) + "\n")
                fq.write(json.dumps({"_id": qid, "text": " ".join(text.split()[:4])}) + "\n")
                fr.write(f"{qid}\t{did}\t1\n")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    return {"model": _tiny_model(base / "model"), "dropout_model": _tiny_model(base / "dropout", dropout=0.1),
            "beir": _tiny_beir(base / "beir")}


# ------------------------------------------------------------------ cropping and deletion
def test_random_crop_lengths_positions_and_seed():
    tokens = list(range(200))
    for i in range(300):
        crop = random_crop(tokens, example_rng(5, i), 0.05, 0.5)
        assert int(200 * 0.05) <= len(crop) <= int(200 * 0.5)
        assert crop == list(range(crop[0], crop[0] + len(crop)))  # one contiguous span of the input
        assert crop == random_crop(tokens, example_rng(5, i), 0.05, 0.5)  # same seed, same crop
    lengths = [len(random_crop(tokens, example_rng(6, i), 0.1, 0.3)) for i in range(2000)]
    assert min(lengths) >= 20 and max(lengths) <= 60 and abs(np.mean(lengths) - 40) < 1.5  # uniform ratio
    assert random_crop([7], example_rng(0, 0), 0.05, 0.1) == [7]  # never empty
    with pytest.raises(ValueError, match="ratio_min"):
        random_crop(tokens, example_rng(0, 0), 0.6, 0.5)


def test_delete_words_ratio_order_and_seed():
    tokens = list(range(20_000))
    kept = delete_words(tokens, example_rng(1, 2), 0.1)
    assert abs(1 - len(kept) / len(tokens) - 0.1) < 0.01
    assert kept == sorted(kept) and set(kept) <= set(tokens)  # a subsequence, order kept
    assert kept == delete_words(tokens, example_rng(1, 2), 0.1)
    assert kept != delete_words(tokens, example_rng(1, 3), 0.1)
    assert delete_words(tokens[:50], example_rng(0, 0), 0.0) == tokens[:50]
    assert all(len(delete_words([1, 2], example_rng(0, i), 0.99)) >= 1 for i in range(50))


def test_crop_pair_and_chunks():
    tokens = list(range(100))
    q, k = crop_pair(tokens, example_rng(3, 4))
    assert (q, k) == crop_pair(tokens, example_rng(3, 4))
    assert set(q) <= set(tokens) and set(k) <= set(tokens) and q and k
    pairs = [crop_pair(tokens, example_rng(3, i), 0.05, 0.5, 0.0) for i in range(100)]
    assert sum(a == b for a, b in pairs) < 5  # independent crops, not copies
    assert [len(c) for c in chunks(list(range(530)), 256)] == [256, 256, 18]
    assert [len(c) for c in chunks(list(range(516)), 256, min_length=8)] == [256, 256]


# ------------------------------------------------------------------ corpora
def test_corpus_formats_and_crop_stream(tiny, tmp_path):
    beir_docs = list(iter_documents(tiny["beir"]))
    assert len(beir_docs) == 24 and beir_docs[0].startswith("solar ")  # title + text
    (tmp_path / "a.jsonl").write_text('{"contents": "one two"}\n\n{"title": "t", "text": "x y"}\n')
    (tmp_path / "b.txt").write_text("first para\nstill first\n\n\nsecond para\n")
    assert list(iter_documents(tmp_path)) == ["one two", "t x y", "first para still first", "second para"]
    (tmp_path / "bad.jsonl").write_text('{"contents": 1}\n{"oops": 2}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(iter_documents(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="no corpus"):
        iter_documents(tmp_path / "absent").__next__()

    _, tok, _ = load_encoder(tiny["model"])
    stream = CropPairs(tiny["beir"], tok, chunk_length=16, seed=1, shuffle_buffer=5)
    first = [b for _, b in zip(range(6), stream.batches(8))]  # 48 pairs: wraps into a second epoch
    again = [b for _, b in zip(range(3), stream.batches(8, start_step=3))]
    assert again == first[3:]  # fast-forward = the same stream, so resume and ranks agree
    q = first[0]["q"][0]
    assert q[0] == tok.cls_token_id and q[-1] == tok.sep_token_id and len(q) <= 16 // 2 + 2


# ------------------------------------------------------------------ objectives
def _encoder(path, dim_check=True):
    enc, tok, max_len = load_encoder(path)
    return enc, tok


def test_moco_queue_and_momentum(tiny):
    enc, _ = _encoder(tiny["model"])
    moco = MoCo(enc, queue_size=10, momentum=0.9, temperature=0.05)
    assert moco.queue.shape == (10, 32) and torch.allclose(moco.queue.norm(dim=1), torch.ones(10))
    assert not any(p.requires_grad for p in moco.encoder_k.parameters())
    a, b = torch.arange(6 * 32.).view(6, 32), -torch.arange(6 * 32.).view(6, 32)
    moco.enqueue(a)
    assert int(moco.queue_ptr) == 6 and torch.equal(moco.queue[:6], a)
    moco.enqueue(b)  # 6 more: 4 fill the end, 2 wrap over the oldest
    assert int(moco.queue_ptr) == 2
    assert torch.equal(moco.queue[6:], b[:4]) and torch.equal(moco.queue[:2], b[4:]) and torch.equal(moco.queue[2:6], a[2:])
    before = [p.detach().clone() for p in moco.encoder_k.parameters()]
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(1.0)
    moco.momentum_update()
    for pk, pk0, pq in zip(moco.encoder_k.parameters(), before, moco.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq)


def test_contrastive_loss_on_hand_made_logits():
    logits = torch.tensor([[1.0, 0.5, -1.0], [0.2, 0.9, 0.3]])
    labels = torch.tensor([0, 1])
    t = 0.5
    by_hand = np.mean([-np.log(np.exp(1 / t) / np.exp(np.array([1.0, 0.5, -1.0]) / t).sum()),
                       -np.log(np.exp(0.9 / t) / np.exp(np.array([0.2, 0.9, 0.3]) / t).sum())])
    assert contrastive_loss(logits, labels, t).item() == pytest.approx(by_hand, rel=1e-6)
    exclude = torch.tensor([[True, True, False], [False, False, False]])  # the target itself is never masked
    masked = np.mean([-np.log(np.exp(1 / t) / (np.exp(1 / t) + np.exp(-1 / t))),
                      -np.log(np.exp(0.9 / t) / np.exp(np.array([0.2, 0.9, 0.3]) / t).sum())])
    assert contrastive_loss(logits, labels, t, exclude).item() == pytest.approx(masked, rel=1e-6)


def test_inbatch_forward_matches_by_hand(tiny):
    enc, tok = _encoder(tiny["model"])
    enc.eval()
    model = InBatch(enc, temperature=0.1)
    q = tok(["solar light", "coffee cup"], return_tensors="pt", padding=True)
    k = tok(["sun power cell", "roast bean milk"], return_tensors="pt", padding=True)
    n = tok(["lava ash", "river fish"], return_tensors="pt", padding=True)
    loss, stats = model(q["input_ids"], q["attention_mask"], k["input_ids"], k["attention_mask"],
                        n["input_ids"], n["attention_mask"])
    with torch.no_grad():
        qe, ke, ne = (enc(x["input_ids"], x["attention_mask"]) for x in (q, k, n))
    logits = qe @ torch.cat([ke, ne]).T
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits / 0.1, torch.arange(2)).item(), rel=1e-5)
    assert set(stats) == {"loss", "accuracy", "stdq", "stdk"}


# ------------------------------------------------------------------ fine-tuning data
def test_pairs_holdout_and_batches(tiny, tmp_path):
    pairs = pairs_from_beir(tiny["beir"], "train")
    assert len(pairs) == 24 and pairs.positives["q1-2"] == ["d1-2"]
    train, held = holdout(pairs, 0.25, seed=0)
    assert len(held) == 6 and not set(held) & set(train.queries) and held == holdout(pairs, 0.25, seed=0)[1]
    train.negatives = {q: [d for d in pairs.corpus if d not in train.positives[q]][:5] for q in train.queries}
    train.positives["q0-0"] = ["d0-0", "d0-1"]  # a query with two positives: the other must be masked
    src = FinetuneBatches(train, batch_size=6, hard_negatives=2, seed=1)
    assert src.steps_per_epoch == 3
    b, again = src.batch(4), src.batch(4)
    assert np.array_equal(b.pop("exclude"), again.pop("exclude")) and b == again
    b = src.batch(4)
    assert len(b["q"]) == 6 and len(b["n"]) == 12 and b["exclude"].shape == (6, 18)
    for j, q in enumerate(b["qids"]):
        assert b["pos"][j] in train.positives[q]
        assert not set(b["neg"][2 * j:2 * j + 2]) & set(train.positives[q])
        cand = b["pos"] + b["neg"]
        assert [c in train.positives[q] for c in cand] == b["exclude"][j].tolist()
    shared = Pairs({"a": "sun", "b": "cup"}, {"a": ["d1"], "b": ["d1", "d2"]},
                   {d: {"title": "", "text": d} for d in ("d1", "d2", "d3")}, {"a": ["d3"], "b": ["d3"]})
    both = FinetuneBatches(shared, batch_size=2, hard_negatives=1)
    for s in range(8):  # d1 is a's target and one of b's positives: never a negative of b, whatever b drew
        x = both.batch(s)
        j = x["qids"].index("b")
        assert x["exclude"][j][x["pos"].index("d1") if x["pos"].count("d1") == 1 else 1 - j]
    seen = [q for s in range(3) for q in src.batch(s)["qids"]]
    assert sorted(seen) == sorted(train.queries)  # one epoch visits every query once
    (tmp_path / "p.jsonl").write_text(json.dumps({"query": "sun", "positives": ["solar panel"],
                                                  "negatives": ["coffee cup", "solar panel"]}) + "\n")
    jp = pairs_from_jsonl(tmp_path / "p.jsonl")
    assert len(jp.corpus) == 2 and jp.negatives["q1"] == [d for d in jp.corpus if d not in jp.positives["q1"]]
    (tmp_path / "bad.jsonl").write_text('{"query": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        pairs_from_jsonl(tmp_path / "bad.jsonl")


def test_mining_never_returns_a_known_positive(tiny):
    from memret.retrieval import DenseRetriever, Hit, TextEncoder

    pairs = pairs_from_beir(tiny["beir"], "train")
    pairs.positives = {q: ds + [f"d{q[1]}-{(int(q[3:]) + 1) % 6}"] for q, ds in pairs.positives.items()}
    dense = DenseRetriever(TextEncoder(tiny["model"], device="cpu"), cache_dir=None, show_progress=False)
    mined = mine(pairs, dense, depth=10)
    assert set(mined) == set(pairs.queries)
    for q, negs in mined.items():
        assert len(negs) == 10 and not set(negs) & set(pairs.positives[q])

    class Oracle:  # ranks the positives first: all of them must still be dropped
        def index(self, corpus):
            pass

        def search(self, queries, k):
            rest = lambda q: [d for d in sorted(pairs.corpus) if d not in pairs.positives[q]]  # noqa: E731
            return [[Hit(d, 1.0) for d in pairs.positives[q] + rest(q)][:k] for q in pairs.queries]

    for q, negs in mine(pairs, Oracle(), depth=5).items():
        assert len(negs) == 5 and not set(negs) & set(pairs.positives[q])


# ------------------------------------------------------------------ the loop: resume, learning, export
def _unsup_run(path, model_path, crash_at=None, steps=6, **loop):
    enc, tok, max_len = load_encoder(model_path)
    model = MoCo(enc, queue_size=16, momentum=0.99, temperature=0.1)
    from memret.retrieval.train.corpus import CropPairs as CP, pad

    stream = CP(path["beir"], tok, chunk_length=16, seed=0, shuffle_buffer=4)
    calls = {"n": 0}

    def to_inputs(batch):
        calls["n"] += 1
        if crash_at is not None and calls["n"] > crash_at:
            raise KeyboardInterrupt("simulated crash")
        qi, qm = pad(batch["q"], tok.pad_token_id)
        ki, km = pad(batch["k"], tok.pad_token_id)
        return {"q_ids": qi, "q_mask": qm, "k_ids": ki, "k_mask": km}

    cfg = LoopConfig(**{"lr": 1e-3, "steps": steps, "checkpoint_every": 3, "progress": False, **loop})
    return model, fit(model, lambda s: stream.batches(4, s), to_inputs, cfg, path["out"],
                      lambda d: save_encoder(model.encoder, tok, d, max_len))


def test_resume_is_exact(tiny, tmp_path):
    """A run killed after its step-3 checkpoint and rerun ends exactly where an uninterrupted run ends
    (dropout on: the RNG states are part of the checkpoint; the MoCo queue and key encoder too)."""
    whole, _ = _unsup_run({"beir": tiny["beir"], "out": tmp_path / "whole"}, tiny["dropout_model"])
    with pytest.raises(KeyboardInterrupt):
        _unsup_run({"beir": tiny["beir"], "out": tmp_path / "split"}, tiny["dropout_model"], crash_at=3)
    assert json.loads((tmp_path / "split" / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
    torch.manual_seed(12345)  # a new process would start from another RNG state: the checkpoint must restore it
    resumed, _ = _unsup_run({"beir": tiny["beir"], "out": tmp_path / "split"}, tiny["dropout_model"])
    log = lambda d: [json.loads(x)["loss"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]  # noqa
    assert len(log("whole")) == 6 and log("whole") == log("split")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_minutes_schedule_ends_when_the_time_ends(tiny, tmp_path, monkeypatch):
    """With only a time budget, the schedule sized from the first steps is re-sized as the pace changes: on a
    machine that slows down 2x after the probe, the warm-up + decay still completes (lr near 0 at the last step)
    within the budget, instead of being cut off by the hard stop."""
    from types import SimpleNamespace

    from memret.retrieval.train import loop as loop_module
    from memret.retrieval.train.loop import resize

    assert resize(5, 100, seconds_left=30.0, seconds_per_step=2.0) == 5 + 14  # 0.97 * 30 / 2 = 14.55
    assert resize(5, 100, seconds_left=-3.0, seconds_per_step=2.0) == 6  # out of time: one more step
    clock = {"t": 0.0, "calls": 0}

    def perf_counter():  # 1 s per call during the probe, then 2 s: the machine got busy
        clock["calls"] += 1
        clock["t"] += 1.0 if clock["calls"] <= 8 else 2.0
        return clock["t"]

    monkeypatch.setattr(loop_module, "time", SimpleNamespace(perf_counter=perf_counter))
    _, summary = _unsup_run({"beir": tiny["beir"], "out": tmp_path / "timed"}, tiny["model"], steps=None,
                            minutes=1.0, resize_every=3, checkpoint_every=1000)
    hist = [json.loads(x) for x in (tmp_path / "timed" / "log.jsonl").read_text().splitlines()]
    assert summary["steps"] == summary["total_steps"] == len(hist) >= 3  # the schedule ran to its end
    assert hist[-1]["seconds"] <= 60.0
    assert hist[-1]["lr"] < 0.25 * max(h["lr"] for h in hist)  # decayed, not cut off at its peak


def test_finetune_cli_lowers_loss_and_exports(tiny, tmp_path):
    from memret.retrieval import TextEncoder
    from memret.retrieval.train.__main__ import main

    out = tmp_path / "ft"
    summary = main(["--mode", "finetune", "--data", str(tiny["beir"]), "--model", tiny["model"], "--out", str(out),
                    "--epochs", "8", "--batch-size", "8", "--lr", "2e-3", "--negatives", "dense", "--holdout", "0.25",
                    "--temperature", "0.1", "--max-length", "16"])
    losses = [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 16 and np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert (out / "loss.png").stat().st_size > 1000 and (out / "checkpoint.pt").is_file()
    assert len(json.loads((out / "pairs.json").read_text())["holdout_qids"]) == 6
    enc = TextEncoder(str(out), device="cpu")  # the folder keeps pooling, normalisation and the model's max length
    # (48), not the shorter truncation used in training
    assert (enc.pooling, enc.normalize, enc.passage_max_length) == ("mean", True, 48)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    from transformers import AutoModel

    AutoModel.from_pretrained(out)
    trained, tok, _ = load_encoder(out)
    trained.eval()
    x = tok(["solar sun power"], return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(enc.encode(["solar sun power"]), trained(x["input_ids"], x["attention_mask"]).numpy(),
                                   atol=1e-6)


# ------------------------------------------------------------------ torchrun: 2 processes = 1 process
def test_two_process_runs_match_one_process(tiny, tmp_path):
    """MoCo (keys gathered into the queue) and fine-tuning (in-batch negatives gathered with gradients, hard
    negatives mined by the model on both ranks): the same loss trajectory with the global batch split over
    two gloo processes as in one process."""
    from memret.retrieval.train.__main__ import main

    common = ["--model", tiny["model"], "--steps", "4", "--batch-size", "8", "--lr", "1e-3", "--threads", "1"]
    runs = {"moco": ["--mode", "unsupervised", "--data", str(tiny["beir"]), "--queue-size", "24", "--momentum", "0.9",
                     "--chunk-length", "16", *common],
            "finetune": ["--mode", "finetune", "--data", str(tiny["beir"]), "--negatives", "dense", *common]}
    with socket.socket() as s:  # a port nobody holds, rather than a guess that can collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    worker = Path(__file__).with_name("retrieval_train_dist_worker.py")
    argv = [json.dumps(a + ["--out", str(tmp_path / f"{name}-2")]) for name, a in runs.items()]
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", *argv], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    threads = torch.get_num_threads()
    try:
        for name, a in runs.items():  # the single-process runs, here, while the workers start
            main(a + ["--out", str(tmp_path / f"{name}-1")])
    finally:
        torch.set_num_threads(threads)  # main() set 1 thread in this (pytest's) process
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-3000:] for e in errs)
    for name in runs:
        one, two = ([json.loads(x)["loss"] for x in (tmp_path / f"{name}-{w}" / "log.jsonl").read_text().splitlines()]
                    for w in (1, 2))
        assert len(one) == len(two) == 4
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5, err_msg=name)
        assert one[-1] != one[0]  # it trained
