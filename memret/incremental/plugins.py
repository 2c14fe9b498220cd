"""memret's exemplar memory and MTN inside Avalanche's own strategies, as thin ``SupervisedPlugin``s.

    from avalanche.training.supervised import Naive
    bank = memret.ExemplarBank(dim=512, total=2000)
    strategy = Naive(model, opt, loss, plugins=[ExemplarMemoryPlugin(bank, feature_fn=encode)])
    strategy = Naive(model, opt, loss, plugins=[MTNPlugin(bank, feature_fn=encode, n_classes=100)])

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

from memret.heads.plugin import supervised_plugin_base
from memret.incremental.mtn import make_mtn, mtn_scores, train_mtn
from memret.incremental.training import TrainConfig, generator, seeded_init
from memret.memory import ExemplarBank


class ExemplarMemoryPlugin(supervised_plugin_base()):
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
        parts, grouped = [], []
        exp_ids = np.array([int(r.split(":")[0]) for r in self.bank.refs])
        idx = np.array([int(r.split(":")[1]) for r in self.bank.refs])
        for e in np.unique(exp_ids):
            rows = np.flatnonzero(exp_ids == e)
            parts.append(self._datasets[int(e)].subset(idx[rows].tolist()))
            grouped.append(rows)
        out = parts[0]
        for p in parts[1:]:
            out = out.concat(p)
        # back to the bank's order: sample i of the result is bank entry i
        position = np.empty(len(self.bank), dtype=np.int64)
        position[np.concatenate(grouped)] = np.arange(len(self.bank))
        return out.subset(position.tolist())

    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True, **kwargs):
        from avalanche.benchmarks.utils.data_loader import ReplayDataLoader

        memory = self.memory_dataset()
        if memory is None:
            return
        strategy.dataloader = ReplayDataLoader(
            strategy.adapted_dataset, memory, oversample_small_tasks=True,
            batch_size=strategy.train_mb_size, batch_size_mem=self.batch_size_mem or strategy.train_mb_size,
            num_workers=num_workers, shuffle=shuffle)

    def _encode(self, ds, device) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for batch in torch.utils.data.DataLoader(ds, batch_size=self.encode_batch, shuffle=False):
            feats.append(self._features(batch[0].to(device)))
            labels.append(np.asarray(batch[1]))
        return np.concatenate(feats), np.concatenate(labels).astype(np.int64)

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience
        ds = exp.dataset.eval()
        self._datasets[exp.current_experience] = ds
        X, y = self._encode(ds, strategy.device)
        refs = np.array([f"{exp.current_experience}:{i}" for i in range(len(ds))])
        if len(self.bank) and self.feature_fn is not None:  # the model moved: re-encode the kept samples
            self.bank.replace_features(self._encode(self.memory_dataset().eval(), strategy.device)[0])
        self.bank.update(X, y, refs=refs)
        self._last = (X, y, refs)


class MTNPlugin(ExemplarMemoryPlugin):
    """Replay from the bank and a Memory Transformer Network over it, inside any Avalanche strategy.

    After each training experience the bank is refreshed (kept samples re-encoded with the
    current ``feature_fn``, the new experience offered to it), then the MTN trains on the
    experience's features plus the old exemplars (or the memory alone, ``config.mtn_train``), retrieving
    neighbours (``config.mtn_retrieval``) with leave-one-out,
    as in ``memret.incremental.run(method="mtn")``. At evaluation the MTN's logits for the
    minibatch are added to the model's (``strategy.mb_output``), so Avalanche's own metrics
    score the fused prediction.

    Args:
        bank: the memory.
        feature_fn: ``(B, ...) tensor -> (B, bank.dim)`` features (e.g. the model without its head).
        n_classes: the label space of the whole stream.
        config: MTN size, k, epochs, lr (a :class:`~memret.incremental.TrainConfig`).
        seed: MTN initialisation and shuffles.
        replay: also replay the memory during the strategy's training (ExemplarMemoryPlugin's behaviour).
    """

    def __init__(self, bank: ExemplarBank, feature_fn: Callable[[torch.Tensor], np.ndarray] | None, n_classes: int,
                 config: TrainConfig | None = None, seed: int = 0, replay: bool = True, **kw) -> None:
        super().__init__(bank, feature_fn, **kw)
        self.cfg, self.seed, self.replay, self.n_classes = config or TrainConfig(), seed, replay, n_classes
        c = self.cfg
        self.mtn = seeded_init(lambda: make_mtn(bank.dim, n_classes, c), seed, 3)
        self.opt = torch.optim.AdamW(self.mtn.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self._trained = False

    def before_training_exp(self, strategy, **kwargs):
        if self.replay:
            super().before_training_exp(strategy, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        super().after_training_exp(strategy, **kwargs)
        X, y, refs = self._last
        mask = torch.full((self.n_classes,), float("-inf"))
        mask[self.bank.classes] = 0.0
        train_mtn(self.mtn, self.opt, self.bank, X, y, refs, self.cfg,
                  generator(self.seed, 8, strategy.experience.current_experience), mask)
        self.mtn.eval()
        self._trained = True

    @torch.no_grad()
    def mtn_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_classes) MTN logits for raw inputs ``x`` (through ``feature_fn``)."""
        return torch.from_numpy(mtn_scores(self.mtn, self.bank, self._features(x), self.cfg.k,
                                           retrieval=self.cfg.mtn_retrieval, per_class=self.cfg.mtn_per_class))

    def after_eval_forward(self, strategy, **kwargs):
        if not self._trained or len(self.bank) == 0:
            return
        out = strategy.mb_output
        extra = self.mtn_logits(strategy.mb_x).to(out.device, out.dtype)
        n = min(out.shape[1], extra.shape[1])
        strategy.mb_output = torch.cat([out[:, :n] + extra[:, :n], out[:, n:]], dim=1)
