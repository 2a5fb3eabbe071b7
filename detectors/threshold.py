"""Multi-level threshold detector: the reading itself is the signal.

All the machinery (hysteresis, minimum durations, gap handling, cooldown, schedules, flapping) is
shared with the other signal rules in :mod:`detectors.signal`; this module adds the messages.
"""

from __future__ import annotations

import math

from detectors.const import CLEARED, ESCALATED, METRIC_LABELS, SEVERITY_NAMES
from detectors.events import format_duration, format_value
from detectors.rules import Direction, Period, Severity, ThresholdLevel, ThresholdRule
from detectors.signal import SignalDetector


class ThresholdDetector(SignalDetector):
    """One :class:`~detectors.rules.ThresholdRule`, applied to every patient (with overrides)."""

    # A "HI" reading is above any threshold, a "LO" one below any (issue 14).
    beyond_range = True

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
