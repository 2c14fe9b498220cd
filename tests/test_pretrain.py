"""memret.pretrain: loss properties on hand-made tensors, EMA, multi-crop, a few steps lowering each loss,
exact resume, checkpoints the encoder registry loads, k-NN voting, DDP/FSDP equal to one process, the CLI.

Everything runs on 16x16 images with registry encoders built small (ViT-tiny at patch 4, ResNet-18 CIFAR).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

import memret.encoders as E  # noqa: E402
from memret.pretrain import (  # noqa: E402
    DINO, LOCA, MSN, CropSpec, LocaViews, MultiCrop, PretrainConfig, SwAV, UInt8Images, dino_loss, ema_update, knn_classify,
    loca_views, me_max, msn_views, pretrain, query_targets, sharpen, sinkhorn, swav_views, teacher_probs,
    updated_center,
)
from memret.pretrain.dino import dino_views  # noqa: E402
from memret.pretrain.views import crop, step_generator  # noqa: E402
from conftest import run_ranks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


VIT_KW = {"img_size": 16, "patch_size": 8, "dynamic_img_size": True}  # 4 tokens a global crop, 1 a local one


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return E.create("vit_tiny_cifar", **VIT_KW)


def blob_images(n: int = 64, size: int = 16, seed: int = 0) -> UInt8Images:
    """Coloured squares on noise, 4 classes (colour): enough structure for a loss to fall."""
    g = np.random.default_rng(seed)
    x = g.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    y = np.arange(n) % 4
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    for i in range(n):
        r, c = g.integers(0, size // 2, 2)
        x[i, r:r + size // 2, c:c + size // 2] = colours[y[i]]
    return UInt8Images(x, y)


def small_dino(encoder, **kw) -> DINO:
    return DINO(encoder, views=dino_views(16, 8, 2), out_dim=64, hidden=32, bottleneck=16, **kw)


def small(objective: str, encoder):
    """Each objective at test scale: 16-px views, 8-px local crops, small heads."""
    if objective == "dino":
        return small_dino(encoder, momentum_teacher=0.9)
    if objective == "msn":
        return MSN(encoder, views=msn_views(16, 8, 2), hidden=64, out_dim=32, n_prototypes=16, momentum_target=0.9)
    if objective == "loca":
        return LOCA(encoder, views=loca_views(16, 8, 2), out_dim=32, hidden=32, bottleneck=16, momentum_teacher=0.9)
    return SwAV(encoder, views=swav_views(16, 8, 2), hidden=64, out_dim=32, n_prototypes=16)


# ------------------------------------------------------------------ DINO loss properties
def test_centering_update_is_an_ema_of_batch_means():
    center = torch.tensor([[1.0, -1.0, 0.0]])
    t = torch.tensor([[2.0, 0.0, 4.0], [0.0, 2.0, 2.0]])
    new = updated_center(center, t, momentum=0.9)
    torch.testing.assert_close(new, 0.9 * center + 0.1 * torch.tensor([[1.0, 1.0, 3.0]]))


def test_centering_and_sharpening():
    t = torch.tensor([[3.0, 1.0, 0.0]])
    torch.testing.assert_close(teacher_probs(t, t, 0.04), torch.full((1, 3), 1 / 3))  # centred away: uniform
    sharp, soft = teacher_probs(t, torch.zeros(1, 3), 0.04), teacher_probs(t, torch.zeros(1, 3), 1.0)
    assert sharp.max() > soft.max() > 1 / 3


def test_dino_loss_is_the_cross_entropy_over_pairs_of_different_views():
    g = torch.Generator().manual_seed(0)
    V, G, B, K = 4, 2, 3, 5
    s, t, c = torch.randn(V * B, K, generator=g), torch.randn(G * B, K, generator=g), torch.randn(1, K, generator=g)
    got = dino_loss(s, t, c, 0.1, 0.04, V)
    want, n = 0.0, 0
    for i in range(G):
        q = torch.softmax((t[i * B:(i + 1) * B] - c) / 0.04, -1)
        for v in range(V):
            if v != i:
                want += -(q * torch.log_softmax(s[v * B:(v + 1) * B] / 0.1, -1)).sum(-1).mean()
                n += 1
    torch.testing.assert_close(got, want / n)
    # the student's view 0 only meets the teacher's view 1: changing the teacher's view 0 where the
    # student matches it exactly cannot help
    uniform = dino_loss(torch.zeros(V * B, K), torch.zeros(G * B, K), torch.zeros(1, K), 0.1, 0.04, V)
    torch.testing.assert_close(uniform, torch.tensor(math.log(K)))


def test_ema_update():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    teacher.register_buffer("stat", torch.ones(1))
    student.register_buffer("stat", torch.zeros(1))
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for k in ("weight", "bias"):
        torch.testing.assert_close(teacher.state_dict()[k], 0.9 * t0[k] + 0.1 * student.state_dict()[k])
    assert teacher.stat.item() == 1.0  # buffers are the teacher's own
    with pytest.raises(ValueError):
        ema_update(torch.nn.Linear(3, 3, bias=False), torch.nn.Sequential(), 0.5)


# ------------------------------------------------------------------ views
def test_multicrop_shapes_and_rank_slices():
    mc = MultiCrop([CropSpec(16, (0.4, 1.0), 2, blur=0.5, solarize=0.2), CropSpec(8, (0.05, 0.4), 6)])
    x = blob_images(6).batch(np.arange(6))
    views, boxes = mc(x, step_generator(0, 3))
    assert [tuple(v.shape) for v in views] == [(6, 3, 16, 16)] * 2 + [(6, 3, 8, 8)] * 6
    assert all(torch.isfinite(v).all() for v in views)
    b = torch.stack(boxes)
    assert (b >= 0).all() and (b <= 1).all() and (b[..., 2] > b[..., 0]).all()
    areas = (b[2:, :, 2] - b[2:, :, 0]) * (b[2:, :, 3] - b[2:, :, 1])
    assert areas.max() <= 0.4 + 1e-6
    part, pboxes = mc(x[2:4], step_generator(0, 3), n_total=6, offset=2)  # a rank's share of the same draw
    for v, p in zip(views, part):
        torch.testing.assert_close(p, v[2:4])
    torch.testing.assert_close(pboxes[0], boxes[0][2:4])


def test_crop_geometry():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(crop(x, whole, 4), x)
    torch.testing.assert_close(crop(x, whole, 4, torch.tensor([True])), x.flip(-1))
    top_right = crop(x, torch.tensor([[0.5, 0.0, 1.0, 0.5]]), 2)  # pixel centres land on pixel centres
    torch.testing.assert_close(top_right, x[:, :, :2, 2:])


# ------------------------------------------------------------------ MSN, SwAV, LOCA properties
def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 4, generator=g) * 2 - 1
    q = sinkhorn(torch.exp(scores / 0.05), n_iters=3)
    torch.testing.assert_close(q.sum(1), torch.ones(12, dtype=q.dtype))          # each sample: a distribution
    q = sinkhorn(torch.exp(scores / 0.05), n_iters=200)
    torch.testing.assert_close(q.sum(0), torch.full((4,), 3.0, dtype=q.dtype), atol=1e-3, rtol=0)  # B/K each
    skewed = torch.tensor([[0.9, 0.1]] * 4)  # everyone prefers prototype 0: Sinkhorn splits them evenly
    torch.testing.assert_close(sinkhorn(skewed, 100).sum(0), torch.tensor([2.0, 2.0]), atol=1e-3, rtol=0)


def test_me_max_sign_and_sharpening():
    K = 8
    assert abs(float(me_max(torch.full((5, K), 1 / K)))) < 1e-6                     # uniform mean: zero
    collapsed = torch.zeros(5, K)
    collapsed[:, 0] = 1
    torch.testing.assert_close(me_max(collapsed), torch.tensor(math.log(K)))         # one prototype: log K
    logits = torch.randn(6, K, generator=torch.Generator().manual_seed(1), requires_grad=True)
    me_max(torch.softmax(logits, 1)).backward()
    with torch.no_grad():  # a step against the gradient spreads the mean prediction: ME-MAX falls
        assert float(me_max(torch.softmax(logits - 0.5 * logits.grad, 1))) < float(me_max(torch.softmax(logits, 1)))
    p = torch.tensor([[0.5, 0.3, 0.2]])
    assert sharpen(p, 0.25).max() > p.max()
    torch.testing.assert_close(sharpen(p, 0.25).sum(1), torch.ones(1))


def test_msn_and_loca_need_a_vit():
    with pytest.raises(ValueError, match="ViT"):
        MSN(E.create("resnet32_cifar"))
    with pytest.raises(ValueError, match="ViT"):
        LOCA(E.create("resnet32_cifar"))


def test_loca_targets_are_the_true_positions():
    ref = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]])
    # query = top-right quarter of the reference, 2x2 patches; reference grid 4x4
    query = torch.tensor([[0.5, 0.0, 1.0, 0.5], [0.75, 0.5, 1.0, 0.75]])
    assert query_targets(ref, query, 2, 4).tolist() == [[2, 3, 6, 7], [2, 3, 6, 7]]
    # the whole pipeline: images that encode their own coordinates (red = x, green = y), no colour changes;
    # a query patch's centre colour must lie inside the reference cell its target names
    n, s = 6, 32
    ramp = (torch.arange(s) + 0.5) / s                                              # pixel centres' coordinates
    img = torch.stack([ramp.view(1, s).expand(s, s), ramp.view(s, 1).expand(s, s), torch.zeros(s, s)])
    images = (img.unsqueeze(0).expand(n, 3, s, s) * 255).round().to(torch.uint8)
    views_maker = LocaViews(CropSpec(32, (0.4, 1.0), jitter=0, grey=0), CropSpec(32, (0.3, 1.0), jitter=0, grey=0),
                            CropSpec(16, (0.05, 0.3), 2, jitter=0, grey=0))
    views, boxes = views_maker(images, step_generator(0, 1))
    mean, std = torch.tensor(views_maker.mean).view(1, 3, 1, 1), torch.tensor(views_maker.std).view(1, 3, 1, 1)
    ref_px, grid = views[0] * std + mean, 8                                        # reference at patch size 4
    for v, box in zip(views[1:], boxes[1:]):
        q_px, qg = v * std + mean, v.shape[-1] // 4
        target = query_targets(boxes[0], box, qg, grid)
        centres = torch.nn.functional.avg_pool2d(q_px, 4)[:, :2].flatten(2)       # (n, 2, qg*qg) patch means
        cells = torch.nn.functional.avg_pool2d(ref_px, 4)[:, :2].flatten(2)       # (n, 2, 64)
        picked = torch.gather(cells, 2, target.unsqueeze(1).expand(-1, 2, -1))
        cell_size = (boxes[0][:, 2:] - boxes[0][:, :2]) / grid                     # (n, 2) in image units
        err = (picked - centres).abs()
        assert (err <= cell_size.unsqueeze(-1) * 0.75 + 0.02).all(), float((err / cell_size.unsqueeze(-1)).max())


# ------------------------------------------------------------------ training
def _fixed_batch_loss(obj, images, step: int = 10_000) -> float:
    """The loss on fixed views of all ``images``, on a copy (forward passes move DINO's centre and BN stats)."""
    probe = copy.deepcopy(obj).train()
    gen = step_generator(99, step)
    views, boxes = probe.views(images.batch(np.arange(len(images))), gen)
    values = {k: float(v[-1]) for k, v in probe.schedules(10, 10).items()}
    with torch.no_grad():
        loss, _ = probe(views, boxes, values, step_generator(98, step))
    return float(loss)


@pytest.mark.parametrize("objective", ["dino", "msn", "loca", "swav"])
def test_steps_lower_the_loss_and_checkpoint_loads(objective, tmp_path):
    obj = small(objective, tiny_vit())
    images = blob_images(32)
    before = _fixed_batch_loss(obj, images)
    cfg = PretrainConfig(epochs=4, batch_size=16, lr=2e-3, warmup_frac=0.0, seed=1)
    pretrain(obj, images, cfg, out_dir=tmp_path, progress=False)
    after = _fixed_batch_loss(obj, images)
    assert after < before - 0.05, (before, after)
    loaded = E.create("vit_tiny_cifar", checkpoint=tmp_path / "checkpoint.pt", **VIT_KW)
    want = obj.encoder().state_dict()
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, want[k])


