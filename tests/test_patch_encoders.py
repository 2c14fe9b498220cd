"""Label-free patch encoders: shapes, determinism, exact k-nearest counts, and fitting on the given images only."""

import pytest
import torch
import torch.nn.functional as F

from memret.encoders.kmeans import PatchKMeansEncoder
from memret.encoders.patches import PatchDictionaryEncoder


def _images(n=24, side=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, side // 3, side // 3, generator=g)  # smooth-ish images: patches are correlated
    return torch.nn.functional.interpolate(base, size=side, mode="bilinear", align_corners=False) \
        + 0.1 * torch.randn(n, 3, side, side, generator=g)


def _small(**kw):
    return PatchDictionaryEncoder(**{"n_patches": 40, "patch": 4, "grid": 2, "batch": 5, **kw})


def test_patch_dictionary_shapes_and_pooled_indicator_mass():
    enc = _small().fit(_images(), seed=0)
    assert enc.embed_dim == 2 * 40 * 4
    x = _images(7, seed=1)
    assert enc(x).shape == (7, enc.embed_dim)
    assert enc.forward_features(x).shape == (7, 1, enc.embed_dim)
    ind = enc.indicators(x)                               # (B, L, 2, D): L = 9 * 9 positions
    assert ind.shape == (7, 81, 2, 40)
    pooled = enc._pooled(x).view(7, 2, 4, 40)             # (B, sign, cell, D)
    grid_ind = ind.float().view(7, 9, 9, 2, 40)
    top_right = grid_ind[:, :4, 4:].mean((1, 2))          # cell (0, 1): rows 0-3, columns 4-8
    torch.testing.assert_close(pooled[:, :, 1], top_right)
    assert torch.all((pooled >= 0) & (pooled <= 1))


def test_exact_threshold_marks_exactly_k_neighbours_of_each_sign():
    enc = _small(threshold="exact", k_fraction=0.25).fit(_images(), seed=0)
    ind = enc.indicators(_images(4, seed=2))
    assert torch.all(ind.sum(-1) == enc.k)
    # the marked atoms are the k nearest in whitened space, computed directly
    x = _images(1, seed=3)
    wx = enc._whitened(x)[0, 0]                           # first position
    d_plus = ((enc.atoms - wx) ** 2).sum(1)
    d_minus = ((enc.atoms + wx) ** 2).sum(1)
    ind = enc.indicators(x)[0, 0]
    assert set(torch.nonzero(ind[0]).flatten().tolist()) == set(d_plus.argsort()[:enc.k].tolist())
    assert set(torch.nonzero(ind[1]).flatten().tolist()) == set(d_minus.argsort()[:enc.k].tolist())


def test_moment_threshold_agrees_with_the_exact_one_on_most_entries():
    imgs = _images(40)
    exact = _small(threshold="exact", n_patches=200).fit(imgs, seed=0)
    moment = _small(threshold="moment", n_patches=200)
    moment.load_state_dict(exact.state_dict())
    x = _images(6, seed=4)
    agree = (exact.indicators(x) == moment.indicators(x)).float().mean()
    assert agree > 0.9, agree
    assert abs(moment.indicators(x).float().mean() - exact.k / 200) < 0.05


def test_patch_dictionary_is_deterministic_and_fitted_only_on_the_given_images():
    a, b = _images(seed=0), _images(seed=5)
    e1, e2, e3 = _small().fit(a, seed=0), _small().fit(a, seed=0), _small().fit(a, seed=1)
    x = _images(3, seed=6)
    torch.testing.assert_close(e1(x), e2(x), rtol=0, atol=0)
    assert not torch.equal(e1.atoms, e3.atoms)
    # every atom, un-whitened, is a patch of the fitting images (and none of another set)
    raw = e1.atoms.double() @ torch.linalg.inv(e1.whiten.double())
    pats_a = e1._patches(a).reshape(-1, raw.shape[1]).double()
    pats_b = e1._patches(b).reshape(-1, raw.shape[1]).double()
    assert torch.cdist(raw, pats_a).min(1).values.max() < 1e-4
    assert torch.cdist(raw, pats_b).min(1).values.min() > 1e-3
    # encoding other images leaves the fitted state alone
    state = {k: v.clone() for k, v in e1.state_dict().items()}
    e1(b)
    assert all(torch.equal(state[k], v) for k, v in e1.state_dict().items())


def test_unfitted_patch_encoders_refuse_to_encode():
    with pytest.raises(RuntimeError, match="fit"):
        _small()(_images(2))
    with pytest.raises(RuntimeError, match="fit"):
        PatchKMeansEncoder(n_centroids=8)(_images(2))
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="pool"):
            PatchKMeansEncoder(n_centroids=8, pool=bad)


