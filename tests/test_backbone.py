"""Encoders trained on the stream (run(train_encoder=True)), data-parallel training, the CLI under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")
pytest.importorskip("timm", reason="pip install memret[vision]")

from memret import ExemplarBank  # noqa: E402
from memret.incremental import TrainConfig, run  # noqa: E402
from memret.incremental.backbone import augment, augment_params  # noqa: E402
from memret.incremental.data import ArrayImages, LabelledData  # noqa: E402
from conftest import run_ranks  # noqa: E402
from test_incremental import _tiny_images  # noqa: E402  (colour-blob images, one colour per class)

ROOT = Path(__file__).resolve().parents[1]
CFG = TrainConfig(epochs=4, batch_size=32, mtn_width=32, mtn_layers=1, mtn_heads=2, k=5, encoder_lr=0.01)


def tiny_data():
    (xtr, ytr), (xte, yte) = _tiny_images(24, 4, 0), _tiny_images(8, 4, 1)
    return LabelledData("tiny", ArrayImages(xtr, ytr), ArrayImages(xte, yte), 4, 32)


def test_augment_crop_and_flip():
    x = torch.randn(3, 3, 32, 32)
    centre = torch.full((3, 2), 4)
    no, yes = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    assert torch.equal(augment(x, centre, no), x)           # centred crop of the padded image: identity
    assert torch.equal(augment(x, centre, yes), x.flip(3))  # mirror
    shifted = augment(x, torch.tensor([[0, 8]] * 3), no)    # 4 px down, 4 px left
    assert torch.equal(shifted[..., 4:, :28], x[..., :28, 4:]) and (shifted[..., :4, :] == 0).all()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = augment_params(5, 32, g1), augment_params(5, 32, g2)
    assert torch.equal(a[0], b[0]) and a[0].min() >= 0 and a[0].max() <= 8


def test_trained_encoder_learns_and_keeps_memory_features_current(tmp_path):
    res = run(tiny_data(), tasks=2, method=["replay", "icarl", "mtn"], encoder="resnet32_cifar", memory=16,
              config=CFG, out=tmp_path / "r", train_encoder=True, plot=False)
    assert res.encoder == "resnet32_cifar (trained)"
    for name in ("icarl", "mtn"):
        assert res.methods[name].summary["last_accuracy"] > 0.5, name  # chance: 0.25
    # the encoder moved away from its initialisation, and the stored exemplars carry its current features
    import memret.encoders as E
    from memret.incremental.run import extract_features

    state = torch.load(tmp_path / "r" / "ckpt" / "mtn" / "encoder.pt", weights_only=True)
    fresh = E.create("resnet32_cifar")
    init = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(state["encoder"])
    assert any(not torch.equal(init[k], v) for k, v in fresh.state_dict().items() if v.is_floating_point())
    bank = ExemplarBank.load(tmp_path / "r" / "ckpt" / "mtn" / "bank")
    feats = extract_features(fresh, tiny_data().train, rows=bank.refs.astype(np.int64))
    np.testing.assert_allclose(bank.features, feats, atol=1e-4)


def test_trained_encoder_resume_matches_uninterrupted(tmp_path, monkeypatch):
    from memret.incremental.backbone import TrainedEncoder

    kw = dict(tasks=2, method="replay", encoder="resnet32_cifar", memory=16, config=CFG, plot=False,
              train_encoder=True)
    full = run(tiny_data(), out=tmp_path / "full", **kw)
    original = TrainedEncoder.fit

    def crash_on_task_1(self, method, task, *a):
        if task.index == 1:
            raise KeyboardInterrupt("killed during task 1")
        return original(self, method, task, *a)

    monkeypatch.setattr(TrainedEncoder, "fit", crash_on_task_1)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_data(), out=tmp_path / "part", **kw)
    monkeypatch.setattr(TrainedEncoder, "fit", original)
    resumed = run(tiny_data(), out=tmp_path / "part", **kw)
    assert resumed.methods["replay"].accuracy_matrix == full.methods["replay"].accuracy_matrix


def test_train_encoder_needs_a_network():
    with pytest.raises(ValueError, match="no trainable parameters"):
        run(tiny_data(), tasks=2, method="knn", encoder="kmeans_patches", encoder_kw={"n_centroids": 8},
            train_encoder=True, config=CFG, plot=False, out=None)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **extra}


def test_data_parallel_training_equals_single_process(tmp_path):
    script = Path(__file__).with_name("dist_train_worker.py")
    run_ranks(script, lambda r: [tmp_path, r, 2])
    sys.path.insert(0, str(script.parent))
    try:
        from dist_train_worker import initial_model, train
    finally:
        sys.path.pop(0)
    single = train(0, 1)
    init = initial_model().state_dict()
    ranks = [torch.load(tmp_path / f"state{r}.pt", weights_only=True) for r in range(2)]
    assert single.keys() == init.keys() == ranks[0].keys()
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0)   # replicas in lock step
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-4, atol=1e-5)       # = the whole-batch step
        # every tensor trained: far from where it started (so the equalities above compare real updates)
        assert (v - init[k]).abs().max() > 1e-3, f"{k} did not move"


def test_cli_under_torchrun_two_ranks(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "memret.incremental", "--dataset", "digits", "--tasks", "5", "--method", "icarl", "--encoder",
         "resnet32_cifar", "--train-encoder", "--epochs", "1", "--batch-size", "64", "--memory", "200",
         "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=900, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["icarl"]["last_accuracy"] > 0.2  # chance: 0.1
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["encoder"] == "resnet32_cifar (trained)"
    assert saved["methods"]["icarl"]["summary"]["last_accuracy"] == pytest.approx(summary["icarl"]["last_accuracy"])


def test_fine_tuning_starts_from_the_checkpoint(tmp_path):
    from dataclasses import replace

    import memret.encoders as E
    from memret.encoders.cnn import CifarResNet

    torch.manual_seed(123)
    torch.save(CifarResNet(n=5).state_dict(), tmp_path / "weights.pt")
    run(tiny_data(), tasks=2, method="knn", encoder="resnet32_cifar",
        encoder_kw={"checkpoint": str(tmp_path / "weights.pt")}, memory=16, config=replace(CFG, encoder_epochs=0), out=tmp_path / "r", train_encoder=True, plot=False)
    trained = torch.load(tmp_path / "r" / "ckpt" / "knn" / "encoder.pt", weights_only=True)["encoder"]
    loaded = E.create("resnet32_cifar", checkpoint=tmp_path / "weights.pt").state_dict()
    weights = [k for k in loaded if k.endswith("weight")]
    assert weights and all(torch.equal(trained[k], loaded[k]) for k in weights)  # zero steps: still the checkpoint
    seeded = E.create("resnet32_cifar").state_dict()
    assert not all(torch.equal(seeded[k], loaded[k]) for k in weights)