@pytest.mark.parametrize("objective", ["dino", "swav"])
def test_resnet18_runs_and_its_checkpoint_loads(objective, tmp_path):
    torch.manual_seed(0)
    obj = small(objective, E.create("resnet18_cifar"))
    res = pretrain(obj, blob_images(16), PretrainConfig(epochs=1, batch_size=8, seed=1), out_dir=tmp_path,
                   progress=False)
    assert res.steps == 2 and all(math.isfinite(v) for v in res.losses)
    loaded = E.create("resnet18_cifar", checkpoint=tmp_path / "checkpoint.pt")
    want = obj.encoder().state_dict()
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, want[k])


def test_resume_is_exact(tmp_path):
    images = blob_images(48)
    cfg = PretrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=3)

    straight = small_dino(tiny_vit())
    pretrain(straight, images, cfg, out_dir=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def stop_after_epoch_one(step, loss):
        if step == 4:  # the first step of epoch 2: epoch 1's checkpoint is on disk
            raise Stop

    first = small_dino(tiny_vit())
    with pytest.raises(Stop):
        pretrain(first, images, cfg, out_dir=tmp_path / "b", progress=False, on_step=stop_after_epoch_one)
    resumed = small_dino(tiny_vit(seed=123))  # other weights: all of it must come from the checkpoint
    res = pretrain(resumed, images, cfg, out_dir=tmp_path / "b", progress=False)
    assert res.steps == 6
    want = straight.state_dict()
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0, msg=k)