@pytest.mark.parametrize("pool", [2, 3])
@pytest.mark.parametrize("encoding", ["triangle", "soft"])
@pytest.mark.parametrize("side", [12, 13])  # an even and an odd number of patch positions per side
def test_kmeans_inference_path_equals_the_differentiable_one(side, encoding, pool):
    enc = PatchKMeansEncoder(n_centroids=8, patch=4, encoding=encoding, pool=pool).fit(_images(30), n_patches=2000,
                                                                                      seed=0)
    x = _images(5, side=side, seed=3).requires_grad_(True)
    with torch.no_grad():
        fast = enc(x)
    slow = enc(x)  # autograd on: the cdist + adaptive pooling path
    assert slow.requires_grad and not fast.requires_grad
    assert fast.shape == (5, pool ** 2 * enc.channels) == (5, enc.embed_dim)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-4)


def test_kmeans_pooled_windows_pool_override_equals_adaptive_pooling_of_the_map():
    """``_pooled_windows(pool=g)`` (what a second layer reads) is the activation map average-pooled over g x g
    adaptive cells, channel-major, whatever the encoder's own ``pool``."""
    enc = PatchKMeansEncoder(n_centroids=8, patch=4, encoding="soft").fit(_images(30), n_patches=2000, seed=0)
    x = _images(3, side=13, seed=5)  # 10 x 10 positions: 3 cells overlap
    amap = enc.activation_map(x).transpose(1, 2).reshape(3, enc.channels, 10, 10)
    for g in (3, 5):
        got = enc._pooled_windows(x, [(0, 0)], pool=g)[0]
        torch.testing.assert_close(got, F.adaptive_avg_pool2d(amap, g).flatten(1), rtol=1e-5, atol=1e-5)


def test_kmeans_patches_shapes_and_determinism():
    imgs = _images(30)
    e1 = PatchKMeansEncoder(n_centroids=8, patch=4).fit(imgs, n_patches=2000, seed=0)
    e2 = PatchKMeansEncoder(n_centroids=8, patch=4).fit(imgs, n_patches=2000, seed=0)
    x = _images(4, seed=7)
    assert e1(x).shape == (4, 32) and e1.embed_dim == 32
    torch.testing.assert_close(e1(x), e2(x))


def test_kmeans_soft_threshold_is_both_polarities_of_the_projections_on_unit_centroids():
    """encoding="soft" (Coates & Ng, ICML 2011): [max(0, d.w - a), max(0, -d.w - a)] per patch over unit-norm
    centroids d, quadrant-pooled: 8K features; a bad encoding name is refused."""
    imgs = _images(30)
    enc = PatchKMeansEncoder(n_centroids=8, patch=4, encoding="soft", alpha=0.3).fit(imgs, n_patches=2000, seed=0)
    assert enc.embed_dim == 64 and enc(imgs[:3]).shape == (3, 64)
    torch.testing.assert_close(enc.centroids.norm(dim=1), torch.ones(8))
    x = _images(2, seed=5)
    w = (enc._patches(x) - enc.mean) @ enc.whiten                     # (B, L, P), by hand
    z = torch.einsum("blp,kp->blk", w, enc.centroids)
    act = torch.cat([(z - 0.3).clamp(min=0), (-z - 0.3).clamp(min=0)], -1)
    torch.testing.assert_close(enc.activation_map(x), act)
    grid = act.view(2, 9, 9, 16)                                       # 9 x 9 positions; quadrant (1, 0) = rows 4-8, cols 0-4
    pooled = (grid[:, 4:, :5].mean((1, 2)) - enc.feat_mean.view(16, 4)[:, 2]) / enc.feat_std.view(16, 4)[:, 2]
    with torch.no_grad():
        torch.testing.assert_close(enc(x).view(2, 16, 4)[:, :, 2], pooled, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="encoding"):
        PatchKMeansEncoder(encoding="hard")


