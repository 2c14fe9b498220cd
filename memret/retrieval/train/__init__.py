"""Training dense retrievers: Contriever's unsupervised contrastive pre-training (independent cropping, word
deletion, MoCo queue + momentum encoder, or in-batch negatives) and supervised fine-tuning (in-batch + hard
negatives mined with BM25 or the current model). ``python -m memret.retrieval.train`` runs either.

- :mod:`cropping`: crops and deletion, pure functions of a seeded generator.
- :mod:`corpus`: streamed corpora and the crop-pair stream.
- :mod:`moco`: the objectives (:class:`MoCo`, :class:`InBatch`), each returning ``(loss, stats)``.
- :mod:`finetune`: pairs from qrels or JSONL, hard-negative mining, batches.
- :mod:`encoder`: the trainable encoder and the export ``TextEncoder`` loads.
- :mod:`loop`: the training loop (AdamW, warm-up + decay, AMP, ``torchrun``, exact resume, loss log + PNG).
"""

from memret.retrieval.train.corpus import CropPairs, iter_documents
from memret.retrieval.train.cropping import chunks, crop_pair, delete_words, example_rng, random_crop
from memret.retrieval.train.encoder import Encoder, load_encoder, save_encoder
from memret.retrieval.train.finetune import FinetuneBatches, Pairs, holdout, mine, pairs_from_beir, pairs_from_jsonl
from memret.retrieval.train.loop import LoopConfig, fit
from memret.retrieval.train.moco import InBatch, MoCo, contrastive_loss

__all__ = ["CropPairs", "Encoder", "FinetuneBatches", "InBatch", "LoopConfig", "MoCo", "Pairs", "chunks",
           "contrastive_loss", "crop_pair", "delete_words", "example_rng", "fit", "holdout", "iter_documents",
           "load_encoder", "mine", "pairs_from_beir", "pairs_from_jsonl", "random_crop", "save_encoder"]
