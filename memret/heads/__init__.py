"""Classifier heads over frozen features, usable on their own or inside ``memret.incremental``.

    from memret.heads import RanPAC, SLDA
    head = RanPAC(n_classes=10, projection=4096)
    for X, y in tasks:
        head.fit_task(X, y)        # float64 statistics, no exemplars, no forgetting
    head.predict(X_test)

Needs only numpy and torch.
"""

from memret.heads.analytic import SLDA, RanPAC

__all__ = ["SLDA", "RanPAC"]
