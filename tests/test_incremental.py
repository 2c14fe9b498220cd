import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")

from memret import ExemplarBank  # noqa: E402
from memret.aggregator import MemoryTransformerNetwork  # noqa: E402
from memret.incremental import TrainConfig, class_order, make_method, make_tasks, run  # noqa: E402
from memret.incremental.data import ArrayImages, LabelledData, load_dataset  # noqa: E402

FAST = TrainConfig(epochs=3, batch_size=64, mtn_width=64, mtn_layers=1, mtn_heads=2, k=5)


def blobs(n_per: int, n_classes: int, d: int = 24, seed: int = 0, spread: float = 3.0):
    g = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(n_classes, d)) * spread
    y = np.repeat(np.arange(n_classes), n_per)
    return (centers[y] + g.normal(size=(len(y), d))).astype(np.float32), y


# ------------------------------------------------------------------ streams
def test_class_order_is_icarl_convention():
    assert class_order(10, 1993) == np.random.RandomState(1993).permutation(10).tolist()
    assert class_order(10, 1) != class_order(10, 1993)


def test_stream_construction():
    ytr, yte = np.arange(600) % 6, np.arange(120) % 6
    tasks = make_tasks(ytr, yte, 3, seed=1993)
    order = class_order(6, 1993)
    assert [t.classes for t in tasks] == [tuple(order[0:2]), tuple(order[2:4]), tuple(order[4:6])]
    for t in tasks:
        assert set(ytr[t.train_rows]) == set(t.classes) and len(t.train_rows) == 200
        assert set(yte[t.test_rows]) == set(t.classes) and len(t.test_rows) == 40
    assert sorted(np.concatenate([t.train_rows for t in tasks]).tolist()) == list(range(600))
    with pytest.raises(ValueError, match="equal tasks"):
        make_tasks(ytr, yte, 4)


# ------------------------------------------------------------------ MTN
def test_mtn_shapes_and_padding_mask():
    torch.manual_seed(0)
    mtn = MemoryTransformerNetwork(12, 7, width=32, layers=2, heads=4, dropout=0.0).eval()
    q, n = torch.randn(3, 12), torch.randn(3, 5, 12)
    labels = torch.tensor([[0, 1, 2, -1, -1], [3, 3, 3, 3, 3], [6, -1, -1, -1, -1]])
    sims = torch.rand(3, 5)
    out = mtn(q, n, labels, sims)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    n2, s2 = n.clone(), sims.clone()
    n2[labels < 0] = 1e3 * torch.randn_like(n2[labels < 0])  # garbage in padded slots...
    s2[labels < 0] = -5
    torch.testing.assert_close(mtn(q, n2, labels, s2), out)  # ...is never attended to
    n3 = n.clone()
    n3[1, 0] += 1.0
    assert not torch.allclose(mtn(q, n3, labels, sims)[1], out[1])  # real neighbours matter


def test_mtn_training_never_sees_itself():
    X, y = blobs(20, 4)
    bank = ExemplarBank(X.shape[1], per_class=20, seed=0)
    m = make_method("mtn", X.shape[1], 4, bank, FAST, seed=0)
    bank.update(X, y, refs=np.arange(len(y)))
    feats, labels, sims = m._neighbours(X, exclude=np.arange(len(y)))
    rows = bank.knn(X, FAST.k, exclude=np.arange(len(y)))[1]
    assert not (bank.refs[rows] == np.arange(len(y))[:, None]).any()
    assert feats.shape == (len(y), FAST.k, X.shape[1]) and (labels >= 0).all()


# ------------------------------------------------------------------ methods
@pytest.mark.parametrize("name", ["finetune", "joint", "replay", "icarl", "knn", "mtn"])
def test_each_method_learns_above_chance(name):
    X, y = blobs(40, 6, seed=1)
    Xte, yte = blobs(20, 6, seed=2)
    tasks = make_tasks(y, yte, 3)
    bank = ExemplarBank(X.shape[1], total=60, seed=0)
    m = make_method(name, X.shape[1], 6, bank, FAST, seed=0)
    for t in tasks:
        m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
    acc_last_task = (m.scores(Xte[tasks[-1].test_rows]).argmax(1) == yte[tasks[-1].test_rows]).mean()
    assert acc_last_task > 0.5  # chance is 1/6
    if name != "finetune":  # finetune forgets by design; the others keep old classes above chance
        s = m.scores(Xte[tasks[0].test_rows])
        masked = np.full_like(s, -np.inf)
        masked[:, m.seen] = s[:, m.seen]
        assert (masked.argmax(1) == yte[tasks[0].test_rows]).mean() > 1 / 6


