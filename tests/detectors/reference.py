"""Scalar reference of the detector engine, for tests only.

A plain per-sample state machine, written to be obviously right rather than fast: the property
tests prove that the vectorized :class:`detectors.Engine` produces exactly the same events.
Semantics (documented in ``detectors/rules.py`` and ``detectors/episodes.py``):

- per batch, samples sorted by (patient, metric, t), stably; a sample whose (patient, metric, t)
  equals the previous one, or whose t is not after the last processed t of that patient and metric,
  is dropped; a flagged or non-finite sample advances that watermark but is otherwise ignored;
- per usable sample and rule: a gap of more than ``max_gap_s`` since the previous usable sample
  (or no previous one) restarts all runs; runs of "beyond threshold" per level and of "back on the
  normal side of the clearing level"; a level is due after ``for_s``, clearing after ``clear_for_s``;
- no open alert: raise at the most severe due level unless ``t < cooldown_until``;
  open alert: clear if clearing is due (cooldown until ``t + cooldown_s``), else upgrade if a more
  severe level is due; a raise or an upgrade resets acknowledgement and escalation;
- ``tick(now)``: an open, unacknowledged, not yet escalated alert escalates once ``now >=
  raised_at + escalate_after_s`` of its level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from detectors.const import METRIC_CODES, SEVERITY_NAMES
from detectors.events import AlertEvent, alert_id
from detectors.rules import RuleSet, Severity, ThresholdRule
from detectors.threshold import threshold_message

Sample = tuple[str, str, float, float, int]  # patient, metric, t, value, flags


@dataclass
class RuleState:
    last_t: float | None = None
    runs: dict[int, float | None] = field(default_factory=lambda: {1: None, 2: None, 3: None})
    clear_run: float | None = None
    level: int = 0
    since: float = math.nan
    raised_at: float = math.nan
    acked: bool = False
    escalated: bool = False
    cooldown_until: float | None = None


class ReferenceEngine:
    """Same public behaviour as :class:`detectors.Engine`, one sample at a time."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.order = {rule.name: i for i, rule in enumerate(rules.rules)}
        self.watermark: dict[tuple[str, str], float] = {}
        self.states: dict[tuple[str, str], RuleState] = {}

    def _state(self, patient: str, rule: str) -> RuleState:
        return self.states.setdefault((patient, rule), RuleState())

    def process(self, samples: list[Sample]) -> list[AlertEvent]:
        events: list[tuple[tuple[float, str, int], AlertEvent]] = []
        previous: tuple[str, str, float] | None = None
        for patient, metric, t, value, flags in sorted(samples, key=lambda s: (s[0], METRIC_CODES[s[1]], s[2])):
            key = (patient, metric, t)
            if key == previous:
                continue
            previous = key
            mark = self.watermark.get((patient, metric))
            if mark is not None and t <= mark:
                continue
            self.watermark[(patient, metric)] = t
            if flags != 0 or not math.isfinite(value):
                continue
            for base in self.rules.rules:
                rule = self.rules.rule_for(patient, base.name)
                if rule.metric == metric and rule.enabled:
                    events.extend(self._step(patient, rule, t, value))
        return _ordered(events)

    def _step(self, patient: str, rule: ThresholdRule, t: float, value: float) -> list:
        st = self._state(patient, rule.name)
        if st.last_t is None or not t - st.last_t <= rule.max_gap_s:
            st.runs = {1: None, 2: None, 3: None}
            st.clear_run = None
        st.last_t = t
        sign = rule.direction.sign
        due, onset = 0, math.nan
        for lv in rule.levels:
            code = int(lv.severity)
            if sign * value > sign * lv.threshold:
                if st.runs[code] is None:
                    st.runs[code] = t
                start = st.runs[code]
                assert start is not None
                if t - start >= lv.for_s:
                    due, onset = code, start
            else:
                st.runs[code] = None
        for code in (1, 2, 3):
            if rule.level(Severity(code)) is None:
                st.runs[code] = None
        if sign * value <= sign * rule.clear_threshold:
            if st.clear_run is None:
                st.clear_run = t
            clear_due = t - st.clear_run >= rule.clear_for_s
        else:
            st.clear_run = None
            clear_due = False
        return self._latch(patient, rule, st, t, value, due, onset, clear_due)

    def _latch(self, patient, rule, st, t, value, due, onset, clear_due) -> list:
        if st.level == 0:
            if due and (st.cooldown_until is None or t >= st.cooldown_until):
                st.level, st.since, st.raised_at = due, onset, t
                st.acked = st.escalated = False
                return [self._event(patient, rule, "raised", t, value)]
            return []
        if clear_due:
            event = self._event(patient, rule, "cleared", t, value)
            st.level, st.since, st.raised_at = 0, math.nan, math.nan
            st.acked = st.escalated = False
            st.cooldown_until = t + rule.cooldown_s
            return [event]
        if due > st.level:
            st.level, st.raised_at = due, t
            st.acked = st.escalated = False
            return [self._event(patient, rule, "raised", t, value)]
        return []

    def _event(self, patient, rule, state, t, value, by=None):
        st = self._state(patient, rule.name)
        message = threshold_message(rule, state, st.level, value)
        if state == "acknowledged":
            message = f"Acknowledged by {by}: {message}"
        event = AlertEvent(
            alert_id=alert_id(patient, rule.name, st.since),
            patient=patient,
            rule=rule.name,
            severity=SEVERITY_NAMES[st.level - 1],  # type: ignore[arg-type]
            metric=rule.metric,
            state=state,
            time=float(t),
            value=float(value),
            message=message,
            since=st.since,
            by=by,
        )
        return (float(t), patient, self.order[rule.name]), event

    def tick(self, now: float) -> list[AlertEvent]:
        events = []
        for (patient, name), st in self.states.items():
            rule = self.rules.rule_for(patient, name)
            if st.level == 0 or st.acked or st.escalated:
                continue
            lv = rule.level(Severity(st.level))
            if lv is None or lv.escalate_after_s is None:
                continue
            if now >= st.raised_at + lv.escalate_after_s:
                st.escalated = True
                events.append(self._event(patient, rule, "escalated", now, math.nan))
        return _ordered(events)

    def acknowledge(self, aid: str, by: str, at: float) -> list[AlertEvent]:
        for (patient, name), st in self.states.items():
            if st.level and alert_id(patient, name, st.since) == aid:
                if st.acked:
                    return []
                st.acked = True
                rule = self.rules.rule_for(patient, name)
                return [self._event(patient, rule, "acknowledged", at, math.nan, by=by)[1]]
        return []

    def open_alert_ids(self) -> list[str]:
        return sorted(alert_id(p, name, st.since) for (p, name), st in self.states.items() if st.level)


def _ordered(keyed: list) -> list[AlertEvent]:
    keyed.sort(key=lambda pair: pair[0])
    return [event for _, event in keyed]
