"""Positive pairs from unlabelled text, as Contriever makes them: two independent random crops of the same
token sequence, each thinned by random word deletion.

Everything here is a pure function of its arguments and a ``numpy.random.Generator``: the same generator
state gives the same pair. The loop seeds one generator per example from ``(seed, example index)``
(:func:`example_rng`), so a pair never depends on which rank makes it or on where a run was resumed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of one example: a function of (seed, global example index) only."""
    return np.random.default_rng([int(seed), int(index)])


def random_crop(tokens: Sequence[int], rng: np.random.Generator, ratio_min: float = 0.05,
                ratio_max: float = 0.5) -> list[int]:
    """A contiguous span whose length is ``uniform(ratio_min, ratio_max) * len(tokens)`` (at least 1 token).

    Args:
        tokens: (L,) token ids, L >= 1, without special tokens.
        rng: the example's generator.
        ratio_min, ratio_max: the range of the span length as a fraction of L, 0 < min <= max <= 1.

    Returns:
        The span, a list of ``max(1, int(L * ratio))`` ids, starting anywhere it fits.
    """
    if not 0 < ratio_min <= ratio_max <= 1:
        raise ValueError(f"need 0 < ratio_min <= ratio_max <= 1, got {ratio_min}, {ratio_max}")
    if len(tokens) == 0:
        raise ValueError("cannot crop an empty token sequence")
    ratio = rng.uniform(ratio_min, ratio_max)
    length = max(1, int(len(tokens) * ratio))
    start = int(rng.integers(0, len(tokens) - length + 1))
    return list(tokens[start:start + length])


def delete_words(tokens: Sequence[int], rng: np.random.Generator, p: float = 0.1) -> list[int]:
    """Drop each token independently with probability ``p`` (Contriever's ``deleteword``), keeping at least one.

    Args:
        tokens: (L,) token ids.
        rng: the example's generator.
        p: deletion probability in [0, 1).

    Returns:
        The kept tokens in their original order.
    """
    if not 0 <= p < 1:
        raise ValueError(f"deletion probability must be in [0, 1), got {p}")
    if p == 0 or len(tokens) == 0:
        return list(tokens)
    keep = rng.random(len(tokens)) >= p
    if not keep.any():  # an empty view carries no signal; keep one token at random
        keep[rng.integers(0, len(tokens))] = True
    return [t for t, k in zip(tokens, keep) if k]


def crop_pair(tokens: Sequence[int], rng: np.random.Generator, ratio_min: float = 0.05, ratio_max: float = 0.5,
              p_delete: float = 0.1) -> tuple[list[int], list[int]]:
    """Query and key views of one text: two independent crops, then word deletion on each.

    Returns:
        ``(query_ids, key_ids)``, without special tokens.
    """
    q = random_crop(tokens, rng, ratio_min, ratio_max)
    k = random_crop(tokens, rng, ratio_min, ratio_max)
    return delete_words(q, rng, p_delete), delete_words(k, rng, p_delete)


def chunks(tokens: Sequence[int], length: int, min_length: int = 8) -> list[list[int]]:
    """Cut a token sequence into consecutive chunks of ``length`` (Contriever's ``chunk_length``).

    The last chunk is kept if it has at least ``min_length`` tokens (a text shorter than ``min_length``
    yields nothing).
    """
    if length < 1 or min_length < 1:
        raise ValueError(f"chunk length and min_length must be >= 1, got {length}, {min_length}")
    out = [list(tokens[s:s + length]) for s in range(0, len(tokens), length)]
    return [c for c in out if len(c) >= min(min_length, length)]
