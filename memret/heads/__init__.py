"""Classifier heads over frozen features, usable on their own or inside ``memret.incremental``.

    from memret.heads import BlockSLDA, RanPAC, SLDA
    head = RanPAC(n_classes=10, projection=4096)
    for X, y in tasks:
        head.fit_task(X, y)        # float64 statistics, no exemplars, no forgetting
    head.predict(X_test)
    BlockSLDA(10, blocks=(12800, 6400))   # one SLDA per block of feature columns, scores summed

Needs only numpy and torch.
"""

from memret.heads.analytic import SLDA, BlockSLDA, RanPAC

__all__ = ["SLDA", "BlockSLDA", "RanPAC"]
