"""Scalar reference of the detector engine, for tests only.

A plain per-sample state machine, written to be obviously right rather than fast: the property
tests prove that the vectorized :class:`detectors.Engine` produces exactly the same events.
Semantics (documented in ``detectors/rules.py``, ``detectors/signal.py`` and ``detectors/episodes.py``):

- per batch, samples sorted by (patient, metric, device, t), stably; a sample whose (patient,
  metric, device, t) equals the previous one, or whose t is not after the last seen t of that
  patient, metric and device, is dropped; a quality-flagged or non-finite sample advances that
  watermark but is otherwise ignored; a range-flagged one ("HI"/"LO") is +inf/-inf for threshold
  and staleness rules and skipped by the others;
- each rule takes its metric's usable samples (of devices matching its ``device_prefix`` and not
  its ``exclude_device_prefix``) in
  (t, device id) order and skips any not after the last sample it processed for the patient;
- per signal-rule sample: the type's signal (the value, a rate, a forecast, a robust z-score or
  an AF verdict, each computed here from scratch with plain Python); a gap of more than
  ``max_gap_s`` since the rule's previous sample (or none) restarts all runs; the period of the
  day picks the levels and clearing condition; runs of "beyond threshold" per level and of "on the
  normal side of the clearing level" (a level's run survives samples back across, from the first
  of them to the next beyond, lasting less than ``tolerate_s``); a level is due after ``for_s``, clearing after
  ``clear_for_s`` (``max(clear_for_s, hold)`` for an episode held by flapping suppression);
- no open alert: raise at the most severe due level unless ``t < cooldown_until`` (flapping: held
  if it is the K-th raise within the window); open alert: clear if clearing is due (cooldown until
  ``t + cooldown_s``), else upgrade if a more severe level is due; a raise or an upgrade resets
  acknowledgement and escalation and starts the escalation clock at max(t, processing time);
- ``tick(now)``: staleness raises/upgrades, then an open, unacknowledged, not yet escalated alert
  escalates once ``now >= escalate_from + escalate_after_s`` of its level.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from detectors import af_model, forecast
from detectors.batch import PatientRegistry
from detectors.const import (
    ACK_CLOCK_SLACK_S,
    FLAG_ABOVE_RANGE,
    FLAP_SLOTS,
    FORECAST_MAX_POINTS,
    METRIC_CODES,
    RANGE_FLAGS,
    RATE_MAX_READINGS,
    SEVERITY_NAMES,
)
from detectors.engine import build_detector
from detectors.events import AlertEvent, alert_id
from detectors.rules import (
    BaselineRule,
    Direction,
    ForecastRule,
    Period,
    RateRule,
    RhythmRule,
    RuleSet,
    Severity,
    StalenessRule,
    ThresholdRule,
)
from detectors.staleness import staleness_message

Sample = tuple  # (patient, metric, t, value, flags[, device])


def _compares_values(rule: Any) -> bool:
    """Threshold and staleness rules take "HI"/"LO" samples (as +inf/-inf); computed signals skip them."""
    return isinstance(rule, StalenessRule) or type(rule) is ThresholdRule


@dataclass
class RuleState:
    last_t: float | None = None
    runs: dict[int, float | None] = field(default_factory=lambda: {1: None, 2: None, 3: None})
    away: dict[int, float | None] = field(default_factory=lambda: {1: None, 2: None, 3: None})
    window: list[float] = field(default_factory=list)  # threshold rules with median_of: last readings
    clear_run: float | None = None
    level: int = 0
    since: float = math.nan
    raised_at: float = math.nan
    escalate_from: float = math.nan
    acked: bool = False
    escalated: bool = False
    cooldown_until: float | None = None
    held: bool = False
    recent: list[float] = field(default_factory=list)
    history: list[tuple[float, float]] = field(default_factory=list)  # rate, forecast, rhythm
    beats: int = 0
    verdict: float = math.nan
    verdicts: list[float] = field(default_factory=list)
    blocks: list[tuple[float, float]] = field(default_factory=list)  # baseline (id, mean)
    current: tuple[float, float, float] | None = None  # baseline (id, sum, count)
    anchor: float | None = None  # staleness
    pending: bool = False
    watched: bool = False


class ReferenceEngine:
    """Same public behaviour as :class:`detectors.Engine`, one sample at a time."""

    def __init__(self, rules: RuleSet, enrolled: tuple[str, ...] = ()) -> None:
        self.rules = rules
        self.order = {rule.name: i for i, rule in enumerate(rules.rules)}
        self.devices = PatientRegistry([""])
        self.watermark: dict[tuple[str, str, int], float] = {}
        self.states: dict[tuple[str, str], RuleState] = {}
        self.texts = {rule.name: build_detector(rule) for rule in rules.rules}
        self.enroll(enrolled)

    def _state(self, patient: str, rule: str) -> RuleState:
        return self.states.setdefault((patient, rule), RuleState())

    # -- input ----------------------------------------------------------------------------------

    def process(self, samples: list[Sample], now: float | None = None) -> list[AlertEvent]:
        devices = [s[5] if len(s) > 5 else "" for s in samples]
        codes = self.devices.indices(devices).tolist() if samples else []
        rows = [(*s[:5], dev, code) for s, dev, code in zip(samples, devices, codes, strict=True)]
        streams: dict[tuple[str, str], list[tuple]] = {}
        previous = None
        for row in sorted(rows, key=lambda r: (r[0], METRIC_CODES[r[1]], r[6], r[2])):
            patient, metric, t, value, flags, _, code = row
            key = (patient, metric, code, t)
            if key == previous:
                continue
            previous = key
            mark = self.watermark.get((patient, metric, code))
            if mark is not None and t <= mark:
                continue
            self.watermark[(patient, metric, code)] = t
            if flags & ~RANGE_FLAGS or flags & RANGE_FLAGS == RANGE_FLAGS or not math.isfinite(value):
                continue
            streams.setdefault((patient, metric), []).append(row)
        events: list = []
        for (patient, metric), stream in streams.items():
            stream.sort(key=lambda r: (r[2], r[5]))  # at equal times the device id sorting first wins
            for base in self.rules.rules:
                if base.metric == metric:
                    events.extend(self._rule_stream(patient, base.name, stream, now))
        return _ordered(events)

    def _rule_stream(self, patient: str, name: str, stream: list[tuple], now: float | None) -> list:
        rule = self.rules.rule_for(patient, name)
        out: list = []
        for _, _, t, value, flags, dev, _ in stream:
            if rule.device_prefix is not None and not dev.startswith(rule.device_prefix):
                continue
            if rule.exclude_device_prefix is not None and dev.startswith(rule.exclude_device_prefix):
                continue
            if flags & RANGE_FLAGS:  # a "HI"/"LO": beyond any threshold, or unusable for computed signals
                if not _compares_values(rule):
                    continue
                value = math.inf if flags & FLAG_ABOVE_RANGE else -math.inf
            if isinstance(rule, StalenessRule):
                out.extend(self._stale_sample(patient, rule, t, value, now))
            elif rule.enabled:
                st = self._state(patient, name)
                if st.last_t is not None and t <= st.last_t:
                    continue
                out.extend(self._step(patient, rule, t, value, now))
        return out

    # -- signal rules ---------------------------------------------------------------------------

    def _step(self, patient: str, rule: ThresholdRule, t: float, value: float, now: float | None) -> list:
        st = self._state(patient, rule.name)
        if st.last_t is None or not t - st.last_t <= rule.max_gap_s:
            st.runs = {1: None, 2: None, 3: None}
            st.away = {1: None, 2: None, 3: None}
            st.clear_run = None
            st.window = []
        st.last_t = t
        sign = rule.direction.sign
        x = sign * signal(rule, st, t, value)
        if type(rule) is ThresholdRule and rule.median_of > 1:
            x = sign * running_median(rule, st, value)
        period = period_of(rule, t)
        levels = {int(lv.severity): lv for lv in rule.period_levels(period)}
        due, onset = 0, math.nan
        for code in (1, 2, 3):
            lv = levels.get(code)
            away = st.away[code]
            if lv is not None and x > sign * lv.threshold:
                if away is not None and not t - away < rule.tolerate_s:
                    st.runs[code] = None  # back across for too long: the run ended
                st.away[code] = None
                if st.runs[code] is None:
                    st.runs[code] = t
                start = st.runs[code]
                assert start is not None
                if t - start >= lv.for_s:
                    due, onset = code, start
            elif st.runs[code] is not None:
                # Back across (or unknown): the run survives while this excursion is shorter than tolerate_s.
                away = t if away is None else away
                st.away[code] = away
                if not t - away < rule.tolerate_s:
                    st.runs[code] = st.away[code] = None
        clear_threshold, clear_for = rule.period_clear(period)
        if x <= sign * clear_threshold:
            if st.clear_run is None:
                st.clear_run = t
            hold = rule.flapping.hold_s if rule.flapping is not None else 0.0
            clear_due = t - st.clear_run >= clear_for
            clear_long = t - st.clear_run >= max(clear_for, hold)
        else:
            st.clear_run = None
            clear_due = clear_long = False
        return self._latch(patient, rule, st, (t, value, now), (due, onset), (clear_due, clear_long))

    def _latch(self, patient, rule, st, sample, due_onset, clears) -> list:
        t, value, now = sample
        due, onset = due_onset
        clear_due, clear_long = clears
        if st.level == 0:
            if due and (st.cooldown_until is None or t >= st.cooldown_until):
                st.held = self._flap(rule, st, t)
                st.level, st.since, st.raised_at = due, onset, t
                st.escalate_from = t if now is None else max(t, now)
                st.acked = st.escalated = False
                return [self._event(patient, rule, "raised", t, value)]
            return []
        if clear_long if st.held else clear_due:
            event = self._event(patient, rule, "cleared", t, value)
            st.level, st.since, st.raised_at, st.escalate_from = 0, math.nan, math.nan, math.nan
            st.acked = st.escalated = st.held = False
            st.cooldown_until = t + rule.cooldown_s
            return [event]
        if due > st.level:
            st.level, st.raised_at = due, t
            st.escalate_from = t if now is None else max(t, now)
            st.acked = st.escalated = False
            return [self._event(patient, rule, "raised", t, value)]
        return []

    def _flap(self, rule: ThresholdRule, st: RuleState, t: float) -> bool:
        """Record a raise; whether the new episode is held (the K-th raise within the window)."""
        flapping = self._any_flapping(rule.name)
        if not flapping:
            return False
        held = False
        if rule.flapping is not None:
            earlier = sum(1 for r in st.recent if r > t - rule.flapping.within_s)
            held = earlier + 1 >= rule.flapping.raises
        st.recent = [*st.recent, t][-FLAP_SLOTS:]
        return held

    def _any_flapping(self, name: str) -> bool:
        rules = [self.rules.by_name()[name], *(o[name] for o in self.rules.patient_rules.values() if name in o)]
        return any(getattr(r, "flapping", None) is not None for r in rules)

    # -- staleness ------------------------------------------------------------------------------

    def enroll(self, patients, at: float | None = None) -> None:
        for patient in patients:
            for base in self.rules.rules:
                if isinstance(base, StalenessRule):
                    st = self._state(patient, base.name)
                    fresh = st.last_t is None and st.anchor is None
                    st.watched = True
                    if fresh and at is None:
                        st.pending = True
                    elif fresh:
                        st.anchor = at

    def _stale_sample(self, patient, rule: StalenessRule, t, value, now) -> list:
        st = self._state(patient, rule.name)
        if st.last_t is not None and t <= st.last_t:
            return []
        st.last_t, st.watched, st.pending = t, True, False
        if st.level:
            event = self._event(patient, rule, "cleared", t, value)
            st.level, st.since, st.raised_at, st.escalate_from = 0, math.nan, math.nan, math.nan
            st.acked = st.escalated = False
            st.cooldown_until = t + rule.cooldown_s
            return [event]
        return []

    def _stale_tick(self, patient: str, rule: StalenessRule, now: float) -> list:
        st = self._state(patient, rule.name)
        if st.pending:
            st.anchor, st.pending = now, False
        marks = [m for m in (st.last_t, st.anchor) if m is not None]
        if not marks or not st.watched or not rule.enabled:
            return []
        since = max(marks)
        level = 0
        for lv in rule.levels:
            if now - since > lv.after_s:
                level = int(lv.severity)
        if level <= st.level:
            return []
        if st.level == 0 and st.cooldown_until is not None and now < st.cooldown_until:
            return []
        if st.level == 0:
            st.since = since
        st.level, st.raised_at, st.escalate_from = level, now, now
        st.acked = st.escalated = False
        return [self._event(patient, rule, "raised", now, math.nan)]

    # -- events ---------------------------------------------------------------------------------

    def _event(self, patient, rule, state, t, value, by=None):
        st = self._state(patient, rule.name)
        if isinstance(rule, StalenessRule):
            message = staleness_message(rule, state, st.level, value)
        else:
            message = self.texts[rule.name].describe(rule, period_of(rule, t), state, st.level, value)
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
        patients = sorted({p for p, _ in self.states})
        for base in self.rules.rules:
            for patient in patients:
                rule = self.rules.rule_for(patient, base.name)
                if isinstance(rule, StalenessRule) and (patient, base.name) in self.states:
                    events.extend(self._stale_tick(patient, rule, now))
            for patient in patients:
                st = self.states.get((patient, base.name))
                if st is None or st.level == 0 or st.acked or st.escalated:
                    continue
                rule = self.rules.rule_for(patient, base.name)
                limit = escalation_limit(rule, st.level)
                if limit is not None and now >= st.escalate_from + limit:
                    st.escalated = True
                    events.append(self._event(patient, rule, "escalated", now, math.nan))
        return _ordered(events)

    def acknowledge(self, aid: str, by: str, at: float) -> list[AlertEvent]:
        for (patient, name), st in self.states.items():
            if st.level and alert_id(patient, name, st.since) == aid:
                if st.acked or at < st.escalate_from - ACK_CLOCK_SLACK_S:
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


def escalation_limit(rule: Any, level: int) -> float | None:
    """The rule's own level's escalate_after, else the first period's that has the severity."""
    own = rule.level(Severity(level))
    if own is not None:
        return own.escalate_after_s
    for period in getattr(rule, "schedule", ()):
        for lv in rule.period_levels(period):
            if int(lv.severity) == level:
                return lv.escalate_after_s
    return None


