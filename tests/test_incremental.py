import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")

from memret import ExemplarBank  # noqa: E402
from memret.aggregator import MemoryTransformerNetwork  # noqa: E402
from memret.incremental import TrainConfig, class_order, make_method, make_tasks, run  # noqa: E402
from memret.incremental.data import ArrayImages, LabelledData, load_dataset  # noqa: E402
from conftest import blobs as feature_blobs, colour_blobs  # noqa: E402

FAST = TrainConfig(epochs=3, batch_size=64, mtn_width=64, mtn_layers=1, mtn_heads=2, k=5)


def blobs(n_per: int, n_classes: int, d: int = 24, seed: int = 0, spread: float = 3.0):
    return feature_blobs(n_per, n_classes, d, seed, spread)  # this file's blobs are 24-d by default


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


def test_mtn_training_never_sees_itself(monkeypatch):
    """Spy on the retrieval inside train_mtn: no training query gets its own exemplar among its neighbours."""
    import memret.incremental.mtn as M

    calls = []
    original = M.neighbours

    def spy(bank, X, k, exclude=None):
        idx, labels, sims = original(bank, X, k, exclude)
        calls.append((X.copy(), exclude, (torch.from_numpy(bank.features[idx.numpy()]), labels, sims)))
        return idx, labels, sims

    monkeypatch.setattr(M, "neighbours", spy)
    X, y = blobs(20, 4)
    tasks = make_tasks(y, y, 2)
    bank = ExemplarBank(X.shape[1], total=40, seed=0)  # the memory holds copies of most training samples
    m = make_method("mtn", X.shape[1], 4, bank, FAST, seed=0)
    for t in tasks:
        m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
    assert len(calls) == 2  # one retrieval per task, inside train_mtn
    assert len(calls[1][0]) > len(tasks[1].train_rows)  # the second task trains on its data + old exemplars
    for Xq, exclude, (feats, labels, _) in calls:
        assert exclude is not None
        # features are continuous: a neighbour equal to the query is the query's own exemplar
        own = (feats == torch.from_numpy(Xq)[:, None, :]).all(-1) & (labels >= 0)
        assert not own.any(), f"{int(own.any(1).sum())} queries saw themselves"
        assert (labels >= 0).all()  # every query still got k real neighbours
    # and the spy would see it: without leave-one-out most queries find themselves
    feats, labels, _ = M.retrieve(bank, X[tasks[1].train_rows], FAST.k)
    assert (feats == torch.from_numpy(X[tasks[1].train_rows])[:, None, :]).all(-1).any(1).float().mean() > 0.3


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
    if name == "mtn":  # the transformer itself learned, and the prediction is classifier + transformer
        from memret.incremental.mtn import mtn_scores

        alone = mtn_scores(m.mtn, m.bank, Xte, FAST.k)
        assert (alone.argmax(1) == yte).mean() > 0.5  # chance: 1/6
        with torch.no_grad():
            clf = m.clf(torch.from_numpy(Xte)).numpy()
        np.testing.assert_allclose(m.scores(Xte), clf + alone, rtol=1e-5, atol=1e-5)
        assert np.abs(alone).max() > 1e-3


@pytest.mark.parametrize("name", ["finetune", "joint", "replay", "icarl", "knn", "mtn"])
def test_zero_queries_give_empty_scores(name):
    from memret.incremental.mtn import retrieve

    X, y = blobs(10, 4)
    bank = ExemplarBank(X.shape[1], total=20, seed=0)
    m = make_method(name, X.shape[1], 4, bank, FAST, seed=0)
    m.learn(0, X, y, np.arange(len(y)))
    out = m.scores(np.zeros((0, X.shape[1]), np.float32))
    assert out.shape == (0, 4)
    feats, labels, sims = retrieve(bank, np.zeros((0, X.shape[1]), np.float32), 5)
    assert feats.shape == (0, 5, X.shape[1]) and labels.shape == (0, 5) and sims.shape == (0, 5)


# ------------------------------------------------------------------ run(), resume, data
_tiny_images = colour_blobs


def tiny_data():
    xtr, ytr = _tiny_images(30, 4, 0)
    xte, yte = _tiny_images(10, 4, 1)
    return LabelledData("tiny", ArrayImages(xtr, ytr), ArrayImages(xte, yte), 4, 32)


