"""Readings beyond the device's measuring range (a meter's "HI" / "LO", issue 14).

A sample flagged ``ABOVE_RANGE`` / ``BELOW_RANGE`` carries the device's limit as its value; the
true value lies beyond it. Rules that compare values see it as beyond any threshold on its side;
rules that compute from values (rate, forecast, baseline, rhythm) leave it out; a staleness rule
counts it as a reading.
"""

from __future__ import annotations

import math

from detectors import Direction, Engine, RuleSet, Severity, ThresholdLevel, ThresholdRule
from detectors.const import FLAG_ABOVE_RANGE, FLAG_BELOW_RANGE, FLAG_DEVICE_WARNING
from detectors.rules import RateRule, StaleLevel, StalenessRule
from tests.detectors.helpers import T0, run, series

HI, LO = FLAG_ABOVE_RANGE, FLAG_BELOW_RANGE


def meter_rule(direction: Direction, threshold: float, name: str) -> ThresholdRule:
    level = ThresholdLevel(severity=Severity.CRITICAL, threshold=threshold, for_s=0, escalate_after_s=300)
    return ThresholdRule(
        name=name, metric="glucose", direction=direction, levels=(level,),
        clear_threshold=threshold, clear_for_s=0, max_gap_s=86_400, cooldown_s=0,
    )


def glucose(t: float, value: float, flags: int = 0) -> tuple[str, str, float, float, int]:
    return ("p", "glucose", T0 + t, value, flags)


def test_a_hi_reading_is_above_any_threshold_even_its_own_limit() -> None:
    """A meter's "HI" carries 600 (its limit); a rule "above 600" still fires: the truth is > 600."""
    engine = Engine(RuleSet(rules=(meter_rule(Direction.ABOVE, 600, "hi"), meter_rule(Direction.ABOVE, 9000, "x"))))
    events = run(engine, [glucose(0, 600.0, HI)])
    assert sorted((e.rule, e.state, e.severity) for e in events) == [("hi", "raised", "critical"),
                                                                     ("x", "raised", "critical")]
    hi = next(e for e in events if e.rule == "hi")
    assert hi.message == "Glucose above 600 mg/dL (now HI, above the device's measuring range)"
    assert hi.to_dict()["value"] is None  # ±inf has no JSON number; the message says what it was
    # the same value without the flag is a reading at the limit, not above it
    assert run(Engine(RuleSet(rules=(meter_rule(Direction.ABOVE, 600, "hi"),))), [glucose(0, 600.0)]) == []


def test_a_lo_reading_is_below_any_threshold_and_never_above_one() -> None:
    rules = (meter_rule(Direction.BELOW, 20, "lo"), meter_rule(Direction.ABOVE, 10, "high"))
    events = run(Engine(RuleSet(rules=rules)), [glucose(0, 20.0, LO)])
    assert [(e.rule, e.state) for e in events] == [("lo", "raised")]
    assert events[0].message == "Glucose below 20 mg/dL (now LO, below the device's measuring range)"


def test_a_reading_back_in_range_clears_the_alert() -> None:
    engine = Engine(RuleSet(rules=(meter_rule(Direction.ABOVE, 600, "hi"),)))
    assert [e.state for e in run(engine, [glucose(0, 600.0, HI)])] == ["raised"]
    assert [e.state for e in run(engine, [glucose(600, 600.0, HI)])] == []  # still HI: still open
    assert [e.state for e in run(engine, [glucose(1200, 250.0)])] == ["cleared"]


def test_a_quality_problem_still_gates_a_range_reading() -> None:
    engine = Engine(RuleSet(rules=(meter_rule(Direction.ABOVE, 600, "hi"),)))
    assert run(engine, [glucose(0, 600.0, HI | FLAG_DEVICE_WARNING)]) == []


def test_both_range_bits_at_once_is_unusable() -> None:
    rules = (meter_rule(Direction.ABOVE, 600, "hi"), meter_rule(Direction.BELOW, 20, "lo"))
    assert run(Engine(RuleSet(rules=rules)), [glucose(0, 300.0, HI | LO)]) == []


def test_rate_rules_skip_range_readings_instead_of_seeing_an_infinite_change() -> None:
    rule = RateRule(
        name="falling", metric="glucose", direction=Direction.BELOW,
        levels=(ThresholdLevel(severity=Severity.WARNING, threshold=-2, for_s=0),),
        clear_threshold=-1, clear_for_s=0, max_gap_s=3600, cooldown_s=0, consecutive=1,
    )
    engine = Engine(RuleSet(rules=(rule,)))
    # 600 HI then 300: a true fall of unknown size; with the HI as a number it would be "-inf/min"
    samples = [glucose(0, 300.0), glucose(300, 600.0, HI), glucose(600, 300.0)]
    assert run(engine, samples) == []


def test_a_range_reading_is_a_reading_for_staleness() -> None:
    rule = StalenessRule(name="stale", metric="glucose", levels=(StaleLevel(severity=Severity.WARNING, after_s=600),))
    engine = Engine(RuleSet(rules=(rule,)))
    run(engine, [glucose(0, 100.0)])
    assert [e.state for e in engine.tick(T0 + 1200)] == ["raised"]
    cleared = run(engine, [glucose(1300, 600.0, HI)])
    assert [e.state for e in cleared] == ["cleared"]
    assert "HI" in cleared[0].message


def test_vitals_are_unchanged_by_range_handling_when_no_sample_has_a_range_flag() -> None:
    """The fast path (no range bit in the batch) gives what it gave before."""
    engine = Engine(RuleSet(rules=(meter_rule(Direction.ABOVE, 180, "high"),)))
    events = run(engine, series("p", "glucose", 0, [190.0]))
    assert [e.state for e in events] == ["raised"]
    assert math.isclose(events[0].value, 190.0)