# -- schedules ------------------------------------------------------------------------------------


def period_of(rule: Any, t: float) -> Period | None:
    """The first period of the rule's schedule containing ``t`` (local time), else ``None``."""
    for period in getattr(rule, "schedule", ()):
        offset = datetime.fromtimestamp(t, tz=UTC).astimezone(ZoneInfo(period.tz)).utcoffset()
        minute = ((t + (offset.total_seconds() if offset else 0.0)) / 60.0) % 1440.0
        if period.contains(minute):
            return period
    return None


# -- signals, one sample at a time ------------------------------------------------------------------


def signal(rule: ThresholdRule, st: RuleState, t: float, value: float) -> float:
    """The rule's signal for this sample (updates the type's state)."""
    if isinstance(rule, RateRule):
        return rate_signal(rule, st, t, value)
    if isinstance(rule, ForecastRule):
        return forecast_signal(rule, st, t, value)
    if isinstance(rule, BaselineRule):
        return baseline_signal(rule, st, t, value)
    if isinstance(rule, RhythmRule):
        return rhythm_signal(rule, st, t, value)
    return value


def running_median(rule: ThresholdRule, st: RuleState, value: float) -> float:
    """The median of the last ``median_of`` readings since the last gap ("HI"/"LO" as the largest or
    smallest finite float; of an even count, ``0.5 a + 0.5 b`` of the middle two)."""
    biggest = sys.float_info.max
    st.window = [min(max(value, -biggest), biggest), *st.window][: rule.median_of]
    ordered = sorted(st.window)
    n = len(ordered)
    return 0.5 * ordered[(n - 1) // 2] + 0.5 * ordered[n // 2]


def rate_signal(rule: RateRule, st: RuleState, t: float, value: float) -> float:
    st.history = [*st.history, (t, value)][-(RATE_MAX_READINGS + 1) :]
    sign = rule.direction.sign
    if (rule.gate_below is not None and value >= rule.gate_below) or (
        rule.gate_above is not None and value <= rule.gate_above
    ):
        return sign * -math.inf
    if len(st.history) < rule.consecutive + 1:
        return math.nan
    signed = []
    for (t0, v0), (t1, v1) in zip(st.history[-rule.consecutive - 1 :], st.history[-rule.consecutive :], strict=False):
        if not 0 < t1 - t0 <= rule.max_gap_s:  # no time passed (a damaged stored history): no rate
            return math.nan
        signed.append(sign * ((v1 - v0) / (t1 - t0) * 60.0))
    return sign * min(signed)


def forecast_signal(rule: ForecastRule, st: RuleState, t: float, value: float) -> float:
    st.history = [*st.history, (t, value)][-FORECAST_MAX_POINTS:]
    rate: float | None = None
    growing = True
    if rule.model == "ar2":
        path = ar2(rule, st.history)
    elif rule.model == "kalman":
        path, rate, accel = kalman(rule, st.history)
        kp = forecast.KALMAN if rule.direction is Direction.BELOW else forecast.KALMAN_HIGH
        # issue 17, seventh round: the rate must still grow toward the level (NaN accel: unknown, no)
        growing = kp.accel_min <= 0 or (accel is not None and rule.direction.sign * accel >= kp.accel_min)
    else:
        path = damped_trend(rule, st.history)
    sign = rule.direction.sign
    if path is None or sign * value > sign * rule.levels[0].threshold:
        return math.nan
    extreme = min(path) if rule.direction is Direction.BELOW else max(path)
    extreme = math.floor(extreme * 1e6 + 0.5) / 1e6
    if not growing and sign * extreme > sign * rule.levels[0].threshold:
        return math.nan
    if rule.confirm > 0 and sign * extreme > sign * rule.levels[0].threshold:
        confirmed = False
        if rate is not None:
            confirmed = sign * rate >= rule.confirm
        elif len(st.history) >= 2:
            (t0, v0), (t1, v1) = st.history[-2], st.history[-1]
            confirmed = sign * ((v1 - v0) / (t1 - t0) * 60.0) >= rule.confirm and t1 - t0 <= rule.max_gap_s
        if not confirmed:
            return math.nan
    return extreme


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of value on s (seconds, negative: the past); level at s = 0 and slope."""
    n = len(points)
    sx = sum(s for s, _ in points)
    sy = sum(v for _, v in points)
    sxx = sum(s * s for s, _ in points)
    sxy = sum(s * v for s, v in points)
    den = n * sxx - sx * sx
    if not den > 0:
        return math.nan, math.nan
    slope = (n * sxy - sx * sy) / den
    return (sy - slope * sx) / n, slope


def damped_trend(rule: ForecastRule, history: list[tuple[float, float]]) -> list[float] | None:
    now = history[-1][0]
    points = [(-(now - tt), math.log(v / 140.0)) for tt, v in history if now - tt <= rule.window_s and v > 0]
    earlier = [pt for pt in points if pt[0] != 0.0]  # the latest reading left out of the first line
    level, slope = _line(earlier)
    if math.isnan(slope):
        kept = points
    else:
        sigma = max(1.4826 * statistics.median([abs(y - (level + slope * s)) for s, y in earlier]), 0.05)
        kept = [(s, y) for s, y in points if abs(y - (level + slope * s)) <= 3.0 * sigma]
    level, slope = _line(kept) if kept else (math.nan, math.nan)
    span = max((-s for s, _ in kept), default=0.0)
    if len(kept) < rule.min_points or not span >= rule.window_s / 2 or math.isnan(slope):
        return None
    latest_kept = bool(kept) and kept[-1][0] == 0.0 and history[-1][1] > 0
    anchor = math.log(history[-1][1] / 140.0) if latest_kept else level
    gain = rule.damping_s * -math.expm1(-rule.horizon_s / rule.damping_s)
    return [140.0 * math.exp(anchor), 140.0 * math.exp(anchor + slope * gain)]


def kalman(
    rule: ForecastRule, history: list[tuple[float, float]]
) -> tuple[list[float] | None, float | None, float | None]:
    """Blood glucose now and at the horizon, its rate and the rate's trend, one reading at a time (4 x 4 lists)."""
    kp = forecast.KALMAN if rule.direction is Direction.BELOW else forecast.KALMAN_HIGH  # issue 17, fourth round
    now = history[-1][0]
    points = [(tt, v) for tt, v in history if now - tt <= rule.window_s and math.isfinite(v) and v > 0]
    if len(points) < rule.min_points:
        return None, None, None
    e2 = kp.error_sd**2
    t0, y0 = points[0]
    x = [y0, 0.0, y0, 0.0]
    p = [[e2, 0.0, e2, -e2], [0.0, kp.rate_sd**2, 0.0, 0.0], [e2, 0.0, e2, -e2], [-e2, 0.0, -e2, e2]]
    last = t0
    lookback = kp.accel_lookback_min * 60.0
    then = (0.0, t0) if now - t0 >= lookback else None  # (rate, time) at the latest point >= lookback old
    for tt, y in points[1:]:
        dt = max((tt - now) / 60.0 - (last - now) / 60.0, 0.0)
        a = math.exp(-dt / kp.lag_min) if kp.lag_min > 0 else 0.0
        phi = math.exp(-dt / kp.error_tau_min)
        f = [
            [1.0, dt, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [1.0 - a, dt - kp.lag_min * (1.0 - a), a, 0.0],
            [0.0, 0.0, 0.0, phi],
        ]
        q = [[0.0] * 4 for _ in range(4)]
        q[0][0] = kp.rate_walk * dt**3 / 3
        q[0][1] = q[1][0] = kp.rate_walk * dt**2 / 2
        q[1][1] = kp.rate_walk * dt
        q[3][3] = e2 * (1 - phi**2)
        x = [sum(f[i][j] * x[j] for j in range(4)) for i in range(4)]
        fp = [[sum(f[i][j] * p[j][k] for j in range(4)) for k in range(4)] for i in range(4)]
        p = [[sum(fp[i][k] * f[m][k] for k in range(4)) + q[i][m] for m in range(4)] for i in range(4)]
        s = p[2][2] + p[3][3] + 2 * p[2][3] + kp.white_sd**2
        ph = [p[i][2] + p[i][3] for i in range(4)]
        gain = [c / s for c in ph]
        innov = y - (x[2] + x[3])
        x = [x[i] + gain[i] * innov for i in range(4)]
        p = [[p[i][m] - gain[i] * ph[m] for m in range(4)] for i in range(4)]
        last = tt
        if now - tt >= lookback:
            then = (x[1], tt)
    accel = (x[1] - then[0]) / ((last - then[1]) / 60.0) if then is not None and last > then[1] else None
    blood = x[0] + x[1] * max((now - last) / 60.0, 0.0)
    g = rule.damping_s * -math.expm1(-rule.horizon_s / rule.damping_s) / 60.0
    var = p[0][0] + 2 * g * p[0][1] + g * g * p[1][1]
    return [blood, blood + x[1] * g - rule.direction.sign * kp.z * math.sqrt(max(var, 0.0))], x[1], accel


def ar2(rule: ForecastRule, history: list[tuple[float, float]]) -> list[float] | None:
    if len(history) < 2:
        return None
    (t0, previous), (t1, current) = history[-2], history[-1]
    elapsed = t1 - t0
    if not (0 < elapsed <= rule.max_gap_s and current >= 36 and previous >= 36):
        return None
    five = current - (current - previous) * 300.0 / elapsed
    if five <= 0:
        return None
    prev, curr = math.log(five / 140.0), math.log(current / 140.0)
    path = [current]
    for step in range(1, math.ceil(rule.horizon_s / 300.0) + 1):
        prev, curr = curr, -0.723 * prev + 1.716 * curr
        predicted = min(max(math.floor(140.0 * math.exp(curr) + 0.5), 36.0), 400.0)
        path.append(predicted if step * 300.0 <= rule.horizon_s else current)
    return path


def baseline_signal(rule: BaselineRule, st: RuleState, t: float, value: float) -> float:
    block = math.floor(t / rule.block_s)
    if st.current is not None and st.current[0] != block:
        cid, csum, ccount = st.current
        st.blocks = [*st.blocks, (cid, csum / ccount)][-rule.n_blocks :]
        st.current = None
    if st.current is None:
        st.current = (block, 0.0, 0.0)
    means = [m for b, m in st.blocks if b >= block - rule.n_blocks]
    cid, csum, ccount = st.current
    st.current = (cid, csum + value, ccount + 1)
    if len(means) < rule.min_blocks:
        return math.nan
    median = statistics.median(means)
    mad = statistics.median([abs(m - median) for m in means])
    return (value - median) / max(1.4826 * mad, rule.min_scale)


def rhythm_signal(rule: RhythmRule, st: RuleState, t: float, value: float) -> float:
    st.history = [*st.history, (t, value)][-rule.window_beats :]
    st.beats = (st.beats + 1) % rule.every_beats
    if st.beats == 0:
        st.verdicts = [*st.verdicts, af_verdict(rule, st.history)][-rule.votes :]
        counted = [v for v in st.verdicts if not math.isnan(v)]
        st.verdict = sum(counted) / len(counted) if counted else math.nan
    return st.verdict


def af_verdict(rule: RhythmRule, window: list[tuple[float, float]]) -> float:
    """1.0 irregular, 0.0 regular, NaN unknown: Dash et al. 2009 with beat-error and ectopy filters."""
    if len(window) < rule.window_beats:
        return math.nan
    times = [tt for tt, _ in window]
    if max(b - a for a, b in itertools.pairwise(times)) > rule.max_gap_s:
        return math.nan
    rr = [v for _, v in window]
    if rule.method == "model":
        if min(rr) <= 0:
            return math.nan
        verdict = model_verdict(rr)
        if not math.isnan(verdict):
            return verdict
        # the window the model's filter emptied: the Dash criteria, trim scaled to the window, or
        # regular if the intervals repeat every 2-6 beats (rhythm.irregular, seventh round)
        dash = dash_verdict(rule, rr, round(rule.trim_beats * len(rr) / 128))
        return 0.0 if repeats(rr) and not math.isnan(dash) else dash
    return dash_verdict(rule, rr, rule.trim_beats)


def repeats(rr: list[float]) -> bool:
    """The smallest median |RR(i) - RR(i+k)|, k = 2..6, under half the lag-1 one (rhythm._repeats)."""
    median = statistics.median(rr)
    x = [v / median for v in rr]

    def lag(k: int) -> float:
        return statistics.median(abs(a - b) for a, b in zip(x, x[k:], strict=False))

    return min(lag(k) for k in range(2, af_model.MAX_LAG + 1)) < 0.5 * lag(1)


def dash_verdict(rule: RhythmRule, rr: list[float], k: int) -> float:
    """The Dash 2009 criteria on one window, trimming ``k`` beats at each end."""
    median = statistics.median(rr)
    ok = [0.6 * median <= x <= 1.6 * median for x in rr]
    good = sorted(x for x, kx in zip(rr, ok, strict=True) if kx)
    low = good[min(k, len(rr) - 1)] if len(good) > k else math.inf
    high = good[max(len(good) - 1 - k, 0)] if good else -math.inf
    keep = [o and low <= x <= high for x, o in zip(rr, ok, strict=True)]
    if sum(keep) * 2 < len(rr):
        return math.nan
    kept = [x for x, kx in zip(rr, keep, strict=True) if kx]  # the dropped ones removed: one sequence
    steps = [(b - a) ** 2 for a, b in itertools.pairwise(kept)]
    nrmssd = math.sqrt(sum(steps) / len(steps)) / (sum(kept) / len(kept)) if steps else math.nan
    triples = list(zip(kept, kept[1:], kept[2:], strict=False))
    tpr = sum(1 for a, b, c in triples if (b - a) * (b - c) > 0) / len(triples) if triples else math.nan
    lo, hi = min(kept), max(kept)
    width = hi - lo if hi > lo else 1.0
    counts = [0] * 16
    for x in kept:
        counts[min(max(math.floor((x - lo) / width * 16), 0), 15)] += 1
    entropy = -sum(c / len(kept) * math.log(c / len(kept)) for c in counts if c) / math.log(16)
    irregular = nrmssd > rule.nrmssd_min and rule.tpr_low <= tpr <= rule.tpr_high and entropy >= rule.entropy_min
    return 1.0 if irregular else 0.0


def _ar_ratio(c: list[float], keep: list[bool], sd: float) -> float:
    """RMS residual of the least-squares AR(p) predictor over ``sd`` (af_model._ar_ratio), plainly."""
    p = af_model.AR_ORDER
    targets = [t for t in range(p, len(c)) if all(keep[t - k] for k in range(p + 1))]
    gram = [
        [sum(c[t - i] * c[t - j] for t in targets) + (1e-9 if i == j else 0.0) for j in range(1, p + 1)]
        for i in range(1, p + 1)
    ]
    rhs = [sum(c[t - i] * c[t] for t in targets) for i in range(1, p + 1)]
    coef = _solve(gram, rhs)
    squares = sum((c[t] - sum(a * c[t - i] for i, a in enumerate(coef, 1))) ** 2 for t in targets)
    return math.sqrt(squares / max(len(targets), 1)) / max(sd, 1e-9)


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting."""
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            m[r] = [v - f * w for v, w in zip(m[r], m[col], strict=True)]
    out = [0.0] * n
    for r in range(n - 1, -1, -1):
        out[r] = (m[r][n] - sum(m[r][k] * out[k] for k in range(r + 1, n))) / m[r][r]
    return out


def _spectral_peak(c: list[float]) -> float:
    """Share of the Hann-windowed periodogram's power in its strongest band (af_model._spectral_peak)."""
    n = len(c)
    w = [v * (0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1))) for i, v in enumerate(c)]
    power = []
    for k in range(1, n // 2 + 1):
        re = sum(v * math.cos(2 * math.pi * k * i / n) for i, v in enumerate(w))
        im = sum(v * math.sin(2 * math.pi * k * i / n) for i, v in enumerate(w))
        power.append(re * re + im * im)
    bands = [sum(power[i : i + af_model.PEAK_BINS]) for i in range(len(power) - af_model.PEAK_BINS + 1)]
    return max(bands) / max(sum(power), 1e-18)


def _perm_entropy(x: list[float], keep: list[bool]) -> float:
    """Normalized permutation entropy of order 4 (af_model._perm_entropy), plainly."""
    order = af_model.PATTERN_ORDER
    counts: dict[tuple[int, ...], int] = {}
    for i in range(len(x) - order + 1):
        if all(keep[i : i + order]):
            key = tuple(sorted(range(order), key=lambda k: (x[i + k], k)))  # ties: the earlier is smaller
            counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    if not total:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts.values()) / math.log(math.factorial(order))


