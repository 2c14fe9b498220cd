"""An analytic head (RanPAC, SLDA) inside any Avalanche strategy, as a thin ``SupervisedPlugin``.

    from avalanche.training.supervised import Naive
    head = memret.heads.RanPAC(n_classes=10)
    strategy = Naive(model, opt, loss, train_epochs=0, plugins=[AnalyticHeadPlugin(head, feature_fn=encode)])

After each training experience the plugin encodes the experience's samples with
``feature_fn`` (evaluation transforms) and adds them to the head's statistics; at
evaluation the head's scores replace the model's outputs (``mode="replace"``, the
frozen-encoder use) or are added to them (``mode="add"``), so Avalanche's own metrics
score the head.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def supervised_plugin_base():
    """Avalanche's ``SupervisedPlugin`` (the base of memret's plugins), or an ImportError saying what to install."""
    try:
        from avalanche.training.plugins import SupervisedPlugin
    except ImportError:
        raise ImportError("Avalanche is needed for the plugins: pip install 'memret[cl]'") from None
    return SupervisedPlugin


class AnalyticHeadPlugin(supervised_plugin_base()):
    """Learn an analytic head from each experience and score with it at evaluation.

    Args:
        head: a :class:`~memret.heads.RanPAC` or :class:`~memret.heads.SLDA` (anything with ``fit_task`` / ``scores``).
        feature_fn: ``(B, ...) tensor -> (B, D)`` features; default: the flattened input.
        mode: ``"replace"`` the model's evaluation outputs with the head's scores, or ``"add"`` them.
        encode_batch: batch size when encoding an experience.
    """

    def __init__(self, head, feature_fn: Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
                 mode: str = "replace", encode_batch: int = 512) -> None:
        super().__init__()
        if mode not in ("replace", "add"):
            raise ValueError(f"mode must be 'replace' or 'add', got {mode!r}")
        self.head, self.feature_fn, self.mode, self.encode_batch = head, feature_fn, mode, encode_batch

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> np.ndarray:
        f = x.flatten(1) if self.feature_fn is None else self.feature_fn(x)
        return f.float().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float32)

    def after_training_exp(self, strategy, **kwargs):
        ds = strategy.experience.dataset.eval()
        feats, labels = [], []
        for batch in torch.utils.data.DataLoader(ds, batch_size=self.encode_batch, shuffle=False):
            feats.append(self._features(batch[0].to(strategy.device)))
            labels.append(np.asarray(batch[1]))
        self.head.fit_task(np.concatenate(feats), np.concatenate(labels).astype(np.int64))

    def after_eval_forward(self, strategy, **kwargs):
        if not bool(self.head.seen.any()):
            return
        out = strategy.mb_output
        s = torch.from_numpy(self.head.scores(self._features(strategy.mb_x))).to(out.device, out.dtype)
        s[:, ~self.head.seen.to(out.device)] = -1e9 if self.mode == "replace" else 0.0  # finite: losses stay finite
        n = min(out.shape[1], s.shape[1])
        if self.mode == "replace":
            strategy.mb_output = s
        else:
            strategy.mb_output = torch.cat([out[:, :n] + s[:, :n], out[:, n:]], dim=1)
