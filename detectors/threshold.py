"""Multi-level threshold detector: the reading itself is the signal, or a running median of it.

All the machinery (hysteresis, minimum durations, gap handling, cooldown, schedules, flapping) is
shared with the other signal rules in :mod:`detectors.signal`; this module adds the smoothing of a
fast, noisy reading (``median_of``: the median of the last readings, as a cardiac monitor averages
the heart rate over several beats) and the messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors.batch import BoolArray, FloatArray, MetricView
from detectors.columns import StateColumn, finite_or_nan, opt_float
from detectors.const import CLEARED, ESCALATED, METRIC_LABELS, SEVERITY_NAMES
from detectors.errors import StateError
from detectors.events import format_duration, format_value
from detectors.rules import Direction, Period, Severity, ThresholdLevel, ThresholdRule
from detectors.runs import recent_windows, window_median
from detectors.signal import SignalDetector


class ThresholdDetector(SignalDetector):
    """One :class:`~detectors.rules.ThresholdRule`, applied to every patient (with overrides)."""

    # A "HI" reading is above any threshold, a "LO" one below any (issue 14).
    beyond_range = True

    def __init__(self, rule: ThresholdRule) -> None:
        super().__init__(rule)
        # ``median_of`` sizes the state, so it is the rule's for every patient (not overridable).
        self.median_of = rule.median_of
        # State per patient: the last ``median_of - 1`` readings, most recent first (NaN: none).
        self.recent: FloatArray = np.zeros((0, max(self.median_of - 1, 0)))
        # The window and ``away`` came after packed records of version 2.
        self.added_entries = self.recent.shape[1] + SignalDetector.added_entries

    def resize_state(self, n: int) -> None:
        """Room for ``n`` patients' recent readings."""
        if n > len(self.recent):
            extra = np.full((n - len(self.recent), self.recent.shape[1]), np.nan)
            self.recent = np.concatenate((self.recent, extra))

    def configure(self, patient: int, rule: ThresholdRule) -> None:
        """Apply a per-patient override (see :meth:`SignalDetector.configure`); it keeps ``median_of``."""
        if rule.median_of != self.median_of:
            raise ValueError(f"an override of {self.name!r} must keep the rule's median_of")
        super().configure(patient, rule)

    def signal(self, view: MetricView) -> FloatArray:
        """The reading, or the median of the last ``median_of`` readings where the rule has one.

        A median of values none of which is beyond the loosest threshold is not beyond it either: the
        medians are computed only for patients with a reading beyond it (in the batch or in their
        window), an open alert or an open run; the others' readings are returned as they are (they
        meet no level and, without an alert, no clearing matters). Every patient's window moves on.
        """
        if self.median_of <= 1:
            return view.value
        restart, may_continue = self._breaks(view)
        gp = view.group_patient
        fresh, first = restart & ~may_continue, view.first_mask()
        carried = self.recent[gp]
        loosest_rows = np.fmin.reduce(self.loose_threshold[0], axis=0)  # per parameter row, signed; NaN: no level
        loosest = np.full(len(gp), loosest_rows[0]) if self.rows.uniform else loosest_rows[self.rows.of(gp)]
        top = np.maximum.reduceat(self.sign * view.value, view.starts)  # per group, signed
        with np.errstate(invalid="ignore"):
            recent_beyond = (self.sign * carried > loosest[:, None]).any(axis=1)
        candidates = (top > loosest) | recent_beyond | (self.episodes.level[gp] > 0)
        if self._tolerant:
            candidates |= ~np.isnan(self.run_start[:, gp]).all(axis=0)
        k = self.median_of
        ends = view.ends - 1
        every = np.arange(len(gp))
        self.recent[gp] = recent_windows(view.value, fresh, first, carried, k, ends, every)[:, :-1]
        if not candidates.any():
            return view.value
        rows = np.flatnonzero(view.per_sample(candidates))
        groups = np.repeat(every[candidates], (view.ends - view.starts)[candidates])
        y = view.value.copy()
        y[rows] = window_median(recent_windows(view.value, fresh, first, carried, k, rows, groups))
        return y

    def export_extra(self, patient: int) -> dict[str, Any]:
        """The patient's recent readings, if the rule takes a median and there are any."""
        recent = [v for v in self.recent[patient].tolist() if v == v]  # v == v: not NaN
        return {"recent": recent} if recent else {}

    def import_extra(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore :meth:`export_extra`'s output (absent: no readings yet)."""
        recent = record.get("recent", [])
        width = self.recent.shape[1]
        if not isinstance(recent, list) or len(recent) > width:
            raise StateError(f"rule {self.name}: recent must be a list of at most {width} readings")
        values = [opt_float({"recent": v}, "recent") for v in recent]
        if any(v != v for v in values):
            raise StateError(f"rule {self.name}: recent readings must be numbers")
        self.recent[patient] = values + [math.nan] * (width - len(values))

    def extra_columns(self) -> list[StateColumn]:
        """The recent readings per patient."""
        return [(self.recent, 0)]

    def settle_extra(self, blocks: list[FloatArray]) -> BoolArray:
        """Rows whose readings are finite, most recent first, none after a NaN (a record's order)."""
        block = blocks[0]
        nan = np.isnan(block)
        ordered = ~(nan[:, :-1] & ~nan[:, 1:]).any(axis=1) if block.shape[1] > 1 else np.ones(len(block), np.bool_)
        return finite_or_nan(block) & ordered

    def describe(self, rule: ThresholdRule, period: Period | None, state: str, level: int, value: float) -> str:
        """What a nurse reads, e.g. "Heart rate above 120 bpm for 10 min (now 134 bpm)"."""
        return threshold_message(rule, state, level, value, period)


def level_of(rule: ThresholdRule, period: Period | None, level: int) -> ThresholdLevel | None:
    """The level with severity code ``level`` in force during ``period``."""
    return next((lv for lv in rule.period_levels(period) if lv.severity == Severity(level)), None)


def during(period: Period | None) -> str:
    """`` (night)`` for a scheduled period, nothing otherwise."""
    return f" ({period.name})" if period is not None else ""


def threshold_message(rule: ThresholdRule, state: str, level: int, value: float, period: Period | None = None) -> str:
    """The text of an event of ``rule`` at severity code ``level`` caused by ``value`` (NaN: none)."""
    lv = level_of(rule, period, level)
    label = METRIC_LABELS[rule.metric]
    if state == CLEARED:
        side = "at or below" if rule.direction is Direction.ABOVE else "at or above"
        clear_threshold, clear_for_s = rule.period_clear(period)
        held = f" for {format_duration(clear_for_s)}" if clear_for_s else ""
        text = f"{label} back {side} {format_value(rule.metric, clear_threshold)}{held}{during(period)}"
        return f"{text} (now {format_value(rule.metric, value)})"
    condition = f"{label} {rule.direction.value} " + (
        format_value(rule.metric, lv.threshold) if lv is not None else "threshold"
    )
    if lv is not None and lv.for_s:
        condition += f" for {format_duration(lv.for_s)}"
    condition += during(period)
    if state == ESCALATED:
        waited = lv.escalate_after_s if lv is not None and lv.escalate_after_s else 0.0
        return f"{condition}: {SEVERITY_NAMES[level - 1]} alert unacknowledged for {format_duration(waited)}"
    if math.isnan(value):
        return condition
    return f"{condition} (now {format_value(rule.metric, value)})"
