"""memret's exemplar memory inside Avalanche's own strategies, as a thin ``SupervisedPlugin``.

    from avalanche.training.supervised import Naive
    bank = memret.ExemplarBank(dim=512, total=2000)
    strategy = Naive(model, opt, loss, plugins=[ExemplarMemoryPlugin(bank, feature_fn=encode)])

After each training experience the plugin offers the experience's samples to the
bank (selected on ``feature_fn`` features: herding, random, closest or reservoir),
and before the next one it replays the kept samples next to the new data with
Avalanche's ``ReplayDataLoader``. The bank stays strategy-free: it sees numpy
features and labels, and references ``"<experience>:<index>"`` back to the samples.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from memret.memory import ExemplarBank


def _plugin_base():
    try:
        from avalanche.training.plugins import SupervisedPlugin
    except ImportError:
        raise ImportError("Avalanche is needed for the plugins: pip install 'memret[cl]'") from None
    return SupervisedPlugin


class ExemplarMemoryPlugin(_plugin_base()):
    """Replay from a :class:`~memret.ExemplarBank`.

    Args:
        bank: the memory (its budget and policy decide what is kept).
        feature_fn: ``(B, ...) tensor -> (B, bank.dim) array`` used for selection; default: flatten the input.
        batch_size_mem: memory samples per minibatch (default: the strategy's train_mb_size).
        encode_batch: batch size when computing features for selection.
    """

    def __init__(self, bank: ExemplarBank, feature_fn: Callable[[torch.Tensor], np.ndarray] | None = None,
                 batch_size_mem: int | None = None, encode_batch: int = 512) -> None:
        super().__init__()
        self.bank, self.feature_fn = bank, feature_fn
        self.batch_size_mem, self.encode_batch = batch_size_mem, encode_batch
        self._datasets: dict[int, object] = {}

    def _features(self, x: torch.Tensor) -> np.ndarray:
        if self.feature_fn is None:
            return x.flatten(1).float().cpu().numpy()
        with torch.no_grad():
            return np.asarray(self.feature_fn(x), dtype=np.float32)

    def memory_dataset(self):
        """The kept samples as one Avalanche dataset (None while the bank is empty)."""
        if len(self.bank) == 0:
            return None
        parts = []
        exp_ids = np.array([int(r.split(":")[0]) for r in self.bank.refs])
        idx = np.array([int(r.split(":")[1]) for r in self.bank.refs])
        for e in np.unique(exp_ids):
            parts.append(self._datasets[int(e)].subset(idx[exp_ids == e].tolist()))
        out = parts[0]
        for p in parts[1:]:
            out = out.concat(p)
        return out

    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True, **kwargs):
        from avalanche.benchmarks.utils.data_loader import ReplayDataLoader

        memory = self.memory_dataset()
        if memory is None:
            return
        strategy.dataloader = ReplayDataLoader(
            strategy.adapted_dataset, memory, oversample_small_tasks=True,
            batch_size=strategy.train_mb_size, batch_size_mem=self.batch_size_mem or strategy.train_mb_size,
            num_workers=num_workers, shuffle=shuffle)

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience
        ds = exp.dataset.eval()
        self._datasets[exp.current_experience] = ds
        feats, labels = [], []
        loader = torch.utils.data.DataLoader(ds, batch_size=self.encode_batch, shuffle=False)
        for batch in loader:
            feats.append(self._features(batch[0].to(strategy.device)))
            labels.append(np.asarray(batch[1]))
        refs = [f"{exp.current_experience}:{i}" for i in range(len(ds))]
        self.bank.update(np.concatenate(feats), np.concatenate(labels).astype(np.int64), refs=refs)