def _nn_error(x: list[float], keep: list[bool], sd: float) -> float:
    """RMS error of the nearest-neighbour prediction of x(n+1) over ``sd`` (af_model._nn_error), plainly."""
    triples = [i for i in range(len(x) - 2) if keep[i] and keep[i + 1] and keep[i + 2]]
    squares = []
    for i in triples:
        best, nearest = math.inf, -1
        for j in triples:
            if j != i:
                d0, d1 = x[i] - x[j], x[i + 1] - x[j + 1]
                dist = d0 * d0 + d1 * d1
                if dist < best:
                    best, nearest = dist, j
        if nearest >= 0:
            squares.append((x[i + 2] - x[nearest + 2]) ** 2)
    if not squares:
        return math.nan
    return math.sqrt(sum(squares) / len(squares)) / max(sd, 1e-9)


def model_columns(rr: list[float]) -> list[float] | None:
    """The features of detectors/af_model.py of one window (None: the window is unusable), plainly."""
    median = statistics.median(rr)
    short = [x < af_model.EXTRA_BEAT_RATIO * median for x in rr]
    n = len(rr)
    keep = [
        not short[i]
        and rr[i] <= af_model.MISSED_BEAT_RATIO * median
        and not (i > 0 and short[i - 1])
        and not (i + 1 < n and short[i + 1])
        for i in range(n)
    ]
    if sum(keep) * 2 < n:
        return None
    x = [v / median for v in rr]

    def lag(k: int) -> list[float]:
        return [abs(x[i + k] - x[i]) for i in range(n - k) if keep[i] and keep[i + k]]

    d1 = lag(1)
    triples = [i for i in range(n - 2) if keep[i] and keep[i + 1] and keep[i + 2]]
    lags = [lag(k) for k in range(2, af_model.MAX_LAG + 1)]
    if not d1 or not triples or not all(lags):
        return None
    med1 = statistics.median(d1)
    rms1 = math.sqrt(sum(d * d for d in d1) / len(d1))
    min_ratio = min(statistics.median(d) for d in lags) / max(med1, 1e-6)
    tpr = sum(1 for i in triples if (x[i + 1] - x[i]) * (x[i + 1] - x[i + 2]) > 0) / len(triples)
    kept = [v for v, k in zip(x, keep, strict=True) if k]
    mean = sum(kept) / len(kept)
    c = [v - mean for v in x]
    s11 = sum(c[i + 1] * c[i + 1] for i in triples)
    s22 = sum(c[i] * c[i] for i in triples)
    s12 = sum(c[i + 1] * c[i] for i in triples)
    b1 = sum(c[i + 1] * c[i + 2] for i in triples)
    b2 = sum(c[i] * c[i + 2] for i in triples)
    det = s11 * s22 - s12 * s12 + 1e-12
    a1, a2 = (b1 * s22 - b2 * s12) / det, (s11 * b2 - s12 * b1) / det
    residual = statistics.median(abs(c[i + 2] - a1 * c[i + 1] - a2 * c[i]) for i in triples)
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept))
    big = sum(1 for d in d1 if d > af_model.BIG_STEP) / len(d1)
    steps = [(x[i], x[i + 1]) for i in range(n - 1) if keep[i] and keep[i + 1]]
    candidates = [(a, b) for a, b in steps if b - a > af_model.COMPENSATED_STEP]
    close = [1 for a, b in candidates if abs(a + b - 2.0) < af_model.COMPENSATED_TOLERANCE * (b - a)]
    compensated = len(close) / max(len(candidates), 1)
    centred = [v - mean if k else 0.0 for v, k in zip(x, keep, strict=True)]
    ar_ratio = _ar_ratio(centred, keep, sd)
    peak = _spectral_peak(centred)
    pattern = _perm_entropy(x, keep)
    nn = _nn_error(x, keep, sd)
    return [
        math.log(med1 + 1e-4),
        math.log(rms1 + 1e-4),
        math.log(min_ratio + 1e-3),
        tpr,
        math.log(residual + 1e-4),
        math.log(sd + 1e-4),
        big,
        len(kept) / n,
        compensated,
        math.log(ar_ratio + 1e-3),
        peak,
        pattern,
        math.log(nn + 1e-3) if nn == nn else math.nan,
    ]


def model_verdict(rr: list[float]) -> float:
    """The learned classifier of detectors/af_model.py, one window, plain Python."""
    columns = model_columns(rr)
    if columns is None or not all(math.isfinite(v) for v in columns):
        return math.nan
    z = [(v - m) / s for v, m, s in zip(columns, af_model.MEAN, af_model.SCALE, strict=True)]
    units = [
        max(float(b) + sum(v * float(af_model.HIDDEN_WEIGHTS[i, k]) for i, v in enumerate(z)), 0.0)
        for k, b in enumerate(af_model.HIDDEN_BIAS)
    ]
    logit = af_model.OUTPUT_BIAS + sum(u * float(w) for u, w in zip(units, af_model.OUTPUT_WEIGHTS, strict=True))
    probability = 1.0 / (1.0 + math.exp(-min(max(logit, -50.0), 50.0)))
    return 1.0 if probability >= af_model.THRESHOLD else 0.0