def test_cifar_resnet_depth_and_width_come_back_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    enc = E.create("resnet32_cifar", depth=8, width=8)
    assert sum(m.__class__.__name__ == "_Basic" for m in enc.modules()) == 3 and enc.embed_dim == 32
    obj = small_dino(enc)
    pretrain(obj, blob_images(16), PretrainConfig(epochs=1, batch_size=8, seed=1), out_dir=tmp_path, progress=False)
    loaded = E.create("resnet32_cifar", checkpoint=tmp_path / "checkpoint.pt")  # depth and width read from the file
    want = obj.encoder().state_dict()
    assert loaded.state_dict().keys() == want.keys()
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, want[k])
    assert E.create("resnet32_cifar").embed_dim == 64  # the default is still ResNet-32, width 16
    assert sum(m.__class__.__name__ == "_Basic" for m in E.create("resnet32_cifar").modules()) == 15
    with pytest.raises(ValueError, match="6n\\+2"):
        E.create("resnet32_cifar", depth=10)


def test_global_scale_and_learned_last_layer_norms():
    _, boxes = dino_views(16, 8, 0, global_scale=(0.6, 0.7))(blob_images(64).batch(np.arange(64)), step_generator(0, 0))
    assert len(boxes) == 2
    for b in boxes:
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        assert area.min() >= 0.6 - 1e-5 and area.max() <= 0.7 + 1e-5
    _, boxes = swav_views(16, 8, 0, global_scale=(0.6, 0.7))(blob_images(64).batch(np.arange(64)), step_generator(0, 0))
    area = (boxes[0][:, 2] - boxes[0][:, 0]) * (boxes[0][:, 3] - boxes[0][:, 1])
    assert area.min() >= 0.6 - 1e-5 and area.max() <= 0.7 + 1e-5
    assert not small_dino(tiny_vit()).student_head().last_layer.g.requires_grad
    assert small_dino(tiny_vit(), norm_last_layer=False).student_head().last_layer.g.requires_grad