def test_run_writes_results_and_plot(tmp_path):
    from PIL import Image

    from memret.incremental.methods import KNNMethod

    data = tiny_data()
    order = class_order(4, 1993)
    for i in np.flatnonzero(np.asarray(data.test.targets) == order[2])[:3]:
        data.test.targets[i] = order[3]  # mislabelled within task 1: its accuracy < 1, task 0's stays 1
    res = run(data, tasks=2, method=["knn", "mtn"], encoder="kmeans_patches",
              encoder_kw={"n_centroids": 16}, memory=20, out=tmp_path / "r", config=FAST, cache_dir=tmp_path)
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    # the file is the returned result, field for field
    assert saved == json.loads(json.dumps(res.to_json(), default=float))
    assert saved["class_order"] == class_order(4, 1993) and saved["classes_per_task"] == 2
    assert set(saved["methods"]) == {"knn", "mtn"}
    stream = make_tasks(data.train.targets, data.test.targets, 2, 1993)
    for name, r in res.methods.items():
        R = np.array(r.accuracy_matrix, dtype=float)
        assert R.shape == (2, 2) and np.isnan(R[0, 1]) and np.isfinite(R[np.tril_indices(2)]).all()
        # equal test sets per task: accuracy on all seen classes is the mean of the matrix's row
        np.testing.assert_allclose(r.seen_accuracy, [R[0, 0], R[1].mean()])
        assert r.summary["last_accuracy"] == pytest.approx(R[1].mean())
        assert r.summary["average_incremental_accuracy"] == pytest.approx((R[0, 0] + R[1].mean()) / 2)
        assert r.summary["forgetting"] == pytest.approx(max(R[0, 0] - R[1, 0], 0))
    # the knn row recomputed from the saved memory and the cached features
    (feat_file,) = tmp_path.glob("features-tiny-*.npz")
    Fte = np.load(feat_file)["test"]
    knn = KNNMethod(Fte.shape[1], 4, ExemplarBank.load(tmp_path / "r" / "ckpt" / "knn" / "bank"), FAST, 0)
    yte = np.asarray(data.test.targets)
    for j, task in enumerate(stream):
        pred = knn.scores(Fte[task.test_rows]).argmax(1)
        assert res.methods["knn"].accuracy_matrix[1][j] == pytest.approx((pred == yte[task.test_rows]).mean())
    R = np.array(res.methods["knn"].accuracy_matrix, dtype=float)
    assert R[1, 0] > 0.9 and R[1, 1] <= 0.85  # four colours: separable, but for the three wrong labels
    with Image.open(tmp_path / "r" / "accuracy.png") as im:
        im.load()
        assert im.format == "PNG" and im.size == (720, 480)  # 6x4 inches at 120 dpi
        assert len(set(im.convert("L").getdata())) > 10  # something was drawn
    assert "knn" in res.table() and "mtn" in res.table()


def test_feature_cache_is_keyed_by_the_data_not_its_name(tmp_path):
    kw = dict(tasks=2, method="knn", encoder="kmeans_patches", encoder_kw={"n_centroids": 8}, memory=20,
              config=FAST, plot=False, cache_dir=tmp_path / "cache")
    run(tiny_data(), out=tmp_path / "a", **kw)
    xtr, ytr = _tiny_images(30, 4, 7)   # other images, same name, sizes and labels
    xte, yte = _tiny_images(10, 4, 8)
    other = LabelledData("tiny", ArrayImages(xtr[:, :, ::-1].copy(), ytr), ArrayImages(xte, yte), 4, 32)
    shared = run(other, out=tmp_path / "b", **kw)
    alone = run(other, out=tmp_path / "c", **{**kw, "cache_dir": tmp_path / "fresh"})
    assert len(list((tmp_path / "cache").glob("features-tiny-*.npz"))) == 2
    assert shared.methods["knn"].accuracy_matrix == alone.methods["knn"].accuracy_matrix
    assert tiny_data().fingerprint() == tiny_data().fingerprint() != other.fingerprint()


def test_feature_cache_key_holds_the_encoders_defaults(tmp_path, monkeypatch):
    """A default left out or written out is one cache and a changed default another: a cache written before a
    default changed is not read back as the new default's features."""
    from memret.encoders.kmeans import PatchKMeansEncoder
    from memret.incremental.features import resolved_encoder_kw
    from memret.incremental.run import _run_id, feature_cache_file

    data = tiny_data()

    def key(kw, name="kmeans_patches"):
        return feature_cache_file(data, name, kw, 2, 1, 1, tmp_path, fingerprint="f")

    def run_id(kw):   # what resume matches a checkpoint by
        return _run_id("tiny", "f", 2, "kmeans_patches", kw, 20, None, "herding", 1, 1, FAST, False)

    before, before_id = key({"layers": 2}), run_id({"layers": 2})
    assert before == key({"layers": 2, "l2_centroids": 1600, "n_centroids": 400})
    assert before_id == run_id({"layers": 2, "l2_centroids": 1600}) != run_id({"layers": 2, "l2_centroids": 800})
    assert key({}) == key({"l2_centroids": 800})    # one layer: layer 2's keywords change nothing
    assert before != key({"layers": 2, "l2_centroids": 800})
    assert key({}, "patch_dictionary") == key({"n_patches": 1024, "stride": 2}, "patch_dictionary")
    assert key({}, "patch_dictionary") != key({"n_patches": 2048}, "patch_dictionary")
    d = PatchKMeansEncoder.__init__.__defaults__
    moved = tuple(800 if v == 1600 else v for v in d)       # l2_centroids' default back to 800
    assert sum(a != b for a, b in zip(d, moved)) == 1
    monkeypatch.setattr(PatchKMeansEncoder.__init__, "__defaults__", moved)
    assert key({"layers": 2}) == key({"layers": 2, "l2_centroids": 800}) != before
    assert run_id({"layers": 2}) == run_id({"layers": 2, "l2_centroids": 800}) != before_id
    assert resolved_encoder_kw("resnet8_cifar", {"width": 8}) == {"width": 8}   # others: as given