def test_kmeans_fit_patches_sets_the_sample_the_fit_draws(monkeypatch):
    """``fit_patches`` (a constructor keyword, so run(encoder_kw=...) reaches it) is how many patches k-means sees."""
    import faiss

    seen = []
    train = faiss.Kmeans.train
    monkeypatch.setattr(faiss.Kmeans, "train", lambda self, x, *a, **k: (seen.append(len(x)), train(self, x, *a, **k))[1])
    PatchKMeansEncoder(n_centroids=8, patch=4, fit_patches=900).fit(_images(30), seed=0)
    PatchKMeansEncoder(n_centroids=8, patch=4, fit_patches=900).fit(_images(30), n_patches=300, seed=0)
    assert seen == [900, 300]   # 30 per image by default here; the call's n_patches wins


def test_kmeans_shifted_views_from_one_padded_map_equal_encoding_each_translated_image():
    """forward_shifted / extract_views: every translated view from one activation map of the padded image equals
    encoding that view's image on its own (TrainConfig.shift_views' 2.3x cheaper path)."""
    import numpy as np

    from memret.incremental.data import ArrayImages
    from memret.incremental.features import extract_features, extract_views, view

    x = torch.rand(12, 3, 20, 17, generator=torch.Generator().manual_seed(3))
    enc = PatchKMeansEncoder(n_centroids=24, patch=5).fit(x, seed=0)
    shifts = [(2, 2), (0, 0), (-2, -2), (1, -3)]
    soft = PatchKMeansEncoder(n_centroids=24, patch=5, encoding="soft").fit(x, seed=0)
    fine = PatchKMeansEncoder(n_centroids=24, patch=5, encoding="soft", pool=3).fit(x, seed=0)
    with torch.no_grad():
        for e in (enc, soft, fine):
            for s, f in zip(shifts, e.forward_shifted(x, shifts)):
                torch.testing.assert_close(f, e(view(x, shift=s)), rtol=1e-4, atol=1e-4)
    data = ArrayImages((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), np.zeros(12, np.int64))
    both = extract_views(enc, data, shifts, batch=5, flip=True)
    for s, f in zip(shifts, both):
        np.testing.assert_allclose(f, extract_features(enc, data, batch=5, flip=True, shift=s), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="smaller"):
        enc.forward_shifted(x, [(17, 0)])


def _two_layer(**kw):
    return PatchKMeansEncoder(**{"n_centroids": 8, "patch": 4, "encoding": "soft", "layers": 2, "l2_centroids": 6,
                                 "l2_rank": 5, "l2_cell": 2, **kw})


def test_kmeans_second_layer_shapes_blocks_and_determinism():
    """layers=2: layer 1's features then layer 2's (feature_blocks), layer 1's block the one-layer encoder's own;
    two fits on the same images and seed give the same encoder."""
    imgs = _images(30, side=16)
    e1, e2 = _two_layer().fit(imgs, n_patches=2000, seed=0), _two_layer().fit(imgs, n_patches=2000, seed=0)
    assert e1.feature_blocks == (4 * 16, 4 * 12) and e1.embed_dim == 112
    x = _images(4, side=16, seed=7)
    with torch.no_grad():
        f = e1(x)
        assert f.shape == (4, 112) and e1.forward_features(x).shape == (4, 1, 112)
        torch.testing.assert_close(f, e2(x))
        one = PatchKMeansEncoder(n_centroids=8, patch=4, encoding="soft").fit(imgs, n_patches=2000, seed=0)
        torch.testing.assert_close(f[:, :64], one(x))                     # layer 2 leaves layer 1 as it was
        assert float(f[:, 64:].std()) > 0.1                                # layer 2's block is not constant
    # the fitted images are all it saw: other images, another dictionary
    other = _two_layer().fit(_images(30, side=16, seed=9), n_patches=2000, seed=0)
    assert not torch.allclose(other.l2_weight, e1.l2_weight)


