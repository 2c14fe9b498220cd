"""Aggregators that read the memory in prediction: the Memory Transformer Network."""

from memret.aggregator.mtn import MemoryTransformerNetwork

__all__ = ["MemoryTransformerNetwork"]
