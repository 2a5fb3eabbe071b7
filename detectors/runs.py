"""Vectorized building blocks over arrays sorted by (patient, time): runs, next-event, segment search.

These replace the per-sample loops of a scalar state machine with a handful of numpy passes
(``maximum.accumulate`` / ``minimum.accumulate`` carry "the last/next index where X" along the array).
"""

from __future__ import annotations

import numpy as np

from detectors.batch import BoolArray, FloatArray, IntArray


def run_starts(cond: BoolArray, t: FloatArray, restart: BoolArray, carried: FloatArray) -> FloatArray:
    """For each sample, when the current unbroken run of ``cond`` began (NaN where ``cond`` is false).

    ``restart`` marks samples where a run cannot continue from the previous sample (each patient's
    first sample in the batch, and samples after a data gap). ``carried`` holds, at each patient's
    first sample, the run start carried over from the previous batch (NaN if no run was open); at
    a restart without a break (first sample, no gap) an open carried run continues.
    """
    n = len(cond)
    prev = np.zeros(n, dtype=np.bool_)
    prev[1:] = cond[:-1]
    begins = cond & (restart | ~prev)
    base = t.copy()
    # Continue the previous batch's run where the carried start exists (it is NaN after a gap).
    continues = begins & ~np.isnan(carried)
    base[continues] = carried[continues]
    last_begin = np.maximum.accumulate(np.where(begins, np.arange(n), 0))
    return np.where(cond, base[last_begin], np.nan)


def next_true(mask: BoolArray) -> IntArray:
    """For each index ``i``, the first ``j >= i`` with ``mask[j]``, or ``len(mask)`` if none."""
    n = len(mask)
    candidates = np.where(mask, np.arange(n, dtype=np.int64), n)
    return np.minimum.accumulate(candidates[::-1])[::-1]


def lower_bound(t: FloatArray, lo: IntArray, hi: IntArray, x: FloatArray) -> IntArray:
    """Per query ``k``: the first index in ``[lo[k], hi[k])`` with ``t >= x[k]`` (``hi[k]`` if none).

    ``t`` must be sorted ascending inside each ``[lo, hi)`` segment. A vectorized binary search: all
    queries advance together, O(log n) numpy steps.
    """
    lo = lo.copy()
    hi = hi.copy()
    last = max(len(t) - 1, 0)
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        below = t[np.minimum(mid, last)] < x
        lo = np.where(open_ & below, mid + 1, lo)
        hi = np.where(open_ & ~below, mid, hi)
