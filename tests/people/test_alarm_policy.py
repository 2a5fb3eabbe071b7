"""The nurse station's alarm policy (``station:`` in alert_rules.yaml): re-alarm intervals and silence floors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpm_core.alarm_policy import AlarmPolicyError, load_alarm_policy, parse_alarm_policy
from rpm_core.rules import load_rules

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_rules_file_carries_the_policy_and_still_loads_as_rules() -> None:
    for path in (REPO / "alert_rules.yaml", REPO / "rpm_core" / "default_rules.yaml"):
        assert load_rules(path).rules, "the detectors ignore the station section"
        policy = load_alarm_policy(path)
        assert policy.realarm_s("glucose_low", "critical") == 900.0
        assert policy.silence_max_s("glucose_low", "critical") == 900.0, "a critical low: at most 15 min"
        assert policy.realarm_s("glucose_high", "info") is None, "info never re-alarms"
        assert policy.silence_max_s("tachycardia", "warning") == 1800.0
        assert policy.silence_max_s("anything", "critical", technical=True) == 3600.0


def test_a_rule_overrides_the_defaults_severity_by_severity() -> None:
    policy = parse_alarm_policy({"realarm_after": {"warning": "20m"},
                                 "rules": {"bradycardia": {"realarm_after": {"critical": 90}}}})
    assert policy.realarm_s("bradycardia", "critical") == 90.0
    assert policy.realarm_s("bradycardia", "warning") == 1200.0
    assert policy.realarm_s("tachycardia", "critical") == 900.0, "the built-in default"
    assert load_alarm_policy(None) == parse_alarm_policy(None)


@pytest.mark.parametrize(("section", "message"), [
    ({"realarm": {}}, "unknown key 'realarm'"),
    ({"realarm_after": {"severe": "5m"}}, "unknown key 'severe'"),
    ({"silence_max": {"critical": None}}, "not a duration"),
    ({"silence_max": {"critical": "15 minutes"}}, "not a duration"),
    ({"silence_max": {"critical": True}}, "expected a duration"),
    ({"realarm_after": {"critical": 0}}, "more than 0"),
    ({"realarm_after": {"critical": "-5m"}}, "not a duration"),
    ({"realarm_after": {"critical": "8d"}}, "not a duration"),
    ({"technical_silence_max": 7 * 86400 + 1}, "at most 7 days"),
    ({"rules": {"bad name": {}}}, "not a rule name"),
    ({"rules": {"glucose_low": {"escalate_after": "5m"}}}, "unknown key"),
    ({"rules": []}, "expected a mapping"),
    ([], "expected a mapping"),
])
def test_a_bad_policy_is_refused_naming_the_field(section: object, message: str) -> None:
    with pytest.raises(AlarmPolicyError, match=message) as err:
        parse_alarm_policy(section, source="rules.yaml")
    assert str(err.value).startswith("rules.yaml: station")
