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


def tolerant_runs(
    met: BoolArray,
    t: FloatArray,
    restart: BoolArray,
    may_continue: BoolArray,
    carried_start: FloatArray,
    carried_away: FloatArray,
    tolerate: FloatArray | float,
) -> tuple[FloatArray, FloatArray]:
    """:func:`run_starts` for runs that survive short returns across: an *excursion* (consecutive
    samples where ``met`` is false) breaks the run only if it lasts ``tolerate`` seconds or more,
    from its first sample to the next sample that meets (or to any of its own samples).

    ``restart`` marks each patient's first sample in the batch and samples after a data gap;
    ``may_continue`` the first samples without a gap, where the run carried from the previous batch
    continues: ``carried_start`` (its start, NaN: none) and ``carried_away`` (when the excursion it
    was in at the end of that batch began, NaN: none) are read there. A gap always breaks the run.

    Returns, per sample, the start of the run open at it (NaN: none; at a sample that meets, the
    start of its run) and when the excursion it is in began (NaN where ``met`` or no run is open):
    at each patient's last sample, the state to carry. With ``tolerate`` 0 every excursion breaks
    the run, as :func:`run_starts`.
    """
    n = len(met)
    idx = np.arange(n)
    prev_met = np.zeros(n, dtype=np.bool_)
    prev_met[1:] = met[:-1]
    prev_met &= ~restart  # only a previous sample of the same run counts
    away_now = ~met
    has_carried = may_continue & ~np.isnan(carried_start)
    # Where each excursion began: its first sample, or the carried excursion's start.
    begins_away = away_now & (restart | prev_met)
    away_base = t.copy()
    carried_in = away_now & has_carried & ~np.isnan(carried_away)
    away_base[carried_in] = carried_away[carried_in]
    # An excursion follows an open run if a sample meeting came just before it, or a run was carried in.
    opened = begins_away & (prev_met | has_carried)
    at = np.maximum.accumulate(np.where(begins_away, idx, 0))
    away = np.where(away_now, away_base[at], np.nan)
    alive = away_now & opened[at] & (t - away < tolerate)
    # A sample that meets continues the run before it: right after one that met, or after an
    # excursion still alive that ends in time; a first sample continues the carried run if any.
    prev_alive = np.zeros(n, dtype=np.bool_)
    prev_alive[1:] = alive[:-1]
    prev_away = np.full(n, np.nan)
    prev_away[1:] = away[:-1]
    continues = ~restart & (prev_met | (prev_alive & (t - prev_away < tolerate)))
    first_ok = has_carried & (np.isnan(carried_away) | (t - carried_away < tolerate))
    continues |= restart & first_ok
    # The run's start changes only at marks: each patient's first sample, a new run, a run's end.
    mark = restart | (met & ~continues) | (away_now & ~alive)
    value = np.where(met, np.where(continues, carried_start, t), np.where(alive, carried_start, np.nan))
    start = value[np.maximum.accumulate(np.where(mark, idx, 0))]
    return start, np.where(alive, away, np.nan)


# A "HI"/"LO" (+-inf) enters a median as the largest/smallest finite float: still beyond any
# threshold, and a window stays something a JSON checkpoint can hold.
_FINITE_MAX = float(np.finfo(np.float64).max)


def recent_windows(
    x: FloatArray, fresh: BoolArray, first: BoolArray, carried: FloatArray, k: int, rows: IntArray, groups: IntArray
) -> FloatArray:
    """For the samples ``rows`` (of patient groups ``groups``): each one's value and the (up to)
    ``k - 1`` usable values before it, per patient, most recent first (rows × ``k``, NaN where there
    are fewer).

    A window starts anew where ``fresh`` (a data gap, nothing carried); at each patient's other
    ``first`` sample it continues with ``carried`` (per patient group: that patient's last ``k - 1``
    values, most recent first, NaN: none). "HI"/"LO" values (+-inf) enter as
    the largest/smallest finite float. A window's row at a patient's last sample, without its last
    column, is the state to carry.
    """
    n = len(x)
    start = np.maximum.accumulate(np.where(fresh | first, np.arange(n), 0))[rows]
    at = rows[:, None] - np.arange(k)[None, :]  # the sample at each lag, if it is the patient's since start
    own = at >= start[:, None]
    # Lags before the batch's first sample of the patient come from what it carried (if it continues):
    # the sample just before ``start`` is the carried window's column 0.
    back = np.clip(start[:, None] - at - 1, 0, k - 2)
    from_carried = ((first & ~fresh)[start])[:, None] & ~own
    windows = np.where(own, x[np.maximum(at, 0)], np.nan)
    if from_carried.any():
        windows = np.where(from_carried, carried[groups[:, None], back], windows)
    return np.asarray(np.clip(windows, -_FINITE_MAX, _FINITE_MAX))


def window_median(windows: FloatArray) -> FloatArray:
    """The median of each row's values (NaN: none; of an even count, ``0.5 a + 0.5 b`` of the middle
    two). No other arithmetic: how a stream is cut into batches cannot change a value."""
    ordered = np.sort(windows, axis=1)  # NaN last
    count = windows.shape[1] - np.isnan(windows).sum(axis=1)
    rows = np.arange(len(windows))
    return np.asarray(0.5 * ordered[rows, (count - 1) // 2] + 0.5 * ordered[rows, count // 2])