# ------------------------------------------------------------------ run(), resume, data
def _tiny_images(n_per=30, n_classes=4, seed=0):
    g = np.random.default_rng(seed)
    colors = np.random.default_rng(5).integers(0, 255, size=(n_classes, 3))
    y = np.repeat(np.arange(n_classes), n_per)
    img = np.clip(colors[y][:, None, None, :] + g.normal(0, 20, (len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
    return img, y


def tiny_data():
    xtr, ytr = _tiny_images(30, 4, 0)
    xte, yte = _tiny_images(10, 4, 1)
    return LabelledData("tiny", ArrayImages(xtr, ytr), ArrayImages(xte, yte), 4, 32)


def test_run_writes_results_and_plot(tmp_path):
    res = run(tiny_data(), tasks=2, method=["knn", "mtn"], encoder="kmeans_patches",
              encoder_kw={"n_centroids": 16}, memory=20, out=tmp_path / "r", config=FAST, cache_dir=tmp_path)
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(saved["methods"]) == {"knn", "mtn"}
    R = np.array(saved["methods"]["mtn"]["accuracy_matrix"], dtype=float)
    assert R.shape == (2, 2) and np.isnan(R[0, 1]) and 0 <= R[1, 0] <= 1
    assert (tmp_path / "r" / "accuracy.png").stat().st_size > 1000
    assert res.methods["knn"].summary["last_accuracy"] > 0.5
    assert "knn" in res.table()


def test_resume_after_a_task_matches_uninterrupted(tmp_path, monkeypatch):
    from memret.incremental.methods import MTNMethod

    kw = dict(tasks=2, method="mtn", encoder="kmeans_patches", encoder_kw={"n_centroids": 16}, memory=20,
              config=FAST, plot=False, cache_dir=tmp_path)
    full = run(tiny_data(), out=tmp_path / "full", **kw)
    original = MTNMethod.learn

    def crash_on_task_1(self, task, *a, **kw):
        if task == 1:
            raise KeyboardInterrupt("killed during task 1")
        return original(self, task, *a, **kw)

    monkeypatch.setattr(MTNMethod, "learn", crash_on_task_1)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_data(), out=tmp_path / "part", **kw)
    assert json.loads((tmp_path / "part" / "ckpt" / "mtn" / "progress.json").read_text())["done"] == 0
    monkeypatch.setattr(MTNMethod, "learn", original)
    resumed = run(tiny_data(), out=tmp_path / "part", **kw)
    assert resumed.methods["mtn"].seen_accuracy == full.methods["mtn"].seen_accuracy
    assert resumed.methods["mtn"].accuracy_matrix == full.methods["mtn"].accuracy_matrix


def test_load_dataset_errors(tmp_path):
    with pytest.raises(KeyError, match="known"):
        load_dataset("mnist2")
    with pytest.raises(FileNotFoundError, match="train/<wnid>"):
        load_dataset("imagenet1k", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(KeyError, match="unknown method"):
        run("digits", tasks=5, method="ewc")


def test_imagenet1k_entry_point_on_a_generated_folder_tree(tmp_path):
    from PIL import Image

    img, y = _tiny_images(6, 4, 0)
    for split, (ims, ys) in {"train": (img, y), "val": (img[::2], y[::2])}.items():
        for i, (im, c) in enumerate(zip(ims, ys)):
            d = tmp_path / "imnet" / split / f"n0000{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.kron(im, np.ones((2, 2, 1), np.uint8))).save(d / f"{i}.JPEG")
    res = run("imagenet1k", tasks=2, root=tmp_path / "imnet", method=["icarl", "mtn"], encoder="kmeans_patches",
              encoder_kw={"n_centroids": 8}, out=tmp_path / "run", config=FAST, cache_dir=tmp_path)
    assert res.memory == "20/class"  # the iCaRL ImageNet protocol
    assert res.dataset == "imagenet1k" and res.classes_per_task == 2
    assert res.methods["icarl"].summary["last_accuracy"] > 0.25


def test_replay_draws_from_the_whole_old_memory_then_stores_the_task(monkeypatch):
    """ER order (Avalanche's ReplayPlugin too): train with the full old memory, then make room for the new task."""
    import memret.incremental.methods as M

    sizes = []
    original = M._MemoryBatches.__init__

    def spy(self, X, y, gen):
        sizes.append(len(y))
        original(self, X, y, gen)

    monkeypatch.setattr(M._MemoryBatches, "__init__", spy)
    X, y = blobs(40, 6, seed=1)
    tasks = make_tasks(y, y, 3)
    bank = ExemplarBank(X.shape[1], total=60, seed=0)
    m = make_method("replay", X.shape[1], 6, bank, FAST, seed=0)
    for t in tasks:
        m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
        assert set(bank.classes.tolist()) == set(m.seen)
    assert sizes == [0, 60, 60]  # not [0, 30, 40]: the old classes keep their quota while replayed
