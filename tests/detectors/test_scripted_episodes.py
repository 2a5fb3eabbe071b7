"""The default ``alert_rules.yaml`` fires once per scripted episode and never for patients in range (issue 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors import AlertEvent, Engine, RuleSet
from rpm_core.rules import load_rules
from tests.detectors.helpers import T0, dicts, run, series
from tests.detectors.reference import ReferenceEngine

ROOT = Path(__file__).resolve().parents[2]
HR_STEP_S = 5.0  # a chest strap reports about every second; every 5 s keeps the test small
CGM_STEP_S = 300.0  # a CGM reading every 5 minutes


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules(ROOT / "alert_rules.yaml")


def minutes(n: float, step: float) -> int:
    return int(n * 60 / step)


def scripted() -> list[tuple[str, str, float, float, int]]:
    """Three patients over one hour: a tachycardia episode, a patient in range, a severe hypo."""
    tachy = [135.0] * minutes(20, HR_STEP_S) + [80.0] * minutes(40, HR_STEP_S)
    samples = series("p-tachy", "heart_rate", 0, tachy, HR_STEP_S)
    samples += series("p-tachy", "glucose", 0, [110.0] * 12, CGM_STEP_S)
    in_range_hr = [72.0 + (i % 7) for i in range(minutes(60, HR_STEP_S))]
    samples += series("p-fine", "heart_rate", 0, in_range_hr, HR_STEP_S)
    samples += series("p-fine", "glucose", 0, [95.0, 120.0, 150.0, 170.0, 140.0, 110.0] * 2, CGM_STEP_S)
    samples += series("p-hypo", "glucose", 0, [50.0] * 5, CGM_STEP_S)  # 0..20 min at 50 mg/dL
    samples += series("p-hypo", "heart_rate", 0, [88.0] * minutes(20, HR_STEP_S), HR_STEP_S)
    return samples


def summary(events: list[AlertEvent]) -> list[tuple[str, str, str, str, float]]:
    return [(e.patient, e.rule, e.severity, e.state, e.time - T0) for e in events]


def test_default_rules_fire_once_per_episode(rules: RuleSet) -> None:
    events = run(Engine(rules), scripted())
    assert summary(events) == [
        ("p-tachy", "tachycardia", "warning", "raised", 600.0),  # 135 bpm for 10 min
        ("p-hypo", "glucose_low", "critical", "raised", 900.0),  # < 54 mg/dL for 15 min
        ("p-tachy", "tachycardia", "warning", "cleared", 1200.0 + 300.0),  # <= 110 bpm for 5 min
    ]
    assert events[0].message == "Heart rate above 120 bpm for 10 min (now 135 bpm)"
    assert events[1].message == "Glucose below 54 mg/dL for 15 min (now 50 mg/dL)"
    assert events[0].alert_id == events[2].alert_id


def test_one_sample_per_batch_gives_the_same_events(rules: RuleSet) -> None:
    samples = sorted(scripted(), key=lambda s: s[2])
    engine = Engine(rules)
    events = [e for s in samples for e in run(engine, [s])]
    assert summary(events) == summary(run(Engine(rules), scripted()))


def test_the_reference_agrees_on_the_default_rules(rules: RuleSet) -> None:
    assert dicts(run(Engine(rules), scripted())) == dicts(ReferenceEngine(rules).process(scripted()))


def test_unacknowledged_critical_hypo_escalates_after_5_minutes(rules: RuleSet) -> None:
    engine = Engine(rules)
    hypo = next(e for e in run(engine, scripted()) if e.rule == "glucose_low")
    (escalated,) = engine.tick(hypo.time + 300)
    assert (escalated.alert_id, escalated.state, escalated.severity) == (hypo.alert_id, "escalated", "critical")
    assert engine.tick(hypo.time + 3600) == []  # once


def test_tachycardia_is_not_escalated_after_it_cleared(rules: RuleSet) -> None:
    engine = Engine(rules)
    run(engine, scripted())
    escalations = engine.tick(T0 + 10 * 3600)
    assert [(e.patient, e.rule) for e in escalations] == [("p-hypo", "glucose_low")]
