import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")

from memret import ExemplarBank  # noqa: E402
from memret.incremental.data import FeatureDataset as FeatureSet  # noqa: E402
from memret.incremental.plugins import ExemplarMemoryPlugin, MTNPlugin  # noqa: E402
from memret.incremental.streams import avalanche_benchmark  # noqa: E402


def test_memory_plugin_in_avalanche_naive():
    from avalanche.training.supervised import Naive

    g = np.random.default_rng(0)
    centers = g.normal(size=(6, 8)) * 4
    ytr, yte = np.repeat(np.arange(6), 30), np.repeat(np.arange(6), 10)
    Xtr = (centers[ytr] + g.normal(size=(180, 8))).astype(np.float32)
    Xte = (centers[yte] + g.normal(size=(60, 8))).astype(np.float32)
    bm = avalanche_benchmark(ytr, yte, 3, train=FeatureSet(Xtr, ytr), test=FeatureSet(Xte, yte))
    bank = ExemplarBank(8, total=24, policy="herding")
    plugin = ExemplarMemoryPlugin(bank)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6)
    strat = Naive(model, torch.optim.Adam(model.parameters(), 1e-2), torch.nn.CrossEntropyLoss(),
                  train_mb_size=16, train_epochs=5, plugins=[plugin], evaluator=None)
    seen = []
    for t, exp in enumerate(bm.train_stream):
        strat.train(exp)
        seen += list(exp.classes_in_this_experience)
        assert len(bank) <= 24 and set(bank.classes.tolist()) == set(seen)
        assert len(set(np.bincount(bank.labels)[bank.classes])) == 1  # balanced
        mem = plugin.memory_dataset()
        assert len(mem) == len(bank)
        # the memory dataset returns the very samples the bank refers to, in the bank's order
        for i in range(len(bank)):
            assert int(mem[i][1]) == int(bank.labels[i])
            np.testing.assert_allclose(mem[i][0].numpy(), bank.features[i], rtol=1e-6)
    with torch.no_grad():
        pred = model(torch.from_numpy(Xte)).argmax(1).numpy()
    first = np.isin(yte, list(bm.train_stream[0].classes_in_this_experience))
    assert (pred[first] == yte[first]).mean() > 0.3  # replay kept the first task alive


def test_mtn_plugin_fuses_into_avalanche_predictions():
    from avalanche.training.supervised import Naive

    from memret.incremental import TrainConfig

    g = np.random.default_rng(1)
    centers = g.normal(size=(6, 8)) * 3
    ytr, yte = np.repeat(np.arange(6), 40), np.repeat(np.arange(6), 15)
    Xtr = (centers[ytr] + g.normal(size=(240, 8))).astype(np.float32)
    Xte = (centers[yte] + g.normal(size=(90, 8))).astype(np.float32)
    bm = avalanche_benchmark(ytr, yte, 3, train=FeatureSet(Xtr, ytr), test=FeatureSet(Xte, yte))
    bank = ExemplarBank(8, total=30, policy="herding")
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6)
    plugin = MTNPlugin(bank, feature_fn=lambda x: x.numpy(), n_classes=6, seed=0,
                       config=TrainConfig(epochs=20, batch_size=32, lr=3e-3, mtn_width=32, mtn_layers=1,
                                          mtn_heads=2, k=5))
    strat = Naive(model, torch.optim.SGD(model.parameters(), 1e-3), torch.nn.CrossEntropyLoss(),
                  train_mb_size=16, train_epochs=1, plugins=[plugin], evaluator=None)
    seen_outputs = []
    plugin_after = plugin.after_eval_forward

    def spy(strategy, **kw):
        before = strategy.mb_output.clone()
        plugin_after(strategy, **kw)
        seen_outputs.append((before, strategy.mb_output.clone(), strategy.mb_x.clone()))

    plugin.after_eval_forward = spy
    for exp in bm.train_stream:
        strat.train(exp)
    strat.eval(bm.test_stream)
    before, after, x = seen_outputs[0]
    # evaluation output = the model's logits + the MTN's
    torch.testing.assert_close(after, before + plugin.mtn_logits(x))
    # the MTN learned the stream: fused accuracy on all classes far above the barely trained linear model's
    fused = (model(torch.from_numpy(Xte)) + plugin.mtn_logits(torch.from_numpy(Xte))).argmax(1).numpy()
    alone = model(torch.from_numpy(Xte)).argmax(1).numpy()
    assert (fused == yte).mean() > 0.8 and (fused == yte).mean() > (alone == yte).mean() + 0.2
