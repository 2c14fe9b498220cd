"""Unlabelled corpora, streamed: a BEIR folder, JSONL files or plain-text files, read one document at a time,
and the stream of Contriever crop pairs made from them.

Nothing holds the whole corpus: documents pass through a bounded shuffle buffer, are tokenized one by one,
cut into chunks and turned into (query, key) crops. Example ``g`` of the stream (counted over all epochs)
gets its own generator ``example_rng(seed, g)``, so the stream is a function of the seed alone; ranks
slice the same global batches, and a resumed run fast-forwards to the step it stopped at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from memret.jsonl import iter_json_objects
from memret.retrieval.base import doc_text
from memret.retrieval.train.cropping import chunks, crop_pair, example_rng

TEXT_SUFFIXES = (".jsonl", ".txt")


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The files a corpus path stands for: a BEIR folder's ``corpus.jsonl``; one ``.jsonl``/``.txt`` file;
    or every ``.jsonl``/``.txt`` file under a folder, in sorted order.

    Raises:
        FileNotFoundError: the path does not exist or holds no such file.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / "corpus.jsonl").is_file():
        return [p / "corpus.jsonl"]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES) if p.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no corpus at {p}: expected a BEIR folder (corpus.jsonl), a .jsonl or .txt "
                                f"file, or a folder holding such files")
    return files


def iter_documents(path: str | os.PathLike) -> Iterator[str]:
    """Stream the documents of a corpus as strings.

    JSONL lines give ``title`` + ``text`` (BEIR), else ``contents`` (Pyserini), else ``text``; a ``.txt``
    file gives one document per paragraph (blocks separated by blank lines).

    Raises:
        ValueError: a malformed JSONL line (with file and line number).
    """
    for f in corpus_files(path):
        if f.suffix == ".jsonl":
            for n, obj in iter_json_objects(f):
                if not ({"text", "contents", "title"} & set(obj)):
                    raise ValueError(f"{f}:{n}: expected an object with 'text', 'contents' or 'title'")
                text = doc_text(obj) if ("text" in obj or "title" in obj) else str(obj["contents"])
                if text.strip():
                    yield text
            continue
        para: list[str] = []  # a text file: one document per paragraph
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    para.append(line.strip())
                elif para:
                    yield " ".join(para)
                    para = []
        if para:
            yield " ".join(para)


def shuffled(items: Iterable, buffer: int, rng: np.random.Generator) -> Iterator:
    """Approximate shuffle of a stream with a bounded buffer (each item leaves from a random slot)."""
    if buffer <= 1:
        yield from items
        return
    buf: list = []
    for x in items:
        if len(buf) < buffer:
            buf.append(x)
            continue
        i = int(rng.integers(0, buffer))
        buf[i], x = x, buf[i]
        yield x
    order = rng.permutation(len(buf))
    for i in order:
        yield buf[i]


class CropPairs:
    """The endless stream of (query, key) token-id pairs of a corpus, epoch after epoch.

    Args:
        path: corpus path (see :func:`corpus_files`).
        tokenizer: a transformers tokenizer; special tokens are added around each crop.
        chunk_length: documents are cut into chunks of this many tokens before cropping (Contriever: 256).
        ratio_min, ratio_max: crop length range as a fraction of the chunk.
        p_delete: word-deletion probability.
        seed: fixes the document order of every epoch and every crop.
        shuffle_buffer: documents held for shuffling (1: corpus order).
    """

    def __init__(self, path: str | os.PathLike, tokenizer, chunk_length: int = 256, ratio_min: float = 0.05,
                 ratio_max: float = 0.5, p_delete: float = 0.1, seed: int = 0, shuffle_buffer: int = 10_000) -> None:
        corpus_files(path)  # fail now on a missing corpus, not in the middle of a run
        self.path, self.tokenizer = path, tokenizer
        self.chunk_length, self.ratio_min, self.ratio_max, self.p_delete = chunk_length, ratio_min, ratio_max, p_delete
        self.seed, self.shuffle_buffer = seed, shuffle_buffer

    def _chunks(self) -> Iterator[list[int]]:
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, epoch, 7])
            n = 0
            for text in shuffled(iter_documents(self.path), self.shuffle_buffer, rng):
                ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
                for c in chunks(ids, self.chunk_length):
                    n += 1
                    yield c
            if n == 0:
                raise ValueError(f"corpus {self.path} yields no chunk of at least 8 tokens")
            epoch += 1

    def pairs(self, start: int = 0) -> Iterator[tuple[list[int], list[int]]]:
        """Pairs ``start, start + 1, ...`` of the stream, with special tokens."""
        prefix, suffix = special_tokens(self.tokenizer)
        for g, c in enumerate(self._chunks()):
            if g < start:
                continue
            q, k = crop_pair(c, example_rng(self.seed, g), self.ratio_min, self.ratio_max, self.p_delete)
            yield prefix + q + suffix, prefix + k + suffix

    def batches(self, batch_size: int, start_step: int = 0) -> Iterator[dict]:
        """Global batches ``start_step, start_step + 1, ...``: dicts of lists ``q`` and ``k`` of token ids."""
        it = self.pairs(start_step * batch_size)
        while True:
            rows = [next(it) for _ in range(batch_size)]
            yield {"q": [r[0] for r in rows], "k": [r[1] for r in rows]}


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (BERT: [CLS] / [SEP]; RoBERTa: <s> / </s>)."""
    bare = tokenizer("memory", add_special_tokens=False)["input_ids"]
    full = tokenizer("memory", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    raise ValueError(f"cannot find where {type(tokenizer).__name__} puts its special tokens")


def pad(seqs: list[list[int]], pad_id: int):
    """(B, L) ids padded with ``pad_id`` to the longest sequence, and the (B, L) attention mask (torch)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask
