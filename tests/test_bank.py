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


def test_reservoir_is_uniform_over_stream_and_bounded():
    hits = np.zeros(200)
    for seed in range(200):
        bank = ExemplarBank(4, total=20, policy="reservoir", seed=seed)
        for t in range(4):
            x = np.zeros((50, 4), np.float32)
            bank.update(x, np.full(50, t), refs=np.arange(50) + 50 * t)
            assert len(bank) <= 20
        hits[bank.refs] += 1
    # each of the 200 samples is kept with probability 20/200 = 0.1
    assert abs(hits.mean() / 200 - 0.1) < 1e-9
    assert hits[:50].mean() / 200 == pytest.approx(0.1, abs=0.03)
    assert hits[150:].mean() / 200 == pytest.approx(0.1, abs=0.03)


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
    with pytest.raises(ValueError, match="unknown per-class policy"):
        ExemplarBank(16, per_class=2, policy="best")
    with pytest.raises(ValueError, match="labels"):
        bank.update(np.zeros((3, 16)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        bank.update(np.full((2, 16), np.nan), [0, 1])
    assert len(bank) == 0
