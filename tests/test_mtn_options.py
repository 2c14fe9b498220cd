"""Issue 12's MTN design options, each off by default: per-class retrieval (``mtn_retrieval``), the rank
encoding (``mtn_rank``) and training on the memory only (``mtn_train``)."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")

from memret import ExemplarBank  # noqa: E402
from memret.aggregator import MemoryTransformerNetwork  # noqa: E402
from memret.incremental import TrainConfig, make_method, make_tasks  # noqa: E402
from memret.incremental.mtn import class_neighbours, make_mtn, retrieve, train_mtn  # noqa: E402
from memret.incremental.training import generator  # noqa: E402
from conftest import blobs  # noqa: E402

FAST = TrainConfig(epochs=1, batch_size=64, mtn_width=32, mtn_layers=1, mtn_heads=2, k=5, ranpac_projection=48,
                   slda_shrinkages=(1e-2, 0.5))


def brute_force_scores(bank, X):
    """(B, N) float64 scores by the bank's metric, larger = closer (l2: minus the squared distance)."""
    q, m = X.astype(np.float64), bank.features.astype(np.float64)
    if bank.metric == "cosine":
        q, m = q / np.linalg.norm(q, axis=1, keepdims=True), m / np.linalg.norm(m, axis=1, keepdims=True)
    if bank.metric == "l2":
        return -((q[:, None, :] - m[None, :, :]) ** 2).sum(-1)
    return q @ m.T


# ------------------------------------------------------------------ per-class retrieval
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_per_class_retrieval_is_each_class_nearest_without_the_query_itself(metric):
    g = np.random.default_rng(0)
    # 3 classes of 5, 3 and 2 exemplars; the queries are the exemplars themselves (leave-one-out) and strangers
    y = np.repeat([0, 1, 2], [5, 3, 2])
    X = g.normal(size=(len(y), 8)).astype(np.float32)
    bank = ExemplarBank(8, per_class=10, metric=metric)
    bank.update(X, y, refs=np.arange(100, 100 + len(y)))
    per_class = 2
    Q = np.concatenate([bank.features, g.normal(size=(4, 8)).astype(np.float32)])
    exclude = np.concatenate([bank.refs, np.full(4, -1)])
    idx, labels, sims = class_neighbours(bank, Q, per_class, exclude=exclude)
    assert idx.shape == labels.shape == sims.shape == (len(Q), per_class * 3)
    S = brute_force_scores(bank, Q)
    for i in range(len(Q)):
        real = labels[i] >= 0
        got = idx[i][real].numpy()
        assert exclude[i] not in bank.refs[got]  # never the query's own exemplar
        for c in range(3):
            allowed = np.flatnonzero((bank.labels == c) & (bank.refs != exclude[i]))
            want = allowed[np.argsort(-S[i, allowed])][:per_class]
            assert sorted(got[bank.labels[got] == c]) == sorted(want)  # that class's nearest
            assert int((labels[i] == c).sum()) == len(want)
        # one list sorted from the closest, the padding (label -1, index 0, score 0) after it
        assert real.tolist() == sorted(real.tolist(), reverse=True)
        np.testing.assert_allclose(-S[i, got] if metric == "l2" else S[i, got], sims[i][real].numpy(), rtol=1e-4,
                                   atol=1e-4)
        assert (np.diff(S[i, got]) <= 1e-6).all()
        assert (idx[i][~real] == 0).all() and (sims[i][~real] == 0).all()
    # the query that is one of class 2's two exemplars has one left: one pad; a stranger has none
    own2 = int(np.flatnonzero(bank.labels == 2)[0])
    assert int((labels[own2] == 2).sum()) == 1 and int((labels[own2] == -1).sum()) == 1
    assert (labels[-1] >= 0).all()


def test_per_class_retrieval_with_string_refs_and_zero_queries():
    X, y = blobs(3, 3, d=6)
    bank = ExemplarBank(6, per_class=10)
    bank.update(X, y, refs=[f"e{i}" for i in range(len(y))])
    idx, labels, _ = class_neighbours(bank, bank.features, 1, exclude=bank.refs)
    assert (bank.refs[idx.numpy()] != bank.refs[:, None]).all() and (labels >= 0).all()
    feats, labels, sims = retrieve(bank, np.zeros((0, 6), np.float32), 5, retrieval="per_class", per_class=2)
    assert feats.shape == (0, 6, 6) and labels.shape == sims.shape == (0, 6)
    with pytest.raises(ValueError, match="retrieval"):
        retrieve(bank, X, 5, retrieval="perclass")


@pytest.mark.parametrize("name", ["mtn", "mtn_slda"])
@pytest.mark.parametrize("option", [{"mtn_retrieval": "per_class"}, {"mtn_rank": True}, {"mtn_train": "memory"},
                                    {"mtn_retrieval": "per_class", "mtn_rank": True, "mtn_train": "memory"}])
