"""Personal-baseline detector: deviation from the patient's own rolling robust baseline.

Readings are summarised as one mean per block of event time (``block_s``, hourly by default); the
baseline of a reading is the median of the block means of the blocks completed within the last
``window_s`` before its own block, and its scale 1.4826 x their MAD (floored at ``min_scale``).
The signal is the robust z-score ``(reading - median) / scale``. Per patient the state is a ring
of at most ``window_s / block_s`` (block id, mean) pairs plus the running sum and count of the
current block: compact and bounded, never raw history.

Vectorized: the readings of a batch are cut into (patient, block) segments; each patient's ring,
its carried partial block (if this batch completes it) and its segments are laid out in one flat
array, and every segment's baseline is a median over the sliding window of the ring-size entries
before it (``sliding_window_view`` + ``nanmedian``): a handful of numpy passes per batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detectors.batch import BoolArray, FloatArray, IntArray, MetricView
from detectors.columns import (
    StateColumn,
    appended,
    finite_or_nan,
    grown,
    grown_rows,
    nan_first,
    opt_float,
    same_nan,
    whole,
)
from detectors.const import CLEARED, ESCALATED, METRIC_LABELS
from detectors.errors import StateError
from detectors.events import format_duration, format_value
from detectors.rules import BaselineRule, Direction, Period, ThresholdRule
from detectors.signal import SignalDetector
from detectors.threshold import during, level_of

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


class BaselineDetector(SignalDetector):
    """One :class:`~detectors.rules.BaselineRule` over every patient."""

    def __init__(self, rule: BaselineRule) -> None:
        super().__init__(rule)
        self.block_s = rule.block_s
        self.size = rule.n_blocks
        self.ring_id: FloatArray = np.zeros((0, self.size))
        self.ring_mean: FloatArray = np.zeros((0, self.size))
        self.cur_id: FloatArray = np.zeros(0)
        self.cur_sum: FloatArray = np.zeros(0)
        self.cur_count: FloatArray = np.zeros(0)
        # Parameters per parameter row (see SignalDetector.rows).
        self.min_blocks: FloatArray = np.zeros(0)
        self.min_scale: FloatArray = np.zeros(0)
        # Derived, not exported: the baseline of the current block (valid while cache_id == cur_id).
        self.cache_id: FloatArray = np.zeros(0)
        self.cache_median: FloatArray = np.zeros(0)
        self.cache_scale: FloatArray = np.zeros(0)

    def resize_state(self, n: int) -> None:
        """Room for ``n`` patients' block rings."""
        self.ring_id = grown_rows(self.ring_id, n, np.nan)
        self.ring_mean = grown_rows(self.ring_mean, n, np.nan)
        self.cur_id = grown(self.cur_id, n, np.nan)
        self.cur_sum = grown(self.cur_sum, n, 0.0)
        self.cur_count = grown(self.cur_count, n, 0.0)
        self.cache_id = grown(self.cache_id, n, np.nan)
        self.cache_median = grown(self.cache_median, n, np.nan)
        self.cache_scale = grown(self.cache_scale, n, np.nan)

    def add_row_extra(self, rule: ThresholdRule) -> None:
        """The baseline parameters of a new parameter row."""
        assert isinstance(rule, BaselineRule)
        self.min_blocks = appended(self.min_blocks, float(rule.min_blocks))
        self.min_scale = appended(self.min_scale, rule.min_scale)

    def configure(self, patient: int, rule: ThresholdRule) -> None:
        """Apply a per-patient override (block and window are fixed per rule: they size the state)."""
        assert isinstance(rule, BaselineRule)
        if (rule.block_s, rule.window_s) != (self.block_s, self.block_s * self.size):
            raise ValueError(f"an override of {self.name!r} must keep its block and window")
        super().configure(patient, rule)
        self.cache_id[patient] = np.nan

    def signal(self, view: MetricView) -> FloatArray:
        """Per reading: its robust z-score against the baseline of the completed blocks before it.

        Live batches rarely cross a block boundary: when every patient's readings fall in the block
        it is already in, its cached baseline serves and only the running sums move.
        """
        seg = _segments(view, self.block_s)
        if bool(seg.first.all()) and bool((seg.block == self.cache_id[seg.patient]).all()):
            gp = seg.patient
            self.cur_sum[gp] += seg.sums
            self.cur_count[gp] += seg.counts
            median, scale = view.per_sample(self.cache_median[gp]), view.per_sample(self.cache_scale[gp])
            z: FloatArray = (view.value - median) / scale
            return z
        return self._signal_new_blocks(view, seg)

    def _signal_new_blocks(self, view: MetricView, seg: _Segments) -> FloatArray:
        """The general case: some readings open a new block, so baselines are recomputed."""
        merged = seg.block[seg.first] == self.cur_id[seg.patient[seg.first]]
        sums, counts = seg.sums.copy(), seg.counts.copy()
        carried_patient = seg.patient[seg.first]
        sums[seg.first] += np.where(merged, self.cur_sum[carried_patient], 0.0)
        counts[seg.first] += np.where(merged, self.cur_count[carried_patient], 0.0)
        ext_id, ext_mean, pos = self._layout(view, seg, merged, sums / counts)
        windows_id = sliding_window_view(ext_id, self.size)[pos - self.size]
        windows_mean = sliding_window_view(ext_mean, self.size)[pos - self.size]
        fresh = windows_id >= (seg.block - self.size)[:, None]
        values = np.where(fresh, windows_mean, np.nan)
        median, scale = self._scale(values, seg.patient)
        last = np.flatnonzero(seg.last)
        self._keep(view.group_patient, ext_id, ext_mean, pos[last], seg, sums[last], counts[last])
        self.cache_id[view.group_patient] = seg.block[last]
        self.cache_median[view.group_patient] = median[last]
        self.cache_scale[view.group_patient] = scale[last]
        per_sample = np.repeat(np.arange(len(seg.block)), seg.counts.astype(np.int64))
        return (view.value - median[per_sample]) / scale[per_sample]

    def _layout(
        self, view: MetricView, seg: _Segments, merged: np.ndarray, means: FloatArray
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        """Per patient ``[ring..., completed partial block?, segments...]`` in flat arrays; segment positions."""
        gp = view.group_patient
        completes = ~merged & (self.cur_count[gp] > 0)
        n_segments = np.add.reduceat(np.ones(len(seg.block), np.int64), np.flatnonzero(seg.first))
        length = self.size + completes.astype(np.int64) + n_segments
        offset = np.cumsum(length) - length
        ext_id = np.full(int(length.sum()), np.nan)
        ext_mean = np.full_like(ext_id, np.nan)
        ring = offset[:, None] + np.arange(self.size)
        ext_id[ring] = self.ring_id[gp]
        ext_mean[ring] = self.ring_mean[gp]
        partial = offset[completes] + self.size
        ext_id[partial] = self.cur_id[gp[completes]]
        ext_mean[partial] = self.cur_sum[gp[completes]] / self.cur_count[gp[completes]]
        group_of_seg = np.cumsum(seg.first) - 1
        rank = np.arange(len(seg.block)) - np.flatnonzero(seg.first)[group_of_seg]
        pos = offset[group_of_seg] + self.size + completes[group_of_seg] + rank
        ext_id[pos] = seg.block
        ext_mean[pos] = means
        return ext_id, ext_mean, pos

    def _scale(self, values: FloatArray, patient: IntArray) -> tuple[FloatArray, FloatArray]:
        """Median and robust scale of each segment's baseline window (NaN median: not enough blocks)."""
        count = (~np.isnan(values)).sum(axis=1)
        enough = count >= self.min_blocks[self.rows.of(patient)]
        median = _row_median(values, count)
        mad = _row_median(np.abs(values - median[:, None]), count)
        scale = np.maximum(MAD_TO_SIGMA * mad, self.min_scale[self.rows.of(patient)])
        return np.where(enough, median, np.nan), scale

    def _keep(
        self,
        gp: IntArray,
        ext_id: FloatArray,
        ext_mean: FloatArray,
        last_pos: IntArray,
        seg: _Segments,
        sums: FloatArray,
        counts: FloatArray,
    ) -> None:
        """The entries before each patient's last segment become its ring; that segment its current block."""
        self.ring_id[gp] = sliding_window_view(ext_id, self.size)[last_pos - self.size]
        self.ring_mean[gp] = sliding_window_view(ext_mean, self.size)[last_pos - self.size]
        self.cur_id[gp] = seg.block[seg.last]
        self.cur_sum[gp] = sums
        self.cur_count[gp] = counts

    def export_extra(self, patient: int) -> dict[str, Any]:
        """The block ring and the current block."""
        keep = ~np.isnan(self.ring_id[patient])
        blocks = [
            [int(i), float(m)] for i, m in zip(self.ring_id[patient, keep], self.ring_mean[patient, keep], strict=True)
        ]
        current = None
        if self.cur_count[patient] > 0:
            current = [int(self.cur_id[patient]), float(self.cur_sum[patient]), int(self.cur_count[patient])]
        return {"blocks": blocks, "current": current}

    def extra_columns(self) -> list[StateColumn]:
        """The block ring and the current block (not the cached baseline: it is derived)."""
        return [(self.ring_id, 0), (self.ring_mean, 0), (self.cur_id, 0), (self.cur_sum, 0), (self.cur_count, 0)]

    def settle_extra(self, blocks: list[FloatArray]) -> BoolArray:
        """Which rows of block rings and current blocks an export and import would leave as they are:
        ring padding (NaN id and mean) in front, whole finite ids with finite means; a current block
        with a whole id, a finite sum and a whole count, or none (NaN id, sum and count 0)."""
        ring_id, ring_mean, cur_id, cur_sum, cur_count = blocks
        present = ~np.isnan(ring_id)
        ring = (nan_first(ring_id) & same_nan(ring_id, ring_mean) & finite_or_nan(ring_mean)
                & whole(np.where(present, ring_id, 1.0)))
        block = np.concatenate((cur_id, cur_sum, cur_count), axis=1)
        counting = cur_count[:, 0] > 0
        none = np.isnan(cur_id[:, 0]) & (block[:, 1:] == 0).all(axis=1) & ~np.signbit(block[:, 1:]).any(axis=1)
        current = np.where(counting, whole(block[:, [0, 2]]) & np.isfinite(cur_sum[:, 0]), none)
        ok: BoolArray = ring & current
        return ok

    def import_extra(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore the block ring and the current block."""
        blocks = record.get("blocks", [])
        current = record.get("current")
        if not isinstance(blocks, list) or len(blocks) > self.size:
            raise StateError(f"rule {self.name}: blocks must be a list of at most {self.size} [id, mean] pairs")
        rows = [_pair(b) for b in blocks]
        self.ring_id[patient] = np.nan
        self.ring_mean[patient] = np.nan
        for j, (block, mean) in enumerate(rows, start=self.size - len(rows)):
            self.ring_id[patient, j], self.ring_mean[patient, j] = block, mean
        self.cur_id[patient], self.cur_sum[patient], self.cur_count[patient] = np.nan, 0.0, 0.0
        self.cache_id[patient] = np.nan
        if current is not None:
            if not isinstance(current, list) or len(current) != 3:
                raise StateError(f"rule {self.name}: current must be [block, sum, count]")
            values = {"b": current[0], "s": current[1], "c": current[2]}
            block, total, count = opt_float(values, "b"), opt_float(values, "s"), opt_float(values, "c")
            if not (block.is_integer() and math.isfinite(total) and count.is_integer() and count >= 1):
                raise StateError(f"rule {self.name}: current must be [whole block id, sum, count of at least 1]")
            self.cur_id[patient], self.cur_sum[patient], self.cur_count[patient] = block, total, count

    def describe(self, rule: ThresholdRule, period: Period | None, state: str, level: int, value: float) -> str:
        """E.g. "Heart rate 4 robust SD above the patient's 24 h baseline for 30 min (now 118 bpm)"."""
        assert isinstance(rule, BaselineRule)
        label = METRIC_LABELS[rule.metric]
        now = "" if math.isnan(value) else f" (now {format_value(rule.metric, value)})"
        side = "above" if rule.direction is Direction.ABOVE else "below"
        window = format_duration(rule.window_s)
        if state == CLEARED:
            clear, _ = rule.period_clear(period)
            return (
                f"{label} back within {abs(clear):g} robust SD of the patient's {window} baseline{during(period)}{now}"
            )
        lv = level_of(rule, period, level)
        z = abs(lv.threshold) if lv else 0.0
        text = f"{label} {z:g} robust SD {side} the patient's {window} baseline"
        if lv is not None and lv.for_s:
            text += f" for {format_duration(lv.for_s)}"
        text += during(period)
        if state == ESCALATED:
            return f"{text}: alert unacknowledged"
        return text + now


class _Segments:
    """Runs of one patient's readings in one block: first/last flags, block ids, sums and counts."""

    def __init__(self, view: MetricView, block_s: float) -> None:
        block = np.floor(view.t / block_s)
        new = view.first_mask()
        new[1:] |= block[1:] != block[:-1]
        starts = np.flatnonzero(new)
        self.block = block[starts]
        self.patient = view.patient[starts]
        self.sums = np.add.reduceat(view.value, starts)
        self.counts = np.diff(np.append(starts, len(view.t))).astype(np.float64)
        self.first = np.zeros(len(starts), np.bool_)
        self.first[np.searchsorted(starts, view.starts)] = True
        self.last = np.zeros(len(starts), np.bool_)
        self.last[:-1] = self.first[1:]
        if len(starts):
            self.last[-1] = True


def _row_median(values: FloatArray, count: IntArray) -> FloatArray:
    """Median of the non-NaN entries of each row (NaN for none): sort once, average the middle two.

    np.nanmedian goes through masked arrays for short rows, far slower; this is also exactly the
    arithmetic of ``statistics.median`` ((a + b) / 2), which the scalar reference uses.
    """
    ordered = np.sort(values, axis=1)  # NaN sorts last
    rows = np.arange(len(values))
    low = ordered[rows, np.maximum((count - 1) // 2, 0)]
    high = ordered[rows, np.minimum(count // 2, values.shape[1] - 1)]
    middle = np.where(count % 2 == 1, low, (low + high) / 2)
    return np.where(count > 0, middle, np.nan)


def _segments(view: MetricView, block_s: float) -> _Segments:
    return _Segments(view, block_s)


def _pair(entry: Any) -> tuple[float, float]:
    if not isinstance(entry, list) or len(entry) != 2:
        raise StateError("a baseline block must be [id, mean]")
    values = {"b": entry[0], "m": entry[1]}
    block, mean = opt_float(values, "b"), opt_float(values, "m")
    if not block.is_integer() or math.isnan(mean):
        raise StateError("a baseline block needs a whole id and a mean")
    return block, mean
