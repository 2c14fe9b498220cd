"""Issue 12 in ``memret.incremental``: the analytic methods (ranpac, slda, mtn_ranpac) in run(), the
patch-dictionary encoder through the registry (fitted on the first task only), replay with a balanced loss."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")

from memret import ExemplarBank  # noqa: E402
from memret.heads import RanPAC  # noqa: E402
from memret.incremental import TrainConfig, make_method, make_tasks, run  # noqa: E402
from memret.incremental.analytic import holdout_rows  # noqa: E402
from memret.incremental.data import ArrayImages, LabelledData  # noqa: E402
from conftest import blobs, colour_blobs  # noqa: E402

FAST = TrainConfig(epochs=2, batch_size=64, mtn_width=32, mtn_layers=1, mtn_heads=2, k=5, ranpac_projection=48,
                   slda_shrinkages=(1e-2, 0.5))


def tiny_images(n_per, n_classes=4, seed=0):
    return colour_blobs(n_per, n_classes, seed, noise=40.0)


def tiny_data():
    xtr, ytr = tiny_images(20, 4, 0)
    xte, yte = tiny_images(8, 4, 1)
    return LabelledData("tiny12", ArrayImages(xtr, ytr), ArrayImages(xte, yte), 4, 32)


class FixedProjection(torch.nn.Module):
    """A frozen encoder that needs no fitting: the same features whatever the class order."""

    embed_dim = 24

    def __init__(self):
        super().__init__()
        self.w = torch.randn(3 * 32 * 32, self.embed_dim, generator=torch.Generator().manual_seed(0)) / 55

    def forward(self, x):
        return x.flatten(1) @ self.w


def test_holdout_rows_depend_on_the_row_only():
    rows = np.arange(5000)
    h = holdout_rows(rows, seed=3)
    perm = np.random.default_rng(0).permutation(rows)
    assert np.array_equal(holdout_rows(perm, seed=3), h[perm])          # order and task split do not matter
    assert 0.17 < h.mean() < 0.23                                        # ~20% held out
    assert not np.array_equal(holdout_rows(rows, seed=4), h)             # a different init_seed, another split


def test_run_ranpac_head_is_the_joint_ridge_head_whatever_the_class_order(tmp_path):
    """run(method="ranpac") for two class orders: one final head, equal to the ridge fitted on all the data."""
    enc = FixedProjection()
    heads = []
    for order in (1, 2):
        res = run(tiny_data(), tasks=2, method=["ranpac", "slda"], encoder=enc, memory=12, seed=order, init_seed=7,
                  out=tmp_path / f"o{order}", config=FAST, plot=False, cache_dir=tmp_path)
        assert res.class_order != [] and res.methods["ranpac"].summary["last_accuracy"] > 0.9
        assert res.methods["slda"].summary["last_accuracy"] > 0.9
        # each task's choices reach results.json: the ridge and the shrinkage, re-chosen after every task
        saved = json.loads((tmp_path / f"o{order}" / "results.json").read_text())["methods"]
        assert [set(i) for i in saved["ranpac"]["task_info"]] == [{"ridge"}] * 2
        assert all(i["shrinkage"] in FAST.slda_shrinkages for i in saved["slda"]["task_info"])
        state = torch.load(tmp_path / f"o{order}" / "ckpt" / "ranpac" / "method.pt", weights_only=True)
        heads.append(state["head"])
        # the bank filled as for every method (the table's memory column), though ranpac never reads it
        assert len(json.loads((tmp_path / f"o{order}" / "ckpt" / "ranpac" / "progress.json").read_text())["R"]) == 2
        assert (tmp_path / f"o{order}" / "ckpt" / "ranpac" / "bank").exists()
    orders = [json.loads((tmp_path / f"o{o}" / "results.json").read_text())["class_order"] for o in (1, 2)]
    assert orders[0] != orders[1]
    a, b = heads
    assert float(a["lam"]) == float(b["lam"])
    torch.testing.assert_close(a["weight"], b["weight"], rtol=1e-6, atol=1e-6)
    # the joint ridge solution on all the training features
    data = tiny_data()
    X = enc(data.train.batch(np.arange(len(data.train.targets)))).numpy()
    y = np.asarray(data.train.targets)
    H = torch.relu(torch.from_numpy(X).double() @ a["W_rand"].double())
    Y = torch.nn.functional.one_hot(torch.from_numpy(y), 4).double()
    A = H.T @ H + float(a["lam"]) * torch.eye(H.shape[1], dtype=torch.float64)
    W = torch.linalg.solve(A, H.T @ Y).float()
    torch.testing.assert_close(a["weight"], W, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ranpac", "slda"])
def test_analytic_methods_fill_the_bank_but_never_read_it(name):
    X, y = blobs(30, 6, seed=1)
    Xte, yte = blobs(10, 6, seed=2)
    bank = ExemplarBank(X.shape[1], total=30, seed=0)
    m = make_method(name, X.shape[1], 6, bank, FAST, seed=0)
    assert not m.uses_memory
    out = {}
    for t in make_tasks(y, yte, 3):
        out = m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows) or out
    assert len(bank) == 30 and set(bank.classes) == set(range(6))
    before = m.scores(Xte)
    assert (before.argmax(1) == yte).mean() > 0.9
    bank.replace_features(np.random.default_rng(0).normal(size=(len(bank), X.shape[1])).astype(np.float32))
    np.testing.assert_array_equal(m.scores(Xte), before)
    if name == "slda":  # the shrinkage chosen on task 1's held-out rows, then kept
        assert m.model.shrinkage in FAST.slda_shrinkages
    assert m.scores(np.zeros((0, X.shape[1]), np.float32)).shape == (0, 6)


@pytest.mark.parametrize("head", ["ranpac", "slda"])
def test_mtn_over_an_analytic_head_fuses_its_scaled_scores_with_the_mtn(head):
    from memret.incremental.mtn import mtn_scores

    X, y = blobs(30, 6, seed=1)
    Xte, yte = blobs(10, 6, seed=2)
    bank = ExemplarBank(X.shape[1], total=30, seed=0)
    m = make_method(f"mtn_{head}", X.shape[1], 6, bank, FAST, seed=0)
    assert m.name == f"mtn_{head}"
    alone = make_method(head, X.shape[1], 6, ExemplarBank(X.shape[1], total=30, seed=0), FAST, seed=0)
    for t in make_tasks(y, yte, 3):
        m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
        alone.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
    assert len(bank) == 30                                               # the MTN's memory
    base = alone.scores(Xte)
    np.testing.assert_allclose(m.head_method.scores(Xte), base, rtol=1e-6)   # the same head as ``ranpac`` / ``slda``
    mtn = mtn_scores(m.mtn, bank, Xte, FAST.k)
    scale = float(m.scale.detach())
    assert scale != (FAST.ranpac_scale if head == "ranpac" else 1.0)     # the scale was learnt
    assert np.abs(mtn).max() > 1e-3
    np.testing.assert_allclose(m.scores(Xte), scale * base + mtn, rtol=1e-4, atol=1e-4)
    assert (m.scores(Xte).argmax(1) == yte).mean() > 0.9


def test_balanced_replay_weights_each_class_equally(monkeypatch):
    import memret.incremental.methods as M

    weights = []
    original = M.F.cross_entropy

    def spy(logits, target, weight=None, **kw):
        weights.append(weight)
        return original(logits, target, weight=weight, **kw)

    monkeypatch.setattr(M.F, "cross_entropy", spy)
    X, y = blobs(30, 4, seed=1)
    tasks = make_tasks(y, y, 2)
    for balanced in (False, True):
        weights.clear()
        cfg = TrainConfig(epochs=1, batch_size=64, balanced_replay=balanced)
        m = make_method("replay", X.shape[1], 4, ExemplarBank(X.shape[1], total=8, seed=0), cfg, seed=0)
        for t in tasks:
            m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
        w = weights[-1]
        if not balanced:
            assert w is None
            continue
        # task 2: 30 samples of each new class, 4 exemplars of each old one; weight ~ 1 / count
        old, new = tasks[0].classes, tasks[1].classes
        counts = np.zeros(4)
        counts[list(new)], counts[list(old)] = 30, 4
        np.testing.assert_allclose(w.numpy(), counts.sum() / counts / 4, rtol=1e-6)


def test_patch_dictionary_through_the_registry_is_fitted_on_the_first_task_only(tmp_path, monkeypatch):
    import memret.encoders as E

    enc = E.create("patch_dictionary")
    assert isinstance(enc, E.PatchDictionaryEncoder) and enc.embed_dim == 8192 and enc.stride == 2
    seen = []
    original = E.PatchDictionaryEncoder.fit

    def spy(self, images, **kw):
        seen.append(images.clone())
        return original(self, images, **kw)

    monkeypatch.setattr(E.PatchDictionaryEncoder, "fit", spy)
    data = tiny_data()
    res = run(data, tasks=2, method="icarl", encoder="patch_dictionary",
              encoder_kw={"n_patches": 16, "stride": 4, "batch": 16}, memory=12, seed=3, out=tmp_path / "run",
              config=FAST, plot=False, cache_dir=tmp_path)
    assert len(seen) == 1
    first = make_tasks(np.asarray(data.train.targets), np.asarray(data.test.targets), 2, 3)[0]
    assert sorted(res.class_order[:2]) == sorted(first.classes)
    expected = data.train.batch(np.sort(first.train_rows))
    assert seen[0].shape == expected.shape and torch.equal(seen[0], expected)   # exactly task 1's images
    assert res.methods["icarl"].summary["last_accuracy"] > 0.5   # chance: 0.25


@pytest.mark.parametrize("name", ["mtn", "mtn_ranpac", "mtn_slda"])
def test_wide_features_reach_the_transformer_through_a_fixed_projection(name):
    from dataclasses import replace

    from memret.incremental.mtn import input_projection, mtn_scores

    X, y = blobs(30, 6, d=32, seed=1)
    Xte, yte = blobs(10, 6, d=32, seed=2)
    cfg = replace(FAST, mtn_input_dim=12)
    assert input_projection(32, FAST, 0) is None and input_projection(32, cfg, 0).shape == (32, 12)
    m = make_method(name, 32, 6, ExemplarBank(32, total=30, seed=0), cfg, seed=0)
    assert m.mtn.q_proj.in_features == 12 and m.mtn.m_proj.in_features == 12
    for t in make_tasks(y, yte, 3):
        m.learn(t.index, X[t.train_rows], y[t.train_rows], t.train_rows)
    alone = mtn_scores(m.mtn, m.bank, Xte, cfg.k, proj=m.proj)
    assert (alone.argmax(1) == yte).mean() > 0.3                       # the transformer learnt (chance 1/6)
    assert (m.scores(Xte).argmax(1) == yte).mean() > 0.5                  # chance: 1/6


def test_imagenet1k_default_encoder_is_the_patch_dictionary_at_stride_4(tmp_path, monkeypatch):
    """run("imagenet1k") constructs with its default encoder (224-pixel images: patch_dictionary, stride 4)."""
    from PIL import Image

    import memret.encoders as E

    img, y = tiny_images(4, 4, 0)
    for split, (ims, ys) in {"train": (img, y), "val": (img[::2], y[::2])}.items():
        for i, (im, c) in enumerate(zip(ims, ys)):
            d = tmp_path / "imnet" / split / f"n0000{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(d / f"{i}.JPEG")
    built = []
    original = E.create

    def spy(name, **kw):
        built.append((name, kw))
        return original(name, **{**kw, "n_patches": 32})  # a small dictionary keeps the test fast

    monkeypatch.setattr(E, "create", spy)
    res = run("imagenet1k", tasks=2, root=tmp_path / "imnet", method="icarl", out=tmp_path / "run", config=FAST,
              cache_dir=tmp_path, plot=False)
    # that one encoder, three times: unfitted for the run id's and the feature cache's keys (hparams), then fitted
    assert built == [("patch_dictionary", {"stride": 4})] * 3
    assert res.encoder == "patch_dictionary (frozen)" and res.memory == "20/class"
    (f,) = tmp_path.glob("features-imagenet1k-*.npz")
    assert np.load(f)["train"].shape == (16, 2 * 32 * 4)
    assert res.methods["icarl"].summary["last_accuracy"] > 0.5  # four colours (chance 0.25)


def test_mirror_views_make_every_feature_the_mean_of_the_image_and_its_mirror(tmp_path):
    """TrainConfig(mirror_views=True): every method sees, for train and test images alike, the mean of the image's
    and its mirror's features (cached beside the features); SLDA's final head is the joint head on them."""
    from dataclasses import replace

    from memret.heads import SLDA

    enc, cfg = FixedProjection(), replace(FAST, mirror_views=True)
    res = run(tiny_data(), tasks=2, method="slda", encoder=enc, memory=12, seed=1, init_seed=7,
              out=tmp_path / "run", config=cfg, plot=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*-hflip.npz"))) == 1   # the mirrors' features are cached too
    data = tiny_data()
    with torch.no_grad():
        imgs = [d.batch(np.arange(len(d.targets))) for d in (data.train, data.test)]
        X, T = [((enc(x) + enc(x.flip(-1))) / 2).numpy() for x in imgs]
    y, yte = np.asarray(data.train.targets), np.asarray(data.test.targets)
    ref = SLDA(4, shrinkage="auto", shrinkages=cfg.slda_shrinkages).fit_task(
        X, y, holdout=holdout_rows(np.arange(len(y)), 7))
    head = torch.load(tmp_path / "run" / "ckpt" / "slda" / "method.pt", weights_only=True)["head"]
    assert float(head["shrinkage"]) == ref.shrinkage
    torch.testing.assert_close(head["weight"], ref.weight, rtol=1e-4, atol=1e-4)
    assert res.methods["slda"].summary["last_accuracy"] == pytest.approx((ref.predict(T) == yte).mean())
    bank = ExemplarBank.load(tmp_path / "run" / "ckpt" / "slda" / "bank")   # what the memory methods read
    np.testing.assert_allclose(bank.features, X[bank.refs], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mirror_views"):
        run(tiny_data(), tasks=2, method="slda", encoder="resnet32_cifar", train_encoder=True, config=cfg,
            out=tmp_path / "t", plot=False, cache_dir=tmp_path)


def test_view_translates_with_a_reflected_border_after_the_mirror():
    from memret.incremental.features import view

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    for dx, dy in [(2, 1), (-1, -2), (0, 3)]:
        v = view(x, shift=(dx, dy))
        assert v.shape == x.shape
        H, W = x.shape[-2:]
        for i in range(H):
            for j in range(W):
                si, sj = i - dy, j - dx                 # the source pixel, reflected at the border
                si = -si if si < 0 else (2 * (H - 1) - si if si >= H else si)
                sj = -sj if sj < 0 else (2 * (W - 1) - sj if sj >= W else sj)
                assert torch.equal(v[..., i, j], x[..., si, sj]), (dx, dy, i, j)
    torch.testing.assert_close(view(x, flip=True, shift=(1, 1)), view(x.flip(-1), shift=(1, 1)), rtol=0, atol=0)
    assert torch.equal(view(x), x)
    with pytest.raises(ValueError, match="smaller"):
        view(x, shift=(6, 0))


def test_shift_views_make_every_feature_the_mean_over_the_translated_and_mirrored_views(tmp_path):
    """TrainConfig(shift_views=s) with mirror_views: the feature is the mean of six views (the image, its mirror,
    both translated by (s, s) and by (-s, -s)), each cached; SLDA's final head is the joint head on them."""
    from dataclasses import replace

    from memret.heads import SLDA
    from memret.incremental.features import view

    enc, cfg = FixedProjection(), replace(FAST, mirror_views=True, shift_views=1)
    res = run(tiny_data(), tasks=2, method="slda", encoder=enc, memory=12, seed=1, init_seed=7,
              out=tmp_path / "run", config=cfg, plot=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.npz"))) == 6
    data = tiny_data()
    with torch.no_grad():
        imgs = [d.batch(np.arange(len(d.targets))) for d in (data.train, data.test)]
        X, T = [(sum(enc(view(x, f, (s, s))) for f in (False, True) for s in (0, 1, -1)) / 6).numpy() for x in imgs]
    y, yte = np.asarray(data.train.targets), np.asarray(data.test.targets)
    ref = SLDA(4, shrinkage="auto", shrinkages=cfg.slda_shrinkages).fit_task(
        X, y, holdout=holdout_rows(np.arange(len(y)), 7))
    head = torch.load(tmp_path / "run" / "ckpt" / "slda" / "method.pt", weights_only=True)["head"]
    torch.testing.assert_close(head["weight"], ref.weight, rtol=1e-4, atol=1e-4)
    assert res.methods["slda"].summary["last_accuracy"] == pytest.approx((ref.predict(T) == yte).mean())
    with pytest.raises(ValueError, match="shift_views"):
        run(tiny_data(), tasks=2, method="slda", encoder="resnet32_cifar", train_encoder=True,
            config=replace(FAST, shift_views=2), out=tmp_path / "t", plot=False, cache_dir=tmp_path)


def test_mean_views_sums_the_views_as_cached_views_reads_them(tmp_path, monkeypatch):
    """mean_views (what run() reads with mirror_views / shift_views) is the mean of cached_views' six views,
    both when it encodes and caches them and when it reads them back (a registry encoder: the cache is used)."""
    import memret.incremental.views as V
    from memret.incremental.run import cached_views, feature_cache_file, mean_views

    on_disk = []
    real = V._disk_array
    monkeypatch.setattr(V, "_disk_array", lambda folder, shape: on_disk.append(shape) or real(folder, shape))
    data = tiny_data()
    kw = {"n_centroids": 4, "patch": 3, "fit_patches": 500, "encoding": "soft"}
    first = make_tasks(data.train.targets, data.test.targets, 2, 1)[0]
    f = feature_cache_file(data, "kmeans_patches", kw, 2, 1, 7, tmp_path)
    encoded = mean_views(data, "kmeans_patches", kw, first, 7, f, mirror=True, shift=1)
    assert len(list(tmp_path.glob("features-*.npz"))) == 6
    views = cached_views(data, "kmeans_patches", kw, first, 7, f, mirror=True, shift=1)   # read from the cache
    assert len(views) == 6 and views[0][0].shape == (len(data.train.targets), 32)
    read = mean_views(data, "kmeans_patches", kw, first, 7, f, mirror=True, shift=1)
    for i in (0, 1):
        expect = sum(v[i] for v in views) / 6
        np.testing.assert_allclose(encoded[i], expect, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(read[i], expect, rtol=1e-5, atol=1e-6)
        assert not np.allclose(views[0][i], expect, atol=1e-3)   # the views differ: the mean is not one of them
    # each flip's three encoded views (train and test) went through memmapped files beside the cache, not memory,
    # and no file is left behind
    assert len(on_disk) == 2 * 3 * 2 and {sh[0] for sh in on_disk} == {len(data.train.targets),
                                                                        len(data.test.targets)}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    on_disk.clear()
    unwritten = mean_views(data, "kmeans_patches", kw, first, 7, tmp_path / "none" / f.name, mirror=True, shift=1,
                           write=False)
    assert not (tmp_path / "none").exists()
    one = mean_views(data, "kmeans_patches", kw, first, 7, tmp_path / "one" / f.name)   # a single view, cached
    for i in (0, 1):
        np.testing.assert_allclose(unwritten[i], encoded[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one[i], views[0][i], rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [f.name]
    assert on_disk == []   # without the cache written, or with one view a flip, nothing goes through files


def test_extract_views_writes_into_the_arrays_alloc_gives():
    from memret.incremental.features import extract_views

    data, bufs = tiny_data(), {}
    enc = FixedProjection()

    def alloc(k, shape):
        bufs[k] = np.full(shape, np.nan, np.float32)
        return bufs[k]

    out = extract_views(enc, data.train, [(0, 0), (1, 1)], batch=7, alloc=alloc)
    assert [o is bufs[k] for k, o in enumerate(out)] == [True, True]
    np.testing.assert_allclose(out[0], extract_views(enc, data.train, [(0, 0)], batch=7)[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], extract_views(enc, data.train, [(1, 1)], batch=7)[0], rtol=1e-6)


def test_cli_passes_encoder_kw_and_mirror_views_to_run(monkeypatch):
    import importlib

    from memret.incremental.__main__ import main

    R = importlib.import_module("memret.incremental.run")   # the module (the package exports the function)

    calls = []
    monkeypatch.setattr(R, "run", lambda *a, **kw: calls.append(kw) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["--dataset", "cifar10", "--method", "slda", "--encoder", "kmeans_patches", "--encoder-kw",
              '{"n_centroids": 1600}', "--mirror-views", "true", "--shift-views", "2", "--checkpoint", "w.pt",
              "--slda-blocks", "12800,6400"])
    (kw,) = calls
    assert kw["encoder_kw"] == {"n_centroids": 1600, "checkpoint": "w.pt"}
    assert kw["config"] == TrainConfig(mirror_views=True, shift_views=2, slda_blocks=(12800, 6400))


def test_two_layer_kmeans_in_run_is_fitted_on_the_first_task_only_and_gets_one_slda_per_layer(tmp_path, monkeypatch):
    """kmeans_patches with layers=2 through run(): fitted once, on task 1's images only; slda and mtn_slda then
    hold one SLDA per feature block (layer 1's, layer 2's), each with its own shrinkage, unless the config says."""
    import memret.encoders as E
    from memret.heads import BlockSLDA
    from memret.incremental.features import encoder_blocks

    kw = {"n_centroids": 8, "encoding": "soft", "layers": 2, "l2_centroids": 5, "l2_rank": 4}
    assert encoder_blocks("kmeans_patches", kw) == (64, 40) and encoder_blocks("patch_dictionary", {}) is None
    seen = []
    original = E.PatchKMeansEncoder.fit
    monkeypatch.setattr(E.PatchKMeansEncoder, "fit", lambda self, images, **k: (seen.append(images.clone()),
                                                                                 original(self, images, **k))[1])
    made = []
    monkeypatch.setattr(BlockSLDA, "fit_task", lambda self, *a, _f=BlockSLDA.fit_task, **k: (made.append(self.blocks),
                                                                                            _f(self, *a, **k))[1])
    data = tiny_data()
    res = run(data, tasks=2, method=["slda", "mtn_slda"], encoder="kmeans_patches", encoder_kw=kw, memory=12, seed=3,
              out=tmp_path / "run", config=FAST, plot=False, cache_dir=tmp_path)
    first = make_tasks(np.asarray(data.train.targets), np.asarray(data.test.targets), 2, 3)[0]
    assert len(seen) == 1 and torch.equal(seen[0], data.train.batch(np.sort(first.train_rows)))
    assert made == [(64, 40)] * 4                                   # 2 methods x 2 tasks
    for name in ("slda", "mtn_slda"):
        info = res.methods[name].task_info
        assert all({"shrinkage", "shrinkage_1"} <= set(i) for i in info), info
        assert res.methods[name].summary["last_accuracy"] > 0.5     # chance: 0.25
    again = run(data, tasks=2, method=["slda", "mtn_slda"], encoder="kmeans_patches", encoder_kw=kw, memory=12, seed=3,
                out=tmp_path / "run", config=FAST, plot=False, cache_dir=tmp_path)   # resumes: nothing refitted
    assert len(made) == 4 and len(seen) == 1
    for name in ("slda", "mtn_slda"):
        assert again.methods[name].accuracy_matrix == res.methods[name].accuracy_matrix
        assert again.methods[name].task_info == res.methods[name].task_info
    one = run(data, tasks=2, method="slda", encoder="kmeans_patches", encoder_kw=kw, memory=12, seed=3,
              out=tmp_path / "one", config=replace_cfg(slda_blocks=(104,)), plot=False, cache_dir=tmp_path)
    assert "shrinkage_1" not in one.methods["slda"].task_info[0] and len(made) == 4   # one SLDA
    assert len(seen) == 1                                                          # the features were cached
    for blocks in ((60, 40), (100,)):
        with pytest.raises(ValueError, match="sum to"):
            run(data, tasks=2, method="slda", encoder="kmeans_patches", encoder_kw=kw, memory=12, seed=3,
                out=tmp_path / "bad", config=replace_cfg(slda_blocks=blocks), plot=False, cache_dir=tmp_path)
    for bad in ((), (64, 0), (64.0, 40), "64", (True, 40)):
        with pytest.raises(ValueError, match="slda_blocks"):
            TrainConfig(slda_blocks=bad)


def replace_cfg(**kw):
    from dataclasses import replace

    return replace(FAST, **kw)