def test_kmeans_second_layer_by_hand():
    """Layer 2 is, from the activation map: cell means, the whitened PCA, l2_patch x l2_patch patches, projections
    on the whitened unit centroids thresholded both ways, the pool grid's means, standardised."""
    enc = _two_layer().fit(_images(30, side=15), n_patches=2000, seed=0)
    x = _images(3, side=15, seed=4)                                        # 12 x 12 positions -> 6 x 6 cells
    amap = enc.activation_map(x).transpose(1, 2).reshape(3, enc.channels, 12, 12)
    cells = F.avg_pool2d(amap, 2).permute(0, 2, 3, 1)
    red = (cells - enc.l2_mean) @ enc.l2_proj                              # (3, 6, 6, 5)
    pats = F.unfold(red.permute(0, 3, 1, 2), 3).transpose(1, 2)            # (3, 16, 45)
    z = pats @ enc.l2_weight + enc.l2_bias
    act = torch.cat([(z - enc.alpha).clamp(min=0), (-z - enc.alpha).clamp(min=0)], -1)  # (3, 16, 12)
    pooled = act.transpose(1, 2).reshape(3, 12, 4, 4).unflatten(2, (2, 2)).unflatten(4, (2, 2)).mean((3, 5))
    want = (pooled.flatten(1) - enc.feat_mean[64:]) / enc.feat_std[64:]
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[:, 64:], want, rtol=1e-4, atol=1e-4)
    # the PCA whitens: the fitted images' reduced cell vectors have about unit variance along each component
    with torch.no_grad():
        fit_cells = enc._pooled_windows(_images(30, side=15), [(0, 0)], cell=2)[1][0]
    var = enc._reduced(fit_cells).reshape(-1, 5).var(0)
    assert bool(((var > 0.5) & (var < 1.05)).all()), var


@pytest.mark.parametrize("side", [15, 16])   # cells of 2 divide 12 x 12 positions (reshape-sum), not 13 (adaptive)
def test_kmeans_second_layer_fast_paths_equal_the_differentiable_one_and_each_translated_view(side):
    x = _images(6, side=side, seed=2)
    enc = _two_layer().fit(_images(30, side=side), n_patches=2000, seed=0)
    with torch.no_grad():
        fast = enc(x)
    slow = enc(x.clone().requires_grad_(True))
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-4)
    from memret.incremental.features import view

    shifts = [(0, 0), (1, 1), (-1, -1)]   # windows of the padded image's map
    with torch.no_grad():
        for s, f in zip(shifts, enc.forward_shifted(x, shifts)):
            torch.testing.assert_close(f, enc(view(x, shift=s)), rtol=1e-4, atol=1e-4)


def test_kmeans_second_layer_round_trips_its_state_and_refuses_bad_settings():
    enc = _two_layer().fit(_images(30, side=16), n_patches=2000, seed=0)
    fresh = _two_layer()
    fresh.load_state_dict(enc.state_dict())
    x = _images(2, side=16, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), enc(x))
    for bad in ({"layers": 3}, {"layers": True}, {"layers": 2.0}, {"l2_centroids": 0}, {"l2_rank": 2.5},
                {"l2_cell": True}, {"l2_rank": 17}, {"l2_eps_pca": 0.0}):   # 17 > the 16 soft channels
        with pytest.raises(ValueError, match=next(iter(bad))):
            _two_layer(**bad)
    for cell in (6, 20):   # 13 // 6 = 2 cells a side < 3; 13 // 20 = none
        enc = _two_layer(l2_cell=cell)
        with pytest.raises(ValueError, match="too small"):
            enc.fit(_images(30, side=16), n_patches=2000, seed=0)
        assert not bool(enc.fitted)
