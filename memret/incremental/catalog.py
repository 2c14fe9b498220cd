"""Every class-incremental method of :func:`memret.incremental.run` by name: ``METHODS`` and ``make_method``."""

from __future__ import annotations

from memret.incremental.analytic import AnalyticMethod, MTNAnalyticMethod
from memret.incremental.methods import KNNMethod, LinearMethod, Method, MTNMethod, NCMMethod
from memret.incremental.training import TrainConfig
from memret.memory import ExemplarBank

METHODS = ("finetune", "joint", "replay", "icarl", "knn", "mtn", "ranpac", "slda", "mtn_ranpac", "mtn_slda")
__all__ = ["METHODS", "make_method"]


def make_method(name: str, feat_dim: int, n_classes: int, bank: ExemplarBank, cfg: TrainConfig, seed: int) -> Method:
    args = (feat_dim, n_classes, bank, cfg, seed)
    if name in ("finetune", "joint", "replay"):
        return LinearMethod(*args, data=name)
    if name in ("ranpac", "slda"):
        return AnalyticMethod(*args, kind=name)
    if name in ("mtn_ranpac", "mtn_slda"):
        return MTNAnalyticMethod(*args, kind=name[4:])
    table = {"icarl": NCMMethod, "knn": KNNMethod, "mtn": MTNMethod}
    if name not in table:
        raise KeyError(f"unknown method {name!r}; known: {list(METHODS)}")
    return table[name](*args)
