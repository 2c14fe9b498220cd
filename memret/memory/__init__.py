"""The exemplar memory: fixed-budget, class-balanced, searchable."""

from memret.memory.bank import ExemplarBank
from memret.memory.policies import closest_to_mean, herding, random_order

__all__ = ["ExemplarBank", "closest_to_mean", "herding", "random_order"]
