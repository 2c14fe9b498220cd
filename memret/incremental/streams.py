"""Class-incremental streams through Avalanche, over sample indices.

The stream is built by Avalanche's ``class_incremental_benchmark`` on datasets
whose samples are their own indices (with the real ``targets``), so every
experience says exactly which rows of the original data it holds. memret's
learners then read images or cached features by row; Avalanche users get the
same split as a regular :class:`CLScenario` (:func:`avalanche_benchmark`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset


def class_order(n_classes: int, seed: int = 1993) -> list[int]:
    """iCaRL's class order: ``np.random.seed(seed); np.random.permutation(n_classes)`` (1993 by convention)."""
    return np.random.RandomState(seed).permutation(n_classes).tolist()


class IndexDataset(Dataset):
    """Sample i is the integer i; ``targets`` are the real labels."""

    def __init__(self, targets: Sequence[int]) -> None:
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return i, self.targets[i]


@dataclass(frozen=True)
class Task:
    index: int
    classes: tuple[int, ...]          # classes new in this task, in class order
    train_rows: np.ndarray            # rows of the training set
    test_rows: np.ndarray             # rows of the test set (this task's classes only)


def avalanche_benchmark(train_targets: Sequence[int], test_targets: Sequence[int], n_tasks: int, seed: int = 1993,
                        train: Dataset | None = None, test: Dataset | None = None):
    """Avalanche's class-incremental benchmark with iCaRL's class order and equal classes per task.

    With ``train``/``test`` given, the stream holds those datasets' samples; otherwise sample indices.
    """
    from avalanche.benchmarks.scenarios import class_incremental_benchmark

    n_classes = len(set(int(t) for t in train_targets))
    if n_tasks < 1 or n_classes % n_tasks:
        raise ValueError(f"{n_classes} classes cannot be split into {n_tasks} equal tasks")
    return class_incremental_benchmark(
        {"train": train if train is not None else IndexDataset(train_targets),
         "test": test if test is not None else IndexDataset(test_targets)},
        class_order=class_order(n_classes, seed), num_experiences=n_tasks)


def make_tasks(train_targets: Sequence[int], test_targets: Sequence[int], n_tasks: int, seed: int = 1993) -> list[Task]:
    """The stream as plain row lists: Avalanche's experiences decide which classes each task holds;
    a class-incremental experience holds every sample of its classes, so the rows follow from the targets
    (reading them sample by sample through Avalanche costs ~0.2 ms each, minutes on ImageNet)."""
    ytr, yte = np.asarray(train_targets), np.asarray(test_targets)
    bm = avalanche_benchmark(ytr, yte, n_tasks, seed)
    order = class_order(len(np.unique(ytr)), seed)
    per = len(order) // n_tasks
    tasks = []
    for t, exp in enumerate(bm.train_stream):
        classes = tuple(order[t * per:(t + 1) * per])
        if set(classes) != {int(c) for c in exp.classes_in_this_experience}:
            raise RuntimeError("Avalanche's experience classes differ from the requested class order")
        tasks.append(Task(t, classes, np.flatnonzero(np.isin(ytr, classes)), np.flatnonzero(np.isin(yte, classes))))
    return tasks
