"""Peak memory of one SLDA fit with the shrinkage chosen on held-out statistics, in (D, D) float64 buffers.

    python experiments/slda_memory.py --dim 6000 --rows 12000

Prints how far the process's peak resident set grew during ``SLDA(10, shrinkage="auto").fit_task`` beyond the
features already in memory, divided by the size of one (D, D) float64 matrix: what decides the widest SLDA a
machine holds (at 16,000 dimensions one such matrix is 2 GB). Run it on two checkouts to compare them.
"""

from __future__ import annotations

import argparse
import resource

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=6000)
    ap.add_argument("--rows", type=int, default=12000)
    args = ap.parse_args()
    from memret.heads import SLDA

    X = np.random.default_rng(0).standard_normal((args.rows, args.dim), dtype=np.float32)
    y = np.repeat(np.arange(10), -(-args.rows // 10))[:args.rows]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    head = SLDA(10, shrinkage="auto").fit_task(X, y)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(f"D = {args.dim}, {args.rows} rows: peak grew by {grew / 2**30:.2f} GiB = "
          f"{grew / (8 * args.dim ** 2):.2f} (D, D) float64 buffers (shrinkage chosen: {head.shrinkage:g})")


if __name__ == "__main__":
    main()
