"""Class-incremental learning over an exemplar memory: Avalanche streams, baselines and the MTN.

    import memret
    res = memret.incremental.run("cifar10", tasks=5, method=["mtn", "knn", "icarl", "replay"])
    print(res.table())

Needs ``pip install 'memret[cl,vision]'``.
"""

from memret.incremental.data import LabelledData, load_dataset
from memret.incremental.methods import METHODS, TrainConfig, make_method
from memret.incremental.run import RunResult, extract_features, plot_accuracy, run
from memret.incremental.streams import Task, avalanche_benchmark, class_order, make_tasks

__all__ = ["METHODS", "LabelledData", "RunResult", "Task", "TrainConfig", "avalanche_benchmark", "class_order",
           "extract_features", "load_dataset", "make_method", "make_tasks", "plot_accuracy", "run"]
