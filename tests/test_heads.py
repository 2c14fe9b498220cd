"""Analytic heads: RanPAC equals the joint ridge solution whatever the class order; SLDA's statistics are exact."""

import numpy as np
import pytest
import torch

from memret.heads import SLDA, BlockSLDA, RanPAC


def _blobs(n_classes=10, per_class=60, dim=24, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    X = np.concatenate([c + spread * rng.normal(size=(per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    return X, y


def _stream(X, y, order, tasks=5):
    per = len(order) // tasks
    for t in range(tasks):
        rows = np.flatnonzero(np.isin(y, order[t * per:(t + 1) * per]))
        yield rows, X[rows], y[rows]


@pytest.mark.parametrize("order", [list(range(10)), [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]])
def test_ranpac_after_a_stream_equals_the_joint_ridge_solution(order):
    X, y = _blobs()
    holdout = np.random.default_rng(3).random(len(y)) < 0.2  # a per-sample split, the same in every order
    head = RanPAC(10, projection=64, ridge="auto", seed=5)
    for rows, Xt, yt in _stream(X, y, order):
        head.fit_task(Xt, yt, holdout=holdout[rows])
    # joint: one ridge solve on all the data at once, same projection, same chosen ridge
    H = torch.relu(torch.from_numpy(X).double() @ head.W_rand.double())
    Y = torch.nn.functional.one_hot(torch.from_numpy(y), 10).double()
    A = H.T @ H + head.lam * torch.eye(H.shape[1], dtype=torch.float64)
    W_joint = torch.linalg.solve(A, H.T @ Y)
    rel = (head.weight.double() - W_joint).norm() / W_joint.norm()
    assert rel < 1e-6, rel
    # and the ridge chosen from the held-out statistics is the one a joint search would choose
    joint = RanPAC(10, projection=64, ridge="auto", seed=5).fit_task(X, y, holdout=holdout)
    assert joint.lam == pytest.approx(head.lam, rel=1e-9)


def test_ranpac_held_out_error_from_statistics_matches_the_direct_one():
    X, y = _blobs(dim=12, per_class=30)
    holdout = np.arange(len(y)) % 4 == 0
    head = RanPAC(10, projection=32, ridge=0.5, seed=1).fit_task(X, y, holdout=holdout)
    W = head._cholesky_solve(head.G, head.Q, 0.5)
    H_h = head.project(X[holdout]).double()
    Y_h = torch.nn.functional.one_hot(torch.from_numpy(y[holdout]), 10).double()
    direct = float(((H_h @ W - Y_h) ** 2).sum())
    from_stats = float((W * (head.G_h @ W)).sum() - 2 * (W * head.Q_h).sum() + head.yy_h.sum())
    assert from_stats == pytest.approx(direct, rel=1e-8)


def test_slda_class_means_and_covariance_are_exact_after_a_stream():
    X, y = _blobs(dim=16, per_class=40, seed=1)
    head = SLDA(10, shrinkage=1e-3)
    for _, Xt, yt in _stream(X, y, [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]):
        head.fit_task(Xt, yt)
    Xd = X.astype(np.float64)
    means = np.stack([Xd[y == c].mean(0) for c in range(10)])
    np.testing.assert_allclose(head.means.numpy(), means, rtol=1e-12, atol=1e-12)
    centred = Xd - means[y]
    np.testing.assert_allclose(head.covariance.numpy(), centred.T @ centred / len(y), rtol=1e-9, atol=1e-10)


def test_slda_held_out_error_from_statistics_matches_the_samples():
    X, y = _blobs(n_classes=5, dim=12, per_class=40, seed=6, spread=2.5)
    holdout = np.arange(len(y)) % 3 == 0
    head = SLDA(5, shrinkage="auto").fit_task(X, y, holdout=holdout)
    s = 0.05
    # the discriminant from the non-held-out samples only
    Xf, yf = X[~holdout].astype(np.float64), y[~holdout]
    mu = np.stack([Xf[yf == c].mean(0) for c in range(5)])
    cov = sum(np.outer(x - mu[c], x - mu[c]) for x, c in zip(Xf, yf)) / len(yf)
    P = np.linalg.solve((1 - s) * cov + s * np.eye(12), mu.T)
    b = -0.5 * (mu.T * P).sum(0)
    # margins of the true class over each rival on the held-out samples: Gaussian tail of their moments
    from scipy.stats import norm

    Xh, yh = X[holdout].astype(np.float64), y[holdout]
    total = 0.0
    for i in range(5):
        for j in range(5):
            if i != j:
                w = P[:, i] - P[:, j]
                mean = (Xh[yh == i] @ w + b[i] - b[j]).mean()
                var = (((Xh - mu[yh]) @ w) ** 2).mean()   # pooled around the fitted means
                total += norm.cdf(-mean / np.sqrt(var)) * (yh == i).sum()
    assert head.held_out_error(s) == pytest.approx(total / len(yh), rel=1e-8)


@pytest.mark.parametrize("order", [list(range(10)), [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]])
def test_slda_auto_after_a_stream_equals_the_joint_head_and_choice(order):
    X, y = _blobs(dim=40, per_class=30, seed=8, spread=4.0)
    holdout = np.random.default_rng(4).random(len(y)) < 0.25
    head = SLDA(10, shrinkage="auto")
    chosen = []
    for rows, Xt, yt in _stream(X, y, order):
        head.fit_task(Xt, yt, holdout=holdout[rows])
        chosen.append(head.shrinkage)
    joint = SLDA(10, shrinkage="auto").fit_task(X, y, holdout=holdout)
    assert head.shrinkage == joint.shrinkage
    np.testing.assert_allclose(head.weight.numpy(), joint.weight.numpy(), rtol=1e-5, atol=1e-6)
    # the discriminant is solved on every sample, held-out ones included, with the chosen shrinkage
    fixed = SLDA(10, shrinkage=joint.shrinkage).fit_task(X, y)
    np.testing.assert_allclose(head.scores(X), fixed.scores(X), rtol=1e-4, atol=1e-4)
    assert len(set(chosen)) > 1 or chosen[0] == joint.shrinkage   # re-chosen as the stream grows


def test_slda_descent_search_makes_the_grids_choice_after_every_task_with_fewer_factorisations():
    # correlated noise in 80 dimensions, 80 samples a task: the choice falls as the stream grows
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(80, 80)) * np.logspace(0, -1, 80)[:, None]
    centres = rng.normal(0, 1, (10, 80))
    X = np.concatenate([c + 2.0 * rng.normal(size=(40, 80)) @ mix for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(10), 40)
    holdout = np.random.default_rng(4).random(len(y)) < 0.25
    heads = {s: SLDA(10, shrinkage="auto", search=s) for s in ("grid", "descent")}
    reads = {s: 0 for s in heads}
    for name, head in heads.items():
        original = head.held_out_error

        def counted(*a, _f=original, _n=name, **k):
            reads[_n] += 1
            return _f(*a, **k)

        head.held_out_error = counted
    chosen = []
    for rows, Xt, yt in _stream(X, y, [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]):
        for head in heads.values():
            head.fit_task(Xt, yt, holdout=holdout[rows])
        assert heads["descent"].shrinkage == heads["grid"].shrinkage
        np.testing.assert_array_equal(heads["descent"].weight.numpy(), heads["grid"].weight.numpy())
        chosen.append(heads["grid"].shrinkage)
    assert len(set(chosen)) >= 3   # the choice moved along the stream (0.3, 1e-4, 3e-4 here)
    assert reads["grid"] == 5 * 8 and reads["descent"] < reads["grid"]   # 21 here; ~3 a task when it moves one step
    with pytest.raises(ValueError, match="search"):
        SLDA(3, shrinkage="auto", search="golden")


@pytest.mark.parametrize("overwrite", [False, True])
def test_slda_discriminant_shrinks_in_place_only_when_asked_and_falls_back_to_lu(overwrite):
    rng = np.random.default_rng(3)
    A = rng.normal(size=(30, 30))
    mu = torch.from_numpy(rng.normal(size=(4, 30)))
    for cov in (A @ A.T / 30, np.diag(np.r_[-5.0, np.ones(29)])):   # positive definite, then not
        S = (1 - 0.1) * cov + 0.1 * np.eye(30)
        c = torch.from_numpy(cov.copy())
        P = SLDA._discriminant(c, mu, 0.1, overwrite, rebuild=lambda: torch.from_numpy(cov.copy()))
        np.testing.assert_allclose(P.numpy(), np.linalg.solve(S, mu.numpy().T), rtol=1e-9, atol=1e-12)
        assert overwrite or np.array_equal(c.numpy(), cov)   # kept unless overwritten


@pytest.mark.parametrize("make", [lambda: RanPAC(4, projection=128, seed=0), lambda: RanPAC(4, projection=0),
                                  lambda: SLDA(4, shrinkage=1e-2), lambda: BlockSLDA(4, (5, 3), shrinkage=1e-2)])
def test_analytic_heads_separate_separable_toy_data(make):
    X, y = _blobs(n_classes=4, per_class=50, dim=8, seed=2, spread=0.3)
    head = make()
    head.fit_task(X[y < 2], y[y < 2])
    assert (head.predict(X[y < 2]) == y[y < 2]).all()     # only the seen classes are predicted
    head.fit_task(X[y >= 2], y[y >= 2])
    assert (head.predict(X) == y).mean() == 1.0


def test_heads_round_trip_their_state_and_refuse_bad_input():
    X, y = _blobs(n_classes=4, per_class=20, dim=6)
    for make in (lambda: RanPAC(4, projection=16), lambda: SLDA(4), lambda: SLDA(4, shrinkage="auto"),
                 lambda: BlockSLDA(4, (4, 2), shrinkage="auto")):
        a = make().fit_task(X, y)
        b = make()
        b.load_state_dict(a.state_dict())
        np.testing.assert_array_equal(a.scores(X), b.scores(X))
        if not isinstance(a, RanPAC):
            assert b.shrinkage == a.shrinkage    # exactly (float64 state): the descent search resumes from it
        with pytest.raises(ValueError, match="dimensions|shape"):
            a.scores(X[:, :3])
        with pytest.raises(ValueError, match="labels"):
            make().fit_task(X, y + 10)
        with pytest.raises(RuntimeError, match="fit_task"):
            make().predict(X)


def test_analytic_head_plugin_inside_an_avalanche_strategy_matches_the_head_alone():
    pytest.importorskip("avalanche")
    from avalanche.benchmarks.scenarios import class_incremental_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    from memret.heads.plugin import AnalyticHeadPlugin

    class Data(torch.utils.data.Dataset):
        def __init__(self, X, y):
            self.X, self.targets = torch.from_numpy(X), [int(t) for t in y]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.X[i], self.targets[i]

    X, y = _blobs(n_classes=4, per_class=30, dim=8, seed=4, spread=1.5)
    Xte, yte = _blobs(n_classes=4, per_class=15, dim=8, seed=4, spread=1.5)
    order = [2, 0, 3, 1]
    bm = class_incremental_benchmark({"train": Data(X, y), "test": Data(Xte, yte)}, class_order=order,
                                     num_experiences=2)
    plugin = AnalyticHeadPlugin(SLDA(4, shrinkage=0.1))
    model = torch.nn.Linear(8, 4)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                     criterion=torch.nn.CrossEntropyLoss(), train_epochs=1, train_mb_size=32, plugins=[plugin],
                     evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    direct = SLDA(4, shrinkage=0.1)
    for exp, classes in zip(bm.train_stream, (order[:2], order[2:])):
        strategy.train(exp)
        rows = np.isin(y, classes)
        direct.fit_task(X[rows], y[rows])
    np.testing.assert_allclose(plugin.head.scores(Xte), direct.scores(Xte), rtol=1e-5, atol=1e-5)
    metrics = strategy.eval(bm.test_stream)
    acc = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream"))
    assert acc == pytest.approx(float((direct.predict(Xte) == yte).mean()))


def test_block_slda_is_lda_with_a_block_diagonal_covariance_each_block_shrunk_on_its_own():
    """One SLDA per block, scores summed = LDA whose covariance keeps each block's own (shrunk by its own s) and
    zero across blocks, by hand; after a stream, whatever the order; blocks=(D,) is SLDA itself."""
    X, y = _blobs(n_classes=6, per_class=40, dim=10, seed=3, spread=2.0)
    blocks, shrink = (6, 4), (1e-2, 0.3)
    head = BlockSLDA(6, blocks, shrinkage=shrink[0])
    for _, Xt, yt in _stream(X, y, [4, 1, 5, 0, 2, 3], tasks=3):
        head.fit_task(Xt, yt)
    head.heads[1].set_shrinkage(shrink[1])
    assert head.shrinkage == shrink and head.dim == 10 and bool(head.seen.all())
    Xd = X.astype(np.float64)
    mu = np.stack([Xd[y == c].mean(0) for c in range(6)])
    cov = (Xd - mu[y]).T @ (Xd - mu[y]) / len(y)
    want = np.zeros((len(X), 6))
    for (a, b), s in zip(((0, 6), (6, 10)), shrink):
        S = (1 - s) * cov[a:b, a:b] + s * np.eye(b - a)      # the block's own covariance, shrunk
        P = np.linalg.solve(S, mu[:, a:b].T)
        want += Xd[:, a:b] @ P - 0.5 * (mu[:, a:b].T * P).sum(0)
    np.testing.assert_allclose(head.scores(X), want, rtol=1e-4, atol=1e-3)
    full = SLDA(6, shrinkage=1e-2).fit_task(X, y)                # the cross-block covariance matters here
    assert not np.allclose(full.scores(X), head.scores(X), atol=1e-2)
    one = BlockSLDA(6, (10,), shrinkage=1e-2).fit_task(X, y)
    np.testing.assert_allclose(one.scores(X), full.scores(X), rtol=1e-6, atol=1e-5)
    for bad in ((6, 0), 6, (2.7, 3.3), (True, 9), (), "64"):
        with pytest.raises(ValueError, match="blocks"):
            BlockSLDA(6, bad)
    with pytest.raises(ValueError, match="shape"):
        head.fit_task(X[:, :9], y)
    other = BlockSLDA(6, (5, 5))
    with pytest.raises(ValueError, match="blocks"):
        other.load_state_dict(head.state_dict())
