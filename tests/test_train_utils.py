"""memret.train: schedules, checkpoints with RNG states, the single-process distributed helpers."""

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from memret.train import (  # noqa: E402
    all_reduce_mean,
    cosine_schedule,
    distributed_session,
    linear_warmup_decay,
    load_checkpoint,
    rank_world,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_cosine_schedule_shape_warmup_and_ends():
    s = cosine_schedule(1.0, 0.1, epochs=3, steps_per_epoch=10, warmup_epochs=1, start_warmup=0.0)
    assert s.shape == (30,)
    assert s[0] == 0.0 and np.all(np.diff(s[:10]) > 0)          # linear ramp up
    assert s[10] == pytest.approx(1.0)                           # peak right after warm-up
    assert np.all(np.diff(s[10:]) <= 1e-12)                      # then monotone decay
    assert s[-1] == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, epochs=1, steps_per_epoch=5, warmup_epochs=2)


def test_linear_warmup_decay():
    s = linear_warmup_decay(2.0, total_steps=10, warmup_steps=4)
    assert s.shape == (10,)
    np.testing.assert_allclose(s[:4], [0.5, 1.0, 1.5, 2.0])
    assert np.all(np.diff(s[4:]) < 0) and s[-1] > 0
    with pytest.raises(ValueError):
        linear_warmup_decay(1.0, total_steps=3, warmup_steps=4)


def test_checkpoint_round_trip_restores_weights_optimizer_and_rngs(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(7)
    torch.randn(3, generator=gen)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, gen=gen, step=5, rng=rng_state())
    expect_gen = torch.randn(5, generator=gen)
    expect_py, expect_np, expect_t = random.random(), np.random.rand(), torch.rand(1)

    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    gen2 = torch.Generator()
    ckpt = load_checkpoint(tmp_path / "c.pt", model=model2, optimizer=opt2, gen=gen2)
    set_rng_state(ckpt["rng"])
    assert ckpt["step"] == 5
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.randn(5, generator=gen2), expect_gen)
    assert (random.random(), np.random.rand()) == (expect_py, expect_np) and torch.equal(torch.rand(1), expect_t)
    with pytest.raises(KeyError):
        load_checkpoint(tmp_path / "c.pt", scaler=torch.nn.Linear(1, 1))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_single_process_session_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_session() as (rank, world):
        assert (rank, world) == (0, 1) == rank_world()
        x = torch.tensor([1.0, 3.0])
        assert torch.equal(all_reduce_mean(x), x)
