"""BEIR evaluation: load BEIR folders, evaluate any retriever, and the ``python -m memret.beir`` CLI."""

from memret.beir.data import BeirData, download, load_beir, load_qrels
from memret.beir.evaluate import evaluate, retrieve, score_run, to_run, write_trec

__all__ = ["BeirData", "download", "evaluate", "load_beir", "load_qrels", "retrieve", "score_run", "to_run",
           "write_trec"]
