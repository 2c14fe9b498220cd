import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avalanche", reason="pip install memret[cl]")

from memret import ExemplarBank  # noqa: E402
from memret.incremental.data import FeatureDataset as FeatureSet  # noqa: E402
from memret.incremental.plugins import ExemplarMemoryPlugin  # noqa: E402
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
        # the memory dataset returns the very samples the bank refers to
        x0, y0 = mem[0][0], mem[0][1]
        assert int(y0) == int(bank.labels[0])
        np.testing.assert_allclose(x0.numpy(), bank.features[0], rtol=1e-6)
    with torch.no_grad():
        pred = model(torch.from_numpy(Xte)).argmax(1).numpy()
    first = np.isin(yte, list(bm.train_stream[0].classes_in_this_experience))
    assert (pred[first] == yte[first]).mean() > 0.3  # replay kept the first task alive
