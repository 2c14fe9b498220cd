"""Reservoir sampling (Vitter's Algorithm R) as pure functions over slot indices.

The bank keeps one reservoir per class under a ``per_class`` budget and one over
the whole stream under a ``total`` budget; both use these two functions. Each
arriving item either fills the next empty slot or, once the reservoir is full,
overwrites slot ``j ~ U{0, ..., t}`` (``t`` = items seen before it) when
``j < capacity``, so every item of the stream is kept with probability
``capacity / t_end``.
"""

from __future__ import annotations

import numpy as np


def reservoir_slots(kept: int, seen: int, n_new: int, capacity: int, rng: np.random.Generator) -> np.ndarray:
    """Where each of ``n_new`` arriving items goes.

    Args:
        kept: items in the reservoir now (<= capacity).
        seen: items of this stream offered before (>= kept).
        n_new: items arriving, in stream order.
        capacity: reservoir size.
        rng: the generator drawing the replacement slots (one draw per item that
            arrives after the reservoir is full).

    Returns:
        (n_new,) int64: the slot each item (over)writes, in ``[0, capacity)``, or -1 if
        it is dropped. Later items win over earlier ones for the same slot.
    """
    slots = np.full(n_new, -1, dtype=np.int64)
    fill = max(0, min(n_new, capacity - kept))
    slots[:fill] = kept + np.arange(fill)
    rest = n_new - fill
    if rest:
        # item i of the rest is stream item number seen + fill + i (0-based): j ~ U{0 .. that number}
        j = rng.integers(0, seen + fill + 1 + np.arange(rest, dtype=np.int64))
        slots[fill:] = np.where(j < capacity, j, -1)
    return slots


def reservoir_take(kept: int, slots: np.ndarray) -> np.ndarray:
    """Rows of ``concat(old items, new items)`` that make up the reservoir after the update.

    Args:
        kept: items in the reservoir before the update (rows ``0 .. kept-1``).
        slots: (n_new,) output of :func:`reservoir_slots`.

    Returns:
        (size,) int64 row indices, slot order: old rows stay in their slot unless a new
        item (row ``kept + i``) overwrote it; the last writer of a slot wins.
    """
    size = max(kept, int(slots.max()) + 1) if slots.size else kept
    take = np.arange(size, dtype=np.int64)
    hit = np.flatnonzero(slots >= 0)[::-1]  # newest first, so np.unique's first index is the last writer
    if hit.size:
        where, first = np.unique(slots[hit], return_index=True)
        take[where] = kept + hit[first]
    return take
