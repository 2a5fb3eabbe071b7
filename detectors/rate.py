"""Rate-of-change detector (mg/dL/min, bpm/min) with noise guards: N consecutive readings and a level gate.

The signal at a reading is the least extreme of the last ``consecutive`` rates between consecutive
readings (see :class:`~detectors.rules.RateRule`), computed for all readings of a batch at once from
sliding windows over the patient's recent readings (:class:`~detectors.history.History`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors.batch import BoolArray, FloatArray, MetricView
from detectors.columns import StateColumn, appended
from detectors.const import CLEARED, ESCALATED, METRIC_LABELS, METRIC_UNITS, RATE_MAX_READINGS
from detectors.events import format_value
from detectors.history import History
from detectors.rules import Direction, Period, RateRule, ThresholdRule
from detectors.signal import SignalDetector
from detectors.threshold import during, level_of


class RateDetector(SignalDetector):
    """One :class:`~detectors.rules.RateRule` over every patient."""

    def __init__(self, rule: RateRule) -> None:
        super().__init__(rule)
        self.history = History(RATE_MAX_READINGS)
        # Noise guards per parameter row (see SignalDetector.rows).
        self.consecutive = np.zeros(0, np.int64)
        self.gate_below: FloatArray = np.zeros(0)
        self.gate_above: FloatArray = np.zeros(0)

    def resize_state(self, n: int) -> None:
        """Room for ``n`` patients' recent readings."""
        self.history.resize(n)

    def add_row_extra(self, rule: ThresholdRule) -> None:
        """The noise guards of a new parameter row."""
        assert isinstance(rule, RateRule)
        self.consecutive = appended(self.consecutive, rule.consecutive)
        self.gate_below = appended(self.gate_below, _or_nan(rule.gate_below))
        self.gate_above = appended(self.gate_above, _or_nan(rule.gate_above))

    def signal(self, view: MetricView) -> FloatArray:
        """Per reading: the least extreme of its last N rates (per minute); NaN across a gap or too early."""
        n_max = int(self.consecutive[self.rows.used()].max())
        t, v = self.history.windows(view, n_max + 1)
        r = self.rows.of(view.patient)
        dt = np.diff(t, axis=1)
        # A rate needs time to pass: a stored history whose times do not increase (a damaged state
        # record; the engine never keeps two readings of one time) gives no rate, not 0/0 or x/0.
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.diff(v, axis=1) / dt * 60.0
        signed = np.where((dt > 0) & (dt <= self.max_gap_s[r, None]), self.sign * rate, np.nan)
        # Columns older than the patient's own N do not count (+inf never wins a minimum).
        too_old = np.arange(n_max)[None, :] < (n_max - self.consecutive[r])[:, None]
        least = np.min(np.where(too_old, np.inf, signed), axis=1)
        gated = (view.value >= self.gate_below[r]) | (view.value <= self.gate_above[r])
        # Outside the gate the reading counts as normal: -inf in signed space.
        return self.sign * np.where(gated, -np.inf, least)

    def export_extra(self, patient: int) -> dict[str, Any]:
        """The recent readings the next rates need."""
        return {"history": self.history.export_patient(patient)}

    def extra_columns(self) -> list[StateColumn]:
        """The recent readings."""
        return self.history.state_columns()

    def settle_extra(self, blocks: list[FloatArray]) -> BoolArray:
        """Which rows of recent readings an export and import would leave as they are."""
        return self.history.settle(blocks)

    def import_extra(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore the recent readings."""
        self.history.import_patient(patient, record.get("history"))

    def describe(self, rule: ThresholdRule, period: Period | None, state: str, level: int, value: float) -> str:
        """E.g. "Glucose falling faster than 2 mg/dL/min for 3 readings, below 120 mg/dL (now 98 mg/dL)"."""
        assert isinstance(rule, RateRule)
        return rate_message(rule, period, state, level, value)


def rate_text(metric: str, direction: Direction, threshold: float) -> str:
    """``falling faster than 2 mg/dL/min`` and the like."""
    unit = f"{METRIC_UNITS[metric]}/min"
    if direction is Direction.BELOW and threshold < 0:
        return f"falling faster than {-threshold:g} {unit}"
    if direction is Direction.ABOVE and threshold > 0:
        return f"rising faster than {threshold:g} {unit}"
    return f"changing {direction.value} {threshold:g} {unit}"


def rate_message(rule: RateRule, period: Period | None, state: str, level: int, value: float) -> str:
    """The text of an event of a rate rule."""
    label = METRIC_LABELS[rule.metric]
    now = "" if np.isnan(value) else f" (now {format_value(rule.metric, value)})"
    if state == CLEARED:
        clear, _ = rule.period_clear(period)
        return f"{label} no longer {rate_text(rule.metric, rule.direction, clear)}{during(period)}{now}"
    lv = level_of(rule, period, level)
    text = f"{label} {rate_text(rule.metric, rule.direction, lv.threshold if lv else 0.0)}"
    text += f" for {rule.consecutive} readings"
    if rule.gate_below is not None:
        text += f", below {format_value(rule.metric, rule.gate_below)}"
    if rule.gate_above is not None:
        text += f", above {format_value(rule.metric, rule.gate_above)}"
    text += during(period)
    if state == ESCALATED:
        return f"{text}: alert unacknowledged"
    return text + now


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value
