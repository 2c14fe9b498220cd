"""Class-incremental learning over an exemplar memory: Avalanche streams, baselines and the MTN.

    import memret
    res = memret.incremental.run("cifar10", tasks=5, method=["mtn", "knn", "icarl", "replay"])
    print(res.table())

Needs ``pip install 'memret[cl,vision]'``.

Modules: ``data`` (data sets), ``streams`` (Avalanche streams), ``training`` (config,
seeded RNGs, the minibatch loop), ``methods`` (the methods), ``analytic`` (methods over
analytic heads), ``catalog`` (methods by name), ``mtn`` (retrieval and training of the
MTN), ``features`` (encoding), ``backbone`` (training the encoder on the stream),
``run`` (the experiment), ``plugins`` (Avalanche plugins).
"""

from memret.incremental.data import LabelledData, load_dataset
from memret.incremental.features import extract_features
from memret.incremental.catalog import METHODS, make_method
from memret.incremental.run import RunResult, plot_accuracy, run
from memret.incremental.streams import Task, avalanche_benchmark, class_order, make_tasks
from memret.incremental.training import TrainConfig

__all__ = ["METHODS", "LabelledData", "RunResult", "Task", "TrainConfig", "avalanche_benchmark", "class_order",
           "extract_features", "load_dataset", "make_method", "make_tasks", "plot_accuracy", "run"]