def test_each_option_trains_scores_and_round_trips(name, option, monkeypatch):
    """Both MTN methods run with each option; per-class training retrieves leave-one-out, prediction reads every
    class in the memory; a method rebuilt from the state dict scores the same."""
    import memret.incremental.mtn as M

    calls = []
    original = M.class_neighbours

    def spy(bank, X, per_class, exclude=None, **kw):
        out = original(bank, X, per_class, exclude, **kw)
        calls.append((exclude, bank.refs[out[0].numpy()], out[1], len(np.unique(bank.labels))))
        return out

    monkeypatch.setattr(M, "class_neighbours", spy)
    cfg = replace(FAST, **option)
    X, y = blobs(20, 6, seed=1)
    tasks = make_tasks(y, y, 3)
    m = make_method(name, X.shape[1], 6, ExemplarBank(X.shape[1], total=30, seed=0), cfg, seed=0)
    for t in tasks:
        m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
    s = m.scores(X)
    assert s.shape == (len(X), 6) and np.isfinite(s).all()
    if cfg.mtn_retrieval == "per_class":
        train = [c for c in calls if c[0] is not None]
        assert len(train) == 3  # one leave-one-out retrieval per task
        assert len(calls) - len(train) == 1  # and prediction (m.scores) retrieves per class too
        for exclude, refs, labels, n_classes in calls:
            assert labels.shape[1] == cfg.mtn_per_class * n_classes  # every class in the memory, each time
            if exclude is not None:
                assert not ((refs == exclude[:, None]) & (labels.numpy() >= 0)).any()
        assert calls[-1][3] == 6
    else:
        assert not calls
    again = make_method(name, X.shape[1], 6, m.bank, cfg, seed=1)
    again.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(again.scores(X), s)


# ------------------------------------------------------------------ rank encoding
def test_rank_encoding_breaks_the_permutation_invariance_over_neighbours():
    q, n = torch.randn(4, 12), torch.randn(4, 6, 12)
    labels, sims = torch.randint(0, 5, (4, 6)), torch.rand(4, 6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    for use_rank in (False, True):
        torch.manual_seed(0)
        mtn = MemoryTransformerNetwork(12, 5, width=32, layers=2, heads=4, dropout=0.0, use_rank=use_rank).eval()
        with torch.no_grad():
            out, shuffled = mtn(q, n, labels, sims), mtn(q, n[:, perm], labels[:, perm], sims[:, perm])
        assert torch.allclose(out, shuffled, atol=1e-5) != use_rank
    with pytest.raises(ValueError, match="max_rank"):
        MemoryTransformerNetwork(12, 5, width=32, heads=4, use_rank=True, max_rank=5)(q, n, labels, sims)


def test_rank_embedding_is_made_last_and_sized_for_the_retrieval():
    torch.manual_seed(0)
    plain = MemoryTransformerNetwork(12, 5, width=32, heads=4).state_dict()
    torch.manual_seed(0)
    ranked = MemoryTransformerNetwork(12, 5, width=32, heads=4, use_rank=True).state_dict()
    assert set(ranked) - set(plain) == {"rank_emb"} and "rank_emb" not in plain
    assert all(torch.equal(plain[k], ranked[k]) for k in plain)  # the other weights start as without ranks
    assert ranked["rank_emb"].std() == pytest.approx(0.02, rel=0.2)
    assert make_mtn(12, 7, replace(FAST, mtn_rank=True)).rank_emb.shape[0] == FAST.k
    pc = replace(FAST, mtn_rank=True, mtn_retrieval="per_class", mtn_per_class=3)
    assert make_mtn(12, 7, pc).rank_emb.shape[0] == 21


# ------------------------------------------------------------------ training on the memory only
@pytest.mark.parametrize("mode", ["task", "memory"])
def test_memory_only_training_trains_on_the_bank_leave_one_out(mode, monkeypatch):
    import memret.incremental.mtn as M

    calls = []
    original = M.neighbours

    def spy(bank, X, k, exclude=None):
        calls.append((X.copy(), exclude))
        return original(bank, X, k, exclude)

    monkeypatch.setattr(M, "neighbours", spy)
    X, y = blobs(20, 4)
    bank = ExemplarBank(X.shape[1], total=24, seed=0)
    bank.update(X[y < 2], y[y < 2], refs=np.flatnonzero(y < 2))
    replay = (bank.features.copy(), bank.labels.copy(), bank.refs.copy())
    new = y >= 2
    bank.update(X[new], y[new], refs=np.flatnonzero(new))
    cfg = replace(FAST, mtn_train=mode)
    mtn = make_mtn(X.shape[1], 4, cfg)
    opt = torch.optim.AdamW(mtn.parameters(), lr=cfg.lr)
    _, n = train_mtn(mtn, opt, bank, X[new], y[new], np.flatnonzero(new), cfg, generator(0, 4), torch.zeros(4),
                     replay=replay)
    (Xq, exclude), = calls
    if mode == "memory":
        assert n == len(bank) == 24
        np.testing.assert_array_equal(Xq, bank.features)
        np.testing.assert_array_equal(exclude, bank.refs)
    else:
        assert n == int(new.sum()) + len(replay[1]) == 40 + 24


# ------------------------------------------------------------------ config
def test_defaults_are_the_mtn_as_first_built():
    cfg = TrainConfig()
    assert (cfg.mtn_retrieval, cfg.mtn_rank, cfg.mtn_train) == ("global", False, "task")
    assert make_mtn(16, 4, cfg).rank_emb is None


@pytest.mark.parametrize("bad", [{"mtn_retrieval": "perclass"}, {"mtn_retrieval": None}, {"mtn_per_class": 0},
                                 {"mtn_per_class": 1.5}, {"mtn_per_class": True}, {"mtn_rank": "yes"},
                                 {"mtn_train": "mem"}])
def test_bad_option_values_raise(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)
