import warnings

import numpy as np
import pytest

from memret import CorruptSnapshotError, ExemplarBank
from memret.memory import closest_to_mean, herding


def blobs(n_per, classes, d=16, seed=0):
    g = np.random.default_rng(seed)
    centers = g.normal(size=(max(classes) + 1, d)) * 4
    y = np.repeat(np.asarray(classes), n_per)
    x = centers[y] + g.normal(size=(len(y), d))
    return x.astype(np.float32), y


def herding_direct(x, m):
    """The greedy rule written out literally (iCaRL Alg. 4), as the oracle."""
    phi = x / np.linalg.norm(x, axis=1, keepdims=True)
    mu = phi.mean(0)
    chosen = []
    for k in range(1, m + 1):
        best, best_d = None, np.inf
        for i in range(len(phi)):
            if i in chosen:
                continue
            d = np.linalg.norm(mu - (phi[i] + phi[chosen].sum(0)) / k)
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_matches_greedy_rule():
    x, _ = blobs(40, [0], d=8, seed=3)
    assert herding(x, 12).tolist() == herding_direct(x, 12)
    # herding's running mean approaches the class mean faster than a random subset's
    phi = x / np.linalg.norm(x, axis=1, keepdims=True)
    err_h = np.linalg.norm(phi[herding(x, 5)].mean(0) - phi.mean(0))
    err_r = np.linalg.norm(phi[np.random.default_rng(0).permutation(40)[:5]].mean(0) - phi.mean(0))
    assert err_h < err_r


def test_closest_to_mean_orders_by_distance():
    x, _ = blobs(30, [0], seed=1)
    order = closest_to_mean(x, 30)
    phi = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(phi - phi.mean(0), axis=1)
    assert np.all(np.diff(d[order]) >= 0)


@pytest.mark.parametrize("policy", ["herding", "random", "closest"])
def test_per_class_capacity_and_balance(policy):
    bank = ExemplarBank(16, per_class=5, policy=policy, seed=0)
    for t, classes in enumerate([[0, 1], [2, 3], [4, 5]]):
        x, y = blobs(30, classes, seed=t)
        bank.update(x, y, refs=np.arange(len(y)) + 1000 * t)
        counts = np.bincount(bank.labels)
        assert len(bank) == 5 * 2 * (t + 1)
        assert (counts[counts > 0] == 5).all()
        assert bank.classes.tolist() == list(range(2 * (t + 1)))


def test_total_budget_shrinks_old_classes_by_truncation():
    bank = ExemplarBank(16, total=40, policy="herding")
    x0, y0 = blobs(50, [0, 1], seed=0)
    bank.update(x0, y0)
    assert np.bincount(bank.labels).tolist() == [20, 20]
    first = bank.features[bank.labels == 0][:10].copy()
    x1, y1 = blobs(50, [2, 3], seed=1)
    bank.update(x1, y1)
    assert len(bank) <= 40 and np.bincount(bank.labels).tolist() == [10, 10, 10, 10]
    # the kept exemplars are the top of the herding order (iCaRL ReduceExemplarSet)
    np.testing.assert_array_equal(bank.features[bank.labels == 0], first)
    x2, y2 = blobs(50, [4, 5, 6], seed=2)
    bank.update(x2, y2)
    assert len(bank) <= 40 and set(np.bincount(bank.labels).tolist()) == {5}


def _inclusion_z(hits, runs, p):
    """z-scores of per-sample keep counts against Binomial(runs, p) (uniform inclusion)."""
    return (hits - runs * p) / np.sqrt(runs * p * (1 - p))


def _assert_group_rate(hits, runs, p, name):
    """The mean keep rate of a group of samples lies within 4 binomial std of p.

    Kept counts within a class are hypergeometric (a fixed number is kept), whose
    variance is below the binomial one, so the band is conservative.
    """
    sd = np.sqrt(p * (1 - p) / (runs * hits.size))
    assert abs(hits.mean() / runs - p) < 4 * sd, f"{name}: rate {hits.mean() / runs:.4f}, expected {p} +- {4 * sd:.4f}"


def test_reservoir_total_budget_is_uniform_over_stream_and_bounded():
    runs, hits = 400, np.zeros(200)
    for seed in range(runs):
        bank = ExemplarBank(4, total=20, policy="reservoir", seed=seed)
        for t in range(4):
            bank.update(np.zeros((50, 4), np.float32), np.full(50, t), refs=np.arange(50) + 50 * t)
            assert len(bank) == 20
        assert len(set(bank.refs.tolist())) == 20
        hits[bank.refs] += 1
    # each of the 200 samples is kept with probability 20/200, whichever task brought it
    assert np.abs(_inclusion_z(hits, runs, 0.1)).max() < 5
    for t in range(4):
        _assert_group_rate(hits[50 * t: 50 * t + 50], runs, 0.1, f"task {t}")


