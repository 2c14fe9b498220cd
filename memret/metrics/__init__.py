"""Pure metric functions: continual learning (accuracy matrices) and retrieval (TREC dicts)."""

from memret.metrics.continual import (average_incremental_accuracy, bwt, forgetting, last_accuracy,
                                      seen_accuracy, summarize)
from memret.metrics.retrieval import evaluate, mean_metrics, per_query, ranked

__all__ = ["average_incremental_accuracy", "bwt", "evaluate", "forgetting", "last_accuracy",
           "mean_metrics", "per_query", "ranked", "seen_accuracy", "summarize"]
