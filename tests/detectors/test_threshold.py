"""Threshold rule semantics, one behaviour per test, on hand-made series (60 s apart unless noted).

The rule under test (``tests.detectors.helpers.tachycardia_rule``): warning > 120 bpm for 10 min, critical > 150
bpm for 2 min, clear <= 110 bpm for 5 min, max gap 2 min, cooldown 10 min, escalation after
15 min (warning) / 5 min (critical).
"""

from __future__ import annotations

import hashlib

import pytest

from detectors import Direction, Engine, RuleSet, Severity, ThresholdLevel, ThresholdRule
from tests.detectors.helpers import T0, run, series, tachycardia_rule


def engine(**changes: object) -> Engine:
    return Engine(RuleSet(rules=(tachycardia_rule(**changes),)))


def states(events) -> list[tuple[str, str, float]]:
    return [(e.state, e.severity, e.time - T0) for e in events]


def test_raises_once_the_condition_held_for_the_minimum_duration() -> None:
    assert run(engine(), series("p", "heart_rate", 0, [130] * 10)) == []  # 0..540 s: 9 min
    events = run(engine(), series("p", "heart_rate", 0, [130] * 15))
    assert states(events) == [("raised", "warning", 600.0)]
    assert events[0].since == T0
    assert events[0].message == "Heart rate above 120 bpm for 10 min (now 130 bpm)"


def test_threshold_is_strict() -> None:
    assert run(engine(), series("p", "heart_rate", 0, [120] * 20)) == []


def test_hysteresis_needs_the_clearing_level_for_the_clearing_duration() -> None:
    e = engine()
    run(e, series("p", "heart_rate", 0, [130] * 11))
    # Between the clearing level and the threshold: stays open, and the warning run restarts.
    assert run(e, series("p", "heart_rate", 660, [115] * 10)) == []
    events = run(e, series("p", "heart_rate", 1260, [110] * 6))
    assert states(events) == [("cleared", "warning", 1260 + 300)]
    assert events[0].message == "Heart rate back at or below 110 bpm for 5 min (now 110 bpm)"


def test_a_gap_longer_than_max_gap_restarts_the_clock() -> None:
    samples = series("p", "heart_rate", 0, [130] * 6) + series("p", "heart_rate", 300 + 121, [130] * 11)
    events = run(engine(), samples)
    assert states(events) == [("raised", "warning", 421 + 600)]
    assert events[0].since == T0 + 421


def test_a_gap_of_exactly_max_gap_keeps_continuity() -> None:
    samples = series("p", "heart_rate", 0, [130] * 6) + series("p", "heart_rate", 300 + 120, [130] * 5)
    assert states(run(engine(), samples)) == [("raised", "warning", 600.0)]


def test_flagged_samples_are_ignored() -> None:
    flagged = [(p, m, t, v, 1) for p, m, t, v, _ in series("p", "heart_rate", 0, [200] * 30)]
    assert run(engine(), flagged) == []


def test_flagged_samples_do_not_bridge_a_gap() -> None:
    """Contact lost for 5 minutes: the readings during it do not count as continuous data."""
    good = series("p", "heart_rate", 0, [130] * 6) + series("p", "heart_rate", 600, [130] * 11)
    bad = [(p, m, t, v, 1) for p, m, t, v, _ in series("p", "heart_rate", 360, [130] * 4)]
    events = run(engine(), good + bad)
    assert states(events) == [("raised", "warning", 1200.0)]


def test_severity_rises_within_the_episode_under_the_same_alert_id() -> None:
    values = [130] * 11 + [160] * 3 + [130] * 3 + [100] * 6
    events = run(engine(), series("p", "heart_rate", 0, values))
    assert states(events) == [
        ("raised", "warning", 600.0),
        ("raised", "critical", 780.0),  # 160 from 660 s, for 2 min
        ("cleared", "critical", 1020 + 300),  # never downgraded within the episode
    ]
    assert len({e.alert_id for e in events}) == 1
    assert {e.since for e in events} == {T0}


def test_the_most_severe_due_level_raises_directly() -> None:
    events = run(engine(), series("p", "heart_rate", 0, [160] * 5))
    assert states(events) == [("raised", "critical", 120.0)]
    assert events[0].message == "Heart rate above 150 bpm for 2 min (now 160 bpm)"


def test_cooldown_suppresses_a_new_episode_until_it_ends() -> None:
    e = engine(levels=(ThresholdLevel(severity=Severity.WARNING, threshold=120, for_s=60),), clear_for_s=60)
    assert states(run(e, series("p", "heart_rate", 0, [130, 130, 100, 100]))) == [
        ("raised", "warning", 60.0),
        ("cleared", "warning", 180.0),
    ]
    # Abnormal again from 240 s, due from 300 s, but the cooldown lasts until 780 s.
    events = run(e, series("p", "heart_rate", 240, [130] * 11))
    assert states(events) == [("raised", "warning", 780.0)]
    assert events[0].since == T0 + 240