def test_reservoir_per_class_is_uniform_within_each_class():
    """per_class + reservoir: one reservoir per class over that class's own stream (issue 8 §2).

    Class 0 arrives in four chunks of 25 (keep rate 10/100 for each sample), a new class
    of 50 arrives with each chunk (keep rate 10/50); a stream-level reservoir fails both.
    """
    runs, m = 300, 10
    hits = np.zeros(300)
    for seed in range(runs):
        bank = ExemplarBank(2, per_class=m, policy="reservoir", seed=seed)
        for t in range(4):
            y = np.concatenate([np.zeros(25, np.int64), np.full(50, t + 1)])
            refs = np.concatenate([np.arange(25) + 25 * t, 100 + 50 * t + np.arange(50)])
            bank.update(np.ones((75, 2), np.float32), y, refs=refs)
        assert np.bincount(bank.labels).tolist() == [m] * 5  # balanced: exactly m per class
        assert len(set(bank.refs.tolist())) == len(bank)
        assert (bank.labels == np.where(bank.refs < 100, 0, (bank.refs - 100) // 50 + 1)).all()
        hits[bank.refs] += 1
    z = np.concatenate([_inclusion_z(hits[:100], runs, 0.1), _inclusion_z(hits[100:], runs, 0.2)])
    assert np.abs(z).max() < 5
    for t in range(4):
        _assert_group_rate(hits[25 * t: 25 * t + 25], runs, 0.1, f"class 0, chunk {t}")
    # and the same seed gives the same memory
    a, b = (ExemplarBank(2, per_class=3, policy="reservoir", seed=5) for _ in range(2))
    for bank in (a, b):
        bank.update(np.ones((40, 2), np.float32), np.arange(40) % 2, refs=np.arange(40))
    np.testing.assert_array_equal(a.refs, b.refs)


def test_deterministic_given_seed():
    x, y = blobs(30, [0, 1, 2], seed=0)
    a = ExemplarBank(16, per_class=4, policy="random", seed=7)
    b = ExemplarBank(16, per_class=4, policy="random", seed=7)
    a.update(x, y, refs=np.arange(len(y)))
    b.update(x, y, refs=np.arange(len(y)))
    np.testing.assert_array_equal(a.refs, b.refs)


def test_knn_leave_one_out():
    x, y = blobs(10, [0, 1], seed=0)
    bank = ExemplarBank(16, per_class=10)
    bank.update(x, y, refs=np.arange(20))
    D, I = bank.knn(x, 3)
    rows_of_self = np.flatnonzero(bank.refs == 0)[0]
    assert I[0, 0] == rows_of_self  # without exclusion a sample finds itself
    refs = np.arange(20)
    D, I = bank.knn(x, 3, exclude=refs)
    assert I.shape == (20, 3) and (I >= 0).all()
    assert not (bank.refs[I] == refs[:, None]).any()
    # scores stay sorted and match a direct computation
    phi = bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True)
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(D, np.take_along_axis(q @ phi.T, I, 1), atol=1e-5)
    assert np.all(np.diff(D, axis=1) <= 1e-6)
    with pytest.raises(ValueError, match="one ref per query"):
        bank.knn(x, 3, exclude=refs[:5])


def test_knn_leave_one_out_drops_every_copy_of_a_ref():
    """Several exemplars may share a ref (e.g. augmented views of one image): all are excluded."""
    x, y = blobs(12, [0, 1], d=8, seed=5)
    refs = np.arange(24) // 4  # four exemplars per ref
    bank = ExemplarBank(8, per_class=12, metric="l2")
    bank.update(x, y, refs=refs)
    for k in (1, 3, 20, 30):
        D, I = bank.knn(x, k, exclude=refs)
        assert ((I >= 0).sum(1) == min(k, 20)).all()  # 24 exemplars, 4 of them the query's own
        assert not ((bank.refs[I] == refs[:, None]) & (I >= 0)).any()
        full = ((x[:, None] - bank.features[None]) ** 2).sum(-1)
        full[bank.refs[None, :] == refs[:, None]] = np.inf
        np.testing.assert_allclose(D[:, : min(k, 20)], np.sort(full, 1)[:, : min(k, 20)], rtol=1e-4, atol=1e-3)


def test_class_means_and_ncm():
    x, y = blobs(20, [0, 1, 2], seed=4)
    bank = ExemplarBank(16, per_class=20)
    bank.update(x, y)
    cls, means = bank.class_means()
    assert cls.tolist() == [0, 1, 2] and means.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1, atol=1e-5)
    assert (bank.predict_ncm(x) == y).mean() > 0.95


