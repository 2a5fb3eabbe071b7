"""The default ``alert_rules.yaml`` fires once per scripted episode and never for patients in range (issue 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors import AlertEvent, Engine, RuleSet
from detectors.const import SEVERITY_NAMES
from rpm_core.rules import load_rules
from tests.detectors.helpers import T0, dicts, run6
from tests.detectors.reference import ReferenceEngine
from tests.detectors.scripted import Row, baseline_history, scripted

ROOT = Path(__file__).resolve().parents[2]
TICK_S = 60.0


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules(ROOT / "alert_rules.yaml")


def replay(engine: Engine, rows: list[Row], until: float) -> list[AlertEvent]:
    """Feed ``rows`` in one-minute event-time chunks, ticking at each minute (as ``rpm backtest`` does)."""
    rows = sorted(rows, key=lambda r: r[2])
    events: list[AlertEvent] = []
    start = rows[0][2] - rows[0][2] % TICK_S
    i = 0
    for edge in [start + k * TICK_S for k in range(1, int((until - start) // TICK_S) + 2)]:
        j = i
        while j < len(rows) and rows[j][2] < edge:
            j += 1
        events += run6(engine, rows[i:j])
        events += engine.tick(edge)
        i = j
    return events


def summary(events: list[AlertEvent]) -> list[tuple[str, str, str, str, float]]:
    return [(e.patient, e.rule, e.severity, e.state, e.time - T0) for e in events]


@pytest.fixture(scope="module")
def events(rules: RuleSet) -> list[AlertEvent]:
    return replay(Engine(rules), scripted(), T0 + 3600)


def test_default_rules_fire_once_per_scripted_episode(events: list[AlertEvent]) -> None:
    raised = sorted({(e.patient, e.rule, e.severity) for e in events if e.state == "raised"})
    assert raised == [
        ("p-af", "af_screening", "warning"),
        ("p-falling", "glucose_falling_fast", "warning"),
        # 65, then 50 mg/dL: level 1 on the first reading < 70, the same alert upgraded to level 2 on
        # the first < 54 (both on one reading, issue 17, fifth round).
        ("p-falling", "glucose_low", "critical"),
        ("p-falling", "glucose_low", "warning"),
        ("p-falling", "glucose_urgent_low_soon", "critical"),
        ("p-hypo", "glucose_low", "critical"),
        # The meter's 45 mg/dL is glucose_meter_low's alone: glucose_low leaves out bgm- devices.
        ("p-meter", "glucose_meter_low", "critical"),
        ("p-tachy", "tachycardia", "warning"),
    ]
    raises = [(e.patient, e.rule, e.alert_id, e.severity) for e in events if e.state == "raised"]
    episodes = {(patient, rule): alert for patient, rule, alert, _ in raises}
    assert len(episodes) == len({alert for _, _, alert, _ in raises}), "an episode raised twice"
    for key, alert in episodes.items():
        severities = [SEVERITY_NAMES.index(s) for p, r, a, s in raises if (p, r, a) == (*key, alert)]
        assert severities == sorted(set(severities)), f"{key}: raised again at the same or a lower severity"


def test_no_alert_for_the_patient_in_range(events: list[AlertEvent]) -> None:
    assert [e for e in events if e.patient == "p-fine"] == []


def test_night_tachycardia_uses_the_night_threshold(events: list[AlertEvent]) -> None:
    tachy = [e for e in events if e.rule == "tachycardia"]
    assert summary(tachy) == [
        ("p-tachy", "tachycardia", "warning", "raised", 600.0),
        # Back to normal at 1200 s: the median of the last 9 readings (every 5 s) follows 20 s later.
        ("p-tachy", "tachycardia", "warning", "cleared", 1200.0 + 20.0 + 300.0),
    ]
    assert tachy[0].message == "Heart rate above 100 bpm for 10 min (night) (now 135 bpm)"


def test_predicted_low_comes_before_the_low(events: list[AlertEvent]) -> None:
    """Falling 3 mg/dL/min from 140: the fall is flagged at 95 and the low predicted before 50 is read."""
    falling = {e.rule: e for e in events if e.patient == "p-falling" and e.state == "raised"}
    assert falling["glucose_urgent_low_soon"].time - T0 < 1800  # the reading of 50 mg/dL
    assert falling["glucose_falling_fast"].time - T0 <= 900
    assert falling["glucose_urgent_low_soon"].message.startswith("Glucose predicted below 47 mg/dL within 25 min")


def test_a_single_meter_reading_raises_at_once(events: list[AlertEvent]) -> None:
    (meter,) = [e for e in events if e.rule == "glucose_meter_low" and e.state == "raised"]
    assert (meter.time - T0, meter.value, meter.severity) == (1000.0, 45.0, "critical")
    # One page for one reading: the CGM rules (in range) and glucose_low (no bgm- devices) stay quiet.
    assert [e.rule for e in events if e.patient == "p-meter" and e.state == "raised"] == ["glucose_meter_low"]


def test_glucose_low_alerts_on_one_reading_from_cgm_and_unknown_devices(rules: RuleSet) -> None:
    """Level 2 on one CGM reading; a glucose device with an unexpected id is watched, not dropped."""
    rows: list[Row] = [("p-cgm", "glucose", T0, 50.0, 0, "cgm-1"), ("p-odd", "glucose", T0, 50.0, 0, "libre-9")]
    rows += [("p-meter", "glucose", T0, 50.0, 0, "bgm-1")]
    raised = sorted((e.patient, e.rule, e.severity) for e in run6(Engine(rules), rows) if e.state == "raised")
    assert raised == [
        ("p-cgm", "glucose_low", "critical"),
        ("p-meter", "glucose_meter_low", "critical"),
        ("p-odd", "glucose_low", "critical"),
    ]


def test_the_reference_agrees_on_the_default_rules(rules: RuleSet) -> None:
    rows = scripted()[::3]  # a third of the rows keeps the scalar reference quick
    assert dicts(run6(Engine(rules), rows)) == dicts(ReferenceEngine(rules).process(rows))


def test_unacknowledged_critical_hypo_escalates_after_5_minutes(rules: RuleSet) -> None:
    engine = Engine(rules)
    hypo = next(e for e in replay(engine, scripted(), T0) if e.rule == "glucose_low")  # raised at once, at T0
    escalated = [e for e in engine.tick(hypo.time + 300) if e.alert_id == hypo.alert_id]
    assert [(e.state, e.severity) for e in escalated] == [("escalated", "critical")]
    assert [e for e in engine.tick(hypo.time + 400) if e.alert_id == hypo.alert_id] == []


def test_enrolled_patient_without_data_goes_stale_then_recovers(rules: RuleSet) -> None:
    engine = Engine(rules, enrolled=["p-new"])
    assert engine.tick(T0) == []  # the silence clock starts at the first tick
    assert engine.tick(T0 + 1800) == []
    stale = engine.tick(T0 + 1860)
    assert summary(stale) == [("p-new", "cgm_stale", "warning", "raised", 1860.0)]
    assert stale[0].message == "No glucose data from devices other than glucose meters (bgm-*) for over 30 min"
    back = run6(engine, [("p-new", "glucose", T0 + 1900, 120.0, 0, "cgm-7")])
    assert summary(back) == [("p-new", "cgm_stale", "warning", "cleared", 1900.0)]


def test_personal_baseline_deviation(rules: RuleSet) -> None:
    events = replay(Engine(rules), baseline_history(), T0 + 2400)
    assert summary([e for e in events if e.state == "raised"]) == [
        ("p-baseline", "heart_rate_above_baseline", "warning", "raised", 1800.0)
    ]