def test_below_rules_mirror_above_rules() -> None:
    rule = ThresholdRule(
        name="bradycardia",
        metric="heart_rate",
        direction=Direction.BELOW,
        levels=(
            ThresholdLevel(severity=Severity.WARNING, threshold=50, for_s=600),
            ThresholdLevel(severity=Severity.CRITICAL, threshold=40, for_s=120),
        ),
        clear_threshold=55,
        clear_for_s=300,
        max_gap_s=120,
    )
    events = run(Engine(RuleSet(rules=(rule,))), series("p", "heart_rate", 0, [45] * 11 + [54] * 10 + [55] * 6))
    assert states(events) == [("raised", "warning", 600.0), ("cleared", "warning", 1260 + 300)]
    assert events[0].message == "Heart rate below 50 bpm for 10 min (now 45 bpm)"
    assert events[1].message == "Heart rate back at or above 55 bpm for 5 min (now 55 bpm)"


def test_alert_ids_are_deterministic() -> None:
    events = run(engine(), series("p0001", "heart_rate", 0, [160] * 5))
    key = f"p0001|tachycardia|{T0!r}".encode()
    assert events[0].alert_id == hashlib.sha1(key, usedforsecurity=False).hexdigest()[:16]
    assert run(engine(), series("p0001", "heart_rate", 0, [160] * 5)) == events


class TestEscalation:
    def test_escalates_once_after_the_level_limit(self) -> None:
        e = engine()
        (raised,) = run(e, series("p", "heart_rate", 0, [130] * 11))
        assert e.tick(raised.time + 899) == []
        (escalated,) = e.tick(raised.time + 900)
        assert (escalated.state, escalated.severity, escalated.alert_id) == ("escalated", "warning", raised.alert_id)
        assert escalated.message == "Heart rate above 120 bpm for 10 min: warning alert unacknowledged for 15 min"
        assert e.tick(raised.time + 5000) == []

    def test_acknowledged_alerts_do_not_escalate(self) -> None:
        e = engine()
        (raised,) = run(e, series("p", "heart_rate", 0, [130] * 11))
        (ack,) = e.acknowledge(raised.alert_id, by="nurse-3", at=raised.time + 60)
        assert (ack.state, ack.by, ack.time) == ("acknowledged", "nurse-3", raised.time + 60)
        assert ack.message.startswith("Acknowledged by nurse-3")
        assert e.acknowledge(raised.alert_id, by="nurse-4", at=raised.time + 61) == []
        assert e.tick(raised.time + 10_000) == []

    def test_a_worsening_alert_needs_acknowledging_again(self) -> None:
        e = engine()
        (raised,) = run(e, series("p", "heart_rate", 0, [130] * 11))
        e.acknowledge(raised.alert_id, by="nurse", at=raised.time)
        (upgraded,) = run(e, series("p", "heart_rate", 660, [160] * 3))
        assert upgraded.severity == "critical"
        (escalated,) = e.tick(upgraded.time + 300)
        assert escalated.severity == "critical"

    def test_unknown_and_cleared_alerts_cannot_be_acknowledged(self) -> None:
        e = engine()
        raised, cleared = run(e, series("p", "heart_rate", 0, [130] * 11 + [100] * 6))
        assert cleared.state == "cleared"
        assert e.acknowledge(raised.alert_id, by="nurse", at=0) == []
        assert e.acknowledge("0123456789abcdef", by="nurse", at=0) == []

    def test_levels_without_a_limit_never_escalate(self) -> None:
        e = engine(levels=(ThresholdLevel(severity=Severity.INFO, threshold=120),))
        run(e, series("p", "heart_rate", 0, [130]))
        assert e.tick(T0 + 1e9) == []


class TestOverrides:
    def rules(self, **override: object) -> RuleSet:
        return RuleSet(
            rules=(tachycardia_rule(),),
            patient_rules={"athlete": {"tachycardia": tachycardia_rule(**override)}},
        )

    def test_override_applies_to_its_patient_only(self) -> None:
        high = (ThresholdLevel(severity=Severity.WARNING, threshold=140, for_s=600),)
        e = Engine(self.rules(levels=high, clear_threshold=130))
        events = run(e, series("athlete", "heart_rate", 0, [135] * 11) + series("other", "heart_rate", 0, [135] * 11))
        assert [(ev.patient, ev.state) for ev in events] == [("other", "raised")]

    def test_override_can_disable_a_rule(self) -> None:
        e = Engine(self.rules(enabled=False))
        assert run(e, series("athlete", "heart_rate", 0, [160] * 11)) == []

    def test_override_registered_after_other_patients(self) -> None:
        e = Engine(self.rules(enabled=False))
        run(e, series("other", "heart_rate", 0, [80]))
        assert run(e, series("athlete", "heart_rate", 0, [160] * 11)) == []

    def test_override_cannot_change_the_metric(self) -> None:
        other = tachycardia_rule(metric="glucose")
        with pytest.raises(ValueError, match="metric"):
            RuleSet(rules=(tachycardia_rule(),), patient_rules={"p": {"tachycardia": other}})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clear_threshold": 125}, "clear.threshold"),
        ({"max_gap_s": 0}, "max_gap"),
        ({"clear_for_s": -1}, "clear.for"),
        ({"metric": "spo2"}, "metric"),
        ({"name": "Bad Name"}, "name"),
        ({"levels": ()}, "levels"),
        (
            {
                "levels": (
                    ThresholdLevel(severity=Severity.WARNING, threshold=150),
                    ThresholdLevel(severity=Severity.CRITICAL, threshold=120),
                )
            },
            "levels.critical.threshold",
        ),
    ],
)
def test_models_reject_inconsistent_rules(changes: dict[str, object], field: str) -> None:
    from detectors import RuleValidationError

    with pytest.raises(RuleValidationError) as info:
        tachycardia_rule(**changes)
    assert info.value.field == field