def test_save_load_and_corruption(tmp_path):
    x, y = blobs(20, [0, 1], seed=0)
    bank = ExemplarBank(16, total=16, policy="random", seed=3)
    bank.update(x, y, refs=[f"img{i}" for i in range(len(y))])
    bank.save(tmp_path / "bank")
    back = ExemplarBank.load(tmp_path / "bank")
    np.testing.assert_array_equal(back.features, bank.features)
    assert back.refs.tolist() == bank.refs.tolist() and back.classes.tolist() == [0, 1]
    # the generator state travels: both continue identically
    x2, y2 = blobs(20, [2], seed=1)
    bank.update(x2, y2, refs=[f"n{i}" for i in range(20)])
    back.update(x2, y2, refs=[f"n{i}" for i in range(20)])
    assert back.refs.tolist() == bank.refs.tolist()
    f = next((tmp_path / "bank").glob("features-*.npy"))
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(CorruptSnapshotError):
        ExemplarBank.load(tmp_path / "bank")


def test_bad_input():
    bank = ExemplarBank(16, per_class=2)
    with pytest.raises(ValueError, match="exactly one budget"):
        ExemplarBank(16)
    with pytest.raises(ValueError, match="unknown policy"):
        ExemplarBank(16, per_class=2, policy="best")
    with pytest.raises(ValueError, match="labels"):
        bank.update(np.zeros((3, 16)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        bank.update(np.full((2, 16), np.nan), [0, 1])
    assert len(bank) == 0


def _state(bank):
    """Everything a call could change, as plain comparable values."""
    cls, means = bank.class_means()
    return (bank.features.tolist(), bank.labels.tolist(), bank.refs.tolist(), bank.classes.tolist(),
            bank.quota(), bank.capacity, cls.tolist(), means.tolist(), repr(bank._rng.bit_generator.state),
            dict(bank._class_seen), bank._seen)


@pytest.mark.parametrize("budget", [{"per_class": 3}, {"total": 6}])
def test_rejected_update_changes_nothing(budget):
    """issue 8 §2: update(..., policy="bogus") used to register the classes before raising."""
    x, y = blobs(10, [0, 1], d=16, seed=0)
    bank = ExemplarBank(16, policy="random", seed=1, **budget)
    twin = ExemplarBank(16, policy="random", seed=1, **budget)
    for b in (bank, twin):
        b.update(x, y, refs=np.arange(20))
    before = _state(bank)
    x2, y2 = blobs(10, [2, 3, 4], d=16, seed=1)
    bad_calls = [
        dict(features=x2, labels=y2, refs=np.arange(30) + 100, policy="bogus"),
        dict(features=x2, labels=y2, refs=np.arange(30) + 100, policy=True),
        dict(features=x2, labels=y2[:-1], refs=np.arange(30) + 100),
        dict(features=x2, labels=y2.astype(bool), refs=np.arange(30) + 100),
        dict(features=x2, labels=y2 - 3, refs=np.arange(30) + 100),           # negative class ids
        dict(features=x2, labels=y2.astype(float), refs=np.arange(30) + 100),
        dict(features=np.where(np.arange(30)[:, None] == 29, np.nan, x2), labels=y2, refs=np.arange(30) + 100),
        dict(features=x2, labels=y2, refs=[f"s{i}" for i in range(30)]),      # refs change kind
        dict(features=x2, labels=y2, refs=np.arange(30) + 0.5),
        dict(features=x2, labels=y2, refs=np.arange(29)),
        dict(features=x2, labels=y2.astype(np.uint64) + np.uint64(2**63), refs=np.arange(30)),  # would wrap
    ]
    if "total" in budget:  # 5 classes in 6 slots fit, 7 classes do not
        x3, y3 = blobs(3, [2, 3, 4, 5, 6], d=16, seed=2)
        bad_calls.append(dict(features=x3, labels=y3, refs=np.arange(15) + 100, policy="herding"))
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            bank.update(**call)
        assert _state(bank) == before, call
    with pytest.raises(ValueError):
        bank.replace_features(bank.features[:-1])
    assert _state(bank) == before
    # and the bank goes on exactly like one that never saw the rejected calls
    for b in (bank, twin):
        b.update(x2, y2, refs=np.arange(30) + 100)
    assert _state(bank) == _state(twin)
    assert not np.isnan(bank.class_means()[1]).any()


def test_constructor_and_k_errors():
    """issue 8 §2: clear errors for dim=0, unknown metrics, bools where ints are expected, k with exclude."""
    for kw, err in [(dict(dim=0, per_class=2), ValueError), (dict(dim=True, per_class=2), TypeError),
                    (dict(dim=4.0, per_class=2), TypeError), (dict(dim=4, per_class=2, metric="dot"), ValueError),
                    (dict(dim=4, per_class=True), TypeError), (dict(dim=4, total=0), ValueError),
                    (dict(dim=4, total=2.5), TypeError), (dict(dim=4, per_class=2, seed=True), TypeError),
                    (dict(dim=4, per_class=2, policy=None), ValueError)]:
        with pytest.raises(err):
            ExemplarBank(**kw)
    x, y = blobs(5, [0, 1], d=4, seed=0)
    bank = ExemplarBank(4, per_class=5)
    bank.update(x, y, refs=np.arange(10))
    for k in (0, -1, True, 2.0, None):
        for exclude in (None, np.arange(10)):
            with pytest.raises((ValueError, TypeError), match="k must"):
                bank.knn(x, k, exclude=exclude)
    with pytest.raises(TypeError, match="exclude must be ints"):
        bank.knn(x, 2, exclude=[f"s{i}" for i in range(10)])


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_zero_queries_and_short_banks(metric):
    """issue 8 §2: zero queries give (0, k) / (0,) arrays; k beyond the bank pads with -1."""
    x, y = blobs(2, [0, 1], d=8, seed=0)
    bank = ExemplarBank(8, per_class=2, metric=metric)
    empty = np.zeros((0, 8), np.float32)
    pad = np.inf if metric == "l2" else -np.inf
    D, I = bank.knn(x, 3)  # empty bank: all padding
    assert D.shape == I.shape == (4, 3) and (I == -1).all() and (D == pad).all()
    with pytest.raises(ValueError, match="empty"):
        bank.predict_ncm(x)
    bank.update(x, y, refs=np.arange(4))
    for exclude in (None, np.zeros(0, np.int64)):
        D, I = bank.knn(empty, 3, exclude=exclude)
        assert D.shape == I.shape == (0, 3) and D.dtype == np.float32 and I.dtype == np.int64
    assert bank.predict_ncm(empty).shape == (0,)
    D, I = bank.knn(x, 6, exclude=np.arange(4))
    assert D.shape == (4, 6) and ((I >= 0).sum(1) == 3).all() and (D[I < 0] == pad).all()
    assert (I[:, :3] >= 0).all() and not (bank.refs[I[:, :3]] == np.arange(4)[:, None]).any()


def test_total_budget_below_classes_raises_and_reservoir_leaves_classes_out():
    """issue 8 §2: total=3 with 5 classes used to empty the bank and answer class 0 with numpy warnings."""
    x, y = blobs(4, [0, 1, 2, 3, 4], d=8, seed=0)
    bank = ExemplarBank(8, total=3, policy="herding")
    bank.update(x[y < 3], y[y < 3])  # three classes fit, one exemplar each
    assert np.bincount(bank.labels).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="total=3 cannot keep one exemplar for each of 5 classes"):
        bank.update(x[y >= 3], y[y >= 3])
    assert bank.classes.tolist() == [0, 1, 2] and len(bank) == 3
    # a reservoir samples the stream: classes it holds no exemplar of are left out of the class means
    res = ExemplarBank(8, total=3, policy="reservoir", seed=0)
    res.update(x, y)
    held = np.unique(res.labels)
    assert len(res) == 3 and res.classes.tolist() == [0, 1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls, means = res.class_means()
        pred = res.predict_ncm(x)
    assert cls.tolist() == [c for c in res.classes.tolist() if c in held] and np.isfinite(means).all()
    assert set(pred.tolist()) <= set(held.tolist())


def test_load_rejects_a_wrong_manifest(tmp_path, monkeypatch):
    import memret.memory.bank as bank_module
    import memret.persist as persist_module  # ExemplarBank.load reads through persist.load_snapshot

    x, y = blobs(5, [0, 1], d=4, seed=0)
    bank = ExemplarBank(4, per_class=3, policy="reservoir", seed=2)
    bank.update(x, y, refs=np.arange(10))
    bank.save(tmp_path / "b")
    meta, files = persist_module.read_snapshot(tmp_path / "b", bank_module._KIND)
    bad_metas = {"dim": dict(meta, dim="4"), "classes": dict(meta, classes=[0]), "metric": dict(meta, metric="dot"),
                 "seen": {k: v for k, v in meta.items() if k != "seen"}, "rng_state": dict(meta, rng_state={}),
                 "per_class": dict(meta, per_class=True), "class_seen": dict(meta, class_seen=[1]),
                 "budget": dict(meta, per_class=1)}
    for field, bad in bad_metas.items():
        monkeypatch.setattr(persist_module, "read_snapshot", lambda *a, bad=bad, **kw: (bad, files))
        with pytest.raises(CorruptSnapshotError):
            ExemplarBank.load(tmp_path / "b")
    # a bank saved before per-class reservoirs (no class_seen) still loads
    old = {k: v for k, v in meta.items() if k != "class_seen"}
    monkeypatch.setattr(persist_module, "read_snapshot", lambda *a, **kw: (old, files))
    assert ExemplarBank.load(tmp_path / "b").refs.tolist() == bank.refs.tolist()