# ------------------------------------------------------------------ evaluation
def test_knn_weighted_vote():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [1.0, 0.02]], np.float32)
    labels = np.array([0, 1, 1, 0])
    q = np.array([[1.0, 0.1], [0.2, 1.0]], np.float32)
    assert knn_classify(bank, labels, q, k=4).tolist() == [0, 1]
    # one very close neighbour outvotes two farther ones at a low temperature, not at a high one
    bank = np.array([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]], np.float32)
    labels = np.array([0, 1, 1])
    q = np.array([[1.0, 0.0]], np.float32)
    assert knn_classify(bank, labels, q, k=3, temperature=0.07).tolist() == [0]
    assert knn_classify(bank, labels, q, k=3, temperature=10.0).tolist() == [1]


# ------------------------------------------------------------------ data parallel
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_data_parallel_equals_single_process(sharding, tmp_path):
    script = Path(__file__).with_name("pretrain_dist_worker.py")
    run_ranks(script, lambda r: [tmp_path, r, 2, sharding])
    sys.path.insert(0, str(script.parent))
    try:
        from pretrain_dist_worker import run
    finally:
        sys.path.pop(0)
    single = run(tmp_path / "single", 0, 1, sharding)
    ranks = [torch.load(tmp_path / f"out{r}.pt", weights_only=True) for r in range(2)]
    # each rank's loss is its half-batch mean; their average is the whole-batch loss
    mean = (ranks[0]["losses"].numpy() + ranks[1]["losses"].numpy()) / 2
    np.testing.assert_allclose(mean, single["losses"], rtol=1e-4, atol=1e-5)
    for k, v in single["teacher"].items():
        torch.testing.assert_close(ranks[0]["teacher"][k], v, rtol=1e-4, atol=1e-5, msg=k)


# ------------------------------------------------------------------ CLI
def test_cli_digits(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "memret.pretrain", "--objective", "dino", "--encoder", "resnet32_cifar", "--data",
         "digits", "--minutes", "0.05", "--batch-size", "32", "--local-crops", "2", "--out", str(tmp_path),
         "--encoder-kw", '{"depth": 8}', "--global-scale", "0.14", "1.0",
         "--compare-random-init", "--no-progress", "--threads", "2", "--knn-bank", "300", "--knn-test", "100",
         "--final-eval", "monitor", "--monitor-split", "val",
         "--set", "out_dim=64", "--set", "hidden=32"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("objective", "encoder", "checkpoint", "knn_top1", "knn_top1_random_init", "epochs", "seconds"):
        assert key in summary
    assert 0.1 < summary["knn_top1"] <= 1 and summary["steps"] >= 1
    assert (tmp_path / "knn.png").is_file()
    assert "held-out training" in summary["note"] and summary["encoder_kw"] == {"depth": 8}
    assert E.create("resnet32_cifar", checkpoint=summary["checkpoint"]).embed_dim == 64