class _FixedEncoder(torch.nn.Module):
    """A frozen, seed-independent encoder: per-channel means of 4x4 cells (48-d)."""

    embed_dim = 48

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def test_init_seed_keeps_the_class_order_and_changes_the_init(tmp_path):
    kw = dict(tasks=2, method=["replay", "mtn"], memory=20, config=FAST, plot=False, cache_dir=tmp_path)
    fixed = _FixedEncoder()  # the same features whatever the seeds: differences come from the methods
    runs = {s: run(tiny_data(), seed=1993, init_seed=s, encoder=fixed, out=tmp_path / f"i{s}", **kw) for s in (0, 1)}
    default = run(tiny_data(), seed=1993, encoder=fixed, out=tmp_path / "default", **kw)
    same = run(tiny_data(), seed=1993, init_seed=1993, encoder=fixed, out=tmp_path / "same", **kw)
    other_order = run(tiny_data(), seed=1, init_seed=0, encoder=fixed, out=tmp_path / "order", **kw)
    assert runs[0].class_order == runs[1].class_order == default.class_order == class_order(4, 1993)
    assert other_order.class_order == class_order(4, 1) != class_order(4, 1993)
    assert (runs[0].seed, runs[0].init_seed, default.init_seed) == (1993, 0, 1993)

    def state(d, method):
        return torch.load(tmp_path / d / "ckpt" / method / "method.pt", weights_only=True)

    for m in ("replay", "mtn"):
        assert not torch.equal(state("i0", m)["clf"]["weight"], state("i1", m)["clf"]["weight"]), m  # other init
        assert torch.equal(state("default", m)["clf"]["weight"], state("same", m)["clf"]["weight"])  # = seed
    a, b = state("i0", "mtn")["mtn"], state("i1", "mtn")["mtn"]
    assert not torch.equal(a["q_proj.weight"], b["q_proj.weight"])
    assert default.methods["mtn"].accuracy_matrix == same.methods["mtn"].accuracy_matrix
    # the k-means encoder's fit is an initialisation too: each init_seed has its own cached features
    km = dict(tasks=2, method="knn", encoder="kmeans_patches", encoder_kw={"n_centroids": 8}, memory=20,
              config=FAST, plot=False, cache_dir=tmp_path / "km")
    for s in (0, 1):
        run(tiny_data(), init_seed=s, out=tmp_path / f"km{s}", **km)
    f0, f1 = (np.load(f)["train"] for f in sorted((tmp_path / "km").glob("features-tiny-*.npz")))
    assert f0.shape == f1.shape and not np.array_equal(f0, f1)


def test_modules_stay_small_and_import_without_cycles():
    """House limits for memret/incremental: <= 400 lines a module, no import cycle, no private cross-module names."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "memret" / "incremental"
    graph = {}
    for f in sorted(pkg.glob("*.py")):
        src = f.read_text()
        assert src.count("\n") <= 400, f"{f.name}: {src.count(chr(10))} lines"
        deps = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memret.incremental."):
                deps.add(node.module.rsplit(".", 1)[1])
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{f.name} imports private {private} from {node.module}"
        graph[f.stem] = deps

    def visit(mod, path):
        assert mod not in path, f"import cycle: {' -> '.join(path + [mod])}"
        for dep in graph.get(mod, ()):
            visit(dep, path + [mod])

    for mod in graph:
        visit(mod, [])


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
    # four flat colours, 3 validation images each: a working pipeline separates them (chance: 0.25)
    assert res.methods["icarl"].summary["last_accuracy"] > 0.8
    assert res.methods["mtn"].summary["last_accuracy"] > 0.5  # 3 steps a task (12 images, batch 64): barely trained


def test_replay_draws_from_the_whole_old_memory_then_stores_the_task(monkeypatch):
    """ER order (Avalanche's ReplayPlugin too): train with the full old memory, then make room for the new task."""
    import memret.incremental.training as M

    sizes = []
    original = M.MemoryBatches.__init__

    def spy(self, X, y, gen):
        sizes.append(len(y))
        original(self, X, y, gen)

    monkeypatch.setattr(M.MemoryBatches, "__init__", spy)
    X, y = blobs(40, 6, seed=1)
    tasks = make_tasks(y, y, 3)
    bank = ExemplarBank(X.shape[1], total=60, seed=0)
    m = make_method("replay", X.shape[1], 6, bank, FAST, seed=0)
    for t in tasks:
        m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
        assert set(bank.classes.tolist()) == set(m.seen)
    assert sizes == [0, 60, 60]  # not [0, 30, 40]: the old classes keep their quota while replayed
