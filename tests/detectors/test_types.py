"""One behaviour per test for the rule types and options added in milestone 2 (issue 4)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from detectors import Direction, Engine, RuleSet, Severity, StateError, ThresholdLevel
from detectors.rules import (
    BaselineRule,
    Flapping,
    ForecastRule,
    Period,
    RateRule,
    StaleLevel,
    StalenessRule,
)
from tests.detectors.helpers import T0, json_roundtrip, run, run6, series, tachycardia_rule
from tests.detectors.reference import ReferenceEngine


def states(events) -> list[tuple[str, str, str, float]]:
    return [(e.rule, e.state, e.severity, e.time - T0) for e in events]


def engine(*rules, **kw) -> Engine:
    return Engine(RuleSet(rules=tuple(rules)), **kw)


class TestEscalationClock:
    def test_backlog_alerts_escalate_from_processing_time(self) -> None:
        e = engine(tachycardia_rule())
        # A 2-hour-old backlog arrives now: raised at its event time, escalation counts from now.
        now = T0 + 7200
        (raised,) = run6(e, [(*s, "") for s in series("p", "heart_rate", 0, [130] * 11)], now=now)
        assert raised.time == T0 + 600
        assert e.tick(now + 899) == []
        assert [x.state for x in e.tick(now + 900)] == ["escalated"]

    def test_without_now_the_event_time_counts(self) -> None:
        e = engine(tachycardia_rule())
        (raised,) = run(e, series("p", "heart_rate", 0, [130] * 11))
        assert [x.state for x in e.tick(raised.time + 900)] == ["escalated"]


class TestDevices:
    def meter_rule(self):
        return replace(
            tachycardia_rule(),
            name="meter_low",
            metric="glucose",
            direction=Direction.BELOW,
            levels=(ThresholdLevel(severity=Severity.CRITICAL, threshold=54),),
            clear_threshold=70,
            clear_for_s=0,
            device_prefix="gls-",
            schedule=(),
            flapping=None,
        )

    def test_a_late_meter_reading_behind_the_cgm_still_alerts(self) -> None:
        e = engine(self.meter_rule())
        cgm = [("p", "glucose", T0 + 60 * i, 110.0, 0, "cgm-1") for i in range(30)]
        assert run6(e, cgm) == []
        (raised,) = run6(e, [("p", "glucose", T0 + 300.0, 45.0, 0, "gls-1")])
        assert (raised.state, raised.severity, raised.time) == ("raised", "critical", T0 + 300)

    def test_the_watermark_is_per_device_and_survives_a_checkpoint(self) -> None:
        e = engine(self.meter_rule())
        run6(e, [("p", "glucose", T0 + 600.0, 110.0, 0, "cgm-1"), ("p", "glucose", T0 + 60.0, 90.0, 0, "gls-1")])
        state = json_roundtrip(e.export_state("p"))
        assert state["devices"] == {"cgm-1": {"glucose": T0 + 600}, "gls-1": {"glucose": T0 + 60}}
        fresh = engine(self.meter_rule())
        fresh.import_state("p", state)
        assert run6(fresh, [("p", "glucose", T0 + 60.0, 40.0, 0, "gls-1")]) == []  # redelivered
        assert len(run6(fresh, [("p", "glucose", T0 + 120.0, 40.0, 0, "gls-1")])) == 1

    def test_rules_without_a_prefix_see_every_device(self) -> None:
        e = engine(replace(self.meter_rule(), device_prefix=None))
        assert len(run6(e, [("p", "glucose", T0, 45.0, 0, "cgm-1")])) == 1

    def low_and_meter(self) -> RuleSet:
        """A one-reading CGM low that leaves meters out, beside the meter's own rule."""
        low = replace(self.meter_rule(), name="cgm_low", device_prefix=None, exclude_device_prefix="gls-")
        return RuleSet(rules=(low, self.meter_rule()))

    @pytest.mark.parametrize("reference", [False, True], ids=["engine", "reference"])
    def test_an_excluded_device_raises_only_the_rule_that_takes_it(self, reference: bool) -> None:
        rules = self.low_and_meter()
        rows = [("meter", "glucose", T0, 45.0, 0, "gls-1"), ("cgm", "glucose", T0, 45.0, 0, "cgm-1")]
        rows += [("odd", "glucose", T0, 45.0, 0, "libre-3"), ("blank", "glucose", T0, 45.0, 0, "")]
        events = ReferenceEngine(rules).process(rows) if reference else run6(Engine(rules), rows)
        assert sorted((x.patient, x.rule) for x in events if x.state == "raised") == [
            ("blank", "cgm_low"),  # a device with no id, or an unexpected one, is still watched
            ("cgm", "cgm_low"),
            ("meter", "meter_low"),
            ("odd", "cgm_low"),
        ]

    def test_an_excluded_device_neither_raises_nor_clears(self) -> None:
        e = Engine(self.low_and_meter())
        (raised,) = [x for x in run6(e, [("p", "glucose", T0, 45.0, 0, "cgm-1")]) if x.rule == "cgm_low"]
        # The meter's 120 mg/dL would clear the CGM's alert if the CGM rule took it.
        assert [x.rule for x in run6(e, [("p", "glucose", T0 + 60, 120.0, 0, "gls-1")])] == []
        (cleared,) = run6(e, [("p", "glucose", T0 + 120, 120.0, 0, "cgm-1")])
        assert (cleared.rule, cleared.state, cleared.alert_id) == ("cgm_low", "cleared", raised.alert_id)

    def test_an_excluded_device_does_not_feed_staleness(self) -> None:
        stale = StalenessRule(
            name="cgm_stale",
            metric="glucose",
            levels=(StaleLevel(severity=Severity.WARNING, after_s=600),),
            exclude_device_prefix="gls-",
        )
        e = engine(stale, enrolled=["p"])
        assert e.tick(T0) == []
        run6(e, [("p", "glucose", T0 + 300, 110.0, 0, "gls-1")])  # a meter reading is not CGM data
        (raised,) = e.tick(T0 + 660)
        assert raised.state == "raised"
        assert raised.message == "No glucose data from devices other than gls-* for over 10 min"
        assert states(run6(e, [("p", "glucose", T0 + 700, 110.0, 0, "cgm-1")])) == [
            ("cgm_stale", "cleared", "warning", 700.0)
        ]


    def test_the_default_cgm_stale_is_not_held_off_by_fingersticks(self) -> None:
        """A silent sensor with a meter in use: the meter's readings must not hide the CGM's silence."""
        from rpm_core.rules import default_rules_path, load_rules

        rules = load_rules(default_rules_path())
        e = Engine(RuleSet(rules=tuple(r for r in rules.rules if r.name == "cgm_stale")), enrolled=["p"])
        run6(e, [("p", "glucose", T0, 110.0, 0, "cgm-1")])
        fingersticks = [("p", "glucose", T0 + 600.0 * k, 95.0, 0, "bgm-1") for k in range(1, 4)]
        run6(e, fingersticks)
        (raised,) = e.tick(T0 + 31 * 60)
        assert (raised.rule, raised.state, raised.severity) == ("cgm_stale", "raised", "warning")


class TestSchedule:
    def night_rule(self):
        night = Period(
            name="night",
            start_min=22 * 60,
            end_min=7 * 60,
            tz="UTC",
            levels=(ThresholdLevel(severity=Severity.WARNING, threshold=100, for_s=600),),
            clear_threshold=90,
        )
        return tachycardia_rule(schedule=(night,))

    def test_night_levels_apply_at_night_only(self) -> None:
        day = 1_700_000_000.0 - (1_700_000_000 % 86400) + 12 * 3600  # noon UTC
        night = day + 11 * 3600  # 23:00 UTC
        e = engine(self.night_rule())
        hr = [("p", "heart_rate", day + 60 * i, 110.0, 0, "") for i in range(15)]
        hr += [("q", "heart_rate", night + 60 * i, 110.0, 0, "") for i in range(15)]
        events = run6(e, hr)
        assert [(x.patient, x.time - night) for x in events] == [("q", 600.0)]
        assert events[0].message == "Heart rate above 100 bpm for 10 min (night) (now 110 bpm)"


class TestFlapping:
    def test_the_third_raise_within_the_window_is_held_open(self) -> None:
        rule = tachycardia_rule(
            levels=(ThresholdLevel(severity=Severity.WARNING, threshold=120),),
            clear_for_s=0,
            cooldown_s=0,
            flapping=Flapping(raises=3, within_s=3600, hold_s=600),
        )
        e = engine(rule)
        flapping = [130, 100] * 6 + [100] * 12
        events = run(e, series("p", "heart_rate", 0, flapping))
        assert [(x.state, x.time - T0) for x in events] == [
            ("raised", 0.0),
            ("cleared", 60.0),
            ("raised", 120.0),
            ("cleared", 180.0),
            ("raised", 240.0),  # third raise: held until 10 min back to normal
            ("cleared", 660.0 + 600.0),
        ]


class TestRate:
    def rule(self, **changes):
        base = RateRule(
            name="falling",
            metric="glucose",
            direction=Direction.BELOW,
            levels=(ThresholdLevel(severity=Severity.WARNING, threshold=-2),),
            clear_threshold=-1,
            max_gap_s=660,
            consecutive=3,
            gate_below=120,
        )
        return replace(base, **changes)

    def test_needs_n_consecutive_fast_falls_below_the_gate(self) -> None:
        e = engine(self.rule())
        # Falls of 15 mg/dL per 5 min (3 mg/dL/min): the third consecutive one, below 120, raises.
        events = run(e, series("p", "glucose", 0, [140, 125, 110, 95, 80], step=300))
        assert states(events) == [("falling", "raised", "warning", 900.0)]
        assert events[0].message.startswith("Glucose falling faster than 2 mg/dL/min for 3 readings, below 120")

    def test_one_noisy_drop_does_not_raise(self) -> None:
        e = engine(self.rule())
        assert run(e, series("p", "glucose", 0, [110, 109, 80, 108, 107, 106], step=300)) == []

    def test_a_gap_breaks_the_rate(self) -> None:
        e = engine(self.rule())
        values = series("p", "glucose", 0, [110, 95, 80], step=300) + series("p", "glucose", 2000, [65], step=300)
        assert run(e, values) == []


class TestForecast:
    def rule(self, model: str, **changes):
        rule = ForecastRule(
            name="soon",
            metric="glucose",
            direction=Direction.BELOW,
            levels=(ThresholdLevel(severity=Severity.CRITICAL, threshold=55),),
            clear_threshold=70,
            clear_for_s=900,
            max_gap_s=660,
            model=model,
        )
        return replace(rule, **changes)

    def test_a_steady_fall_is_predicted_by_both_models(self) -> None:
        fall = [150 - 10 * i for i in range(10)]  # 2 mg/dL/min
        for model in ("damped_trend", "ar2"):
            events = run(engine(self.rule(model)), series("p", "glucose", 0, fall, step=300))
            assert events and events[0].state == "raised", model
            assert events[0].value > 55

    def test_one_outlier_does_not_raise_the_damped_trend(self) -> None:
        values = [110, 111, 110, 109, 110, 60, 110, 111]
        assert run(engine(self.rule("damped_trend")), series("p", "glucose", 0, values, step=300)) == []
        ar2 = run(engine(self.rule("ar2")), series("p", "glucose", 0, values, step=300))
        assert [x.state for x in ar2][:1] == ["raised"]  # AR2 extrapolates the single drop

    def test_no_forecast_alert_once_already_low(self) -> None:
        assert run(engine(self.rule("damped_trend")), series("p", "glucose", 0, [50] * 8, step=300)) == []


class TestStaleness:
    def rule(self, **changes):
        rule = StalenessRule(
            name="stale",
            metric="glucose",
            levels=(
                StaleLevel(severity=Severity.WARNING, after_s=1800),
                StaleLevel(severity=Severity.CRITICAL, after_s=7200, escalate_after_s=600),
            ),
        )
        return replace(rule, **changes)

    def test_raised_upgraded_escalated_and_cleared(self) -> None:
        e = engine(self.rule())
        run(e, series("p", "glucose", 0, [110]))
        assert e.tick(T0 + 1800) == []
        (warn,) = e.tick(T0 + 1801)
        assert (warn.state, warn.severity, warn.since) == ("raised", "warning", T0)
        (crit,) = e.tick(T0 + 7201)
        assert (crit.state, crit.severity, crit.alert_id) == ("raised", "critical", warn.alert_id)
        assert [x.state for x in e.tick(T0 + 7801)] == ["escalated"]
        (cleared,) = run(e, series("p", "glucose", 8000, [120]))
        assert (cleared.state, cleared.alert_id) == ("cleared", warn.alert_id)

    def test_enrolment_is_checkpointed(self) -> None:
        e = engine(self.rule())
        e.enroll(["quiet"], at=T0)
        fresh = engine(self.rule())
        fresh.import_state("quiet", json_roundtrip(e.export_state("quiet")))
        assert [x.patient for x in fresh.tick(T0 + 1801)] == ["quiet"]

    def test_patients_never_seen_nor_enrolled_are_not_watched(self) -> None:
        e = engine(self.rule())
        run(e, series("p", "heart_rate", 0, [70]))
        assert e.tick(T0 + 10**6) == []


class TestBaseline:
    def rule(self):
        return BaselineRule(
            name="base",
            metric="heart_rate",
            direction=Direction.ABOVE,
            levels=(ThresholdLevel(severity=Severity.WARNING, threshold=3.5, for_s=600),),
            clear_threshold=2,
            max_gap_s=300,
            block_s=3600,
            window_s=86400,
            min_blocks=12,
            min_scale=5,
        )

    def test_no_alert_before_enough_history(self) -> None:
        e = engine(self.rule())
        assert run(e, series("p", "heart_rate", 0, [60] * 60 + [120] * 60, step=60)) == []

    def test_the_state_stays_bounded(self) -> None:
        e = engine(self.rule())
        run(e, series("p", "heart_rate", 0, list(60 + np.arange(3 * 24 * 60) % 7), step=60))
        state = e.export_state("p")["rules"]["base"]
        assert len(state["blocks"]) == 24 and 0 < state["current"][2] <= 60  # never raw history

    @pytest.mark.parametrize("current", [[None, 95.0, 1], [1.5, 95.0, 1], [3, 95.0, 0], [3, 95.0, 1e-300],
                                         [3, None, 1], [3, 95.0, 2.5]])
    def test_a_current_block_that_would_not_export_is_refused(self, current: list[object]) -> None:
        """``[null, 95, 1]`` was imported as a NaN block id that later failed the export (CI's fuzz test);
        a fractional count made the block mean infinite."""
        e = engine(self.rule())
        run(e, series("p", "heart_rate", 0, [60] * 90, step=60))
        state = json_roundtrip(e.export_state("p"))
        state["rules"]["base"]["current"] = current
        with pytest.raises(StateError, match="current"):
            engine(self.rule()).import_state("p", state)

    def test_a_ring_block_with_a_fractional_id_is_refused(self) -> None:
        e = engine(self.rule())
        run(e, series("p", "heart_rate", 0, [60] * 90, step=60))
        state = json_roundtrip(e.export_state("p"))
        state["rules"]["base"]["blocks"][0][0] += 0.5
        with pytest.raises(StateError, match="whole id"):
            engine(self.rule()).import_state("p", state)



@pytest.mark.parametrize("value", [70.0, 150.0], ids=["same-value", "other-value"])
def test_a_reading_at_the_time_of_the_last_in_a_rate_history_gives_no_rate(value: float) -> None:
    """A damaged state record (found by the packed-import fuzz test) can hold a device watermark
    behind the rate rule's history, so a reading already in the history, or another of the same
    time, is taken again: 0/0 gave a NaN with a numpy warning, x/0 an infinite rate that raised
    the alert. No time passed means no rate."""
    from rpm_core.rules import parse_rules

    rules = parse_rules("""
version: 1
rules:
  hr_rising:
    type: rate
    metric: heart_rate
    direction: above
    consecutive: 2
    max_gap: 60s
    levels:
      warning: {threshold: 20}
    clear: {threshold: 10, for: 0s}
""")
    engine = Engine(rules)
    run6(engine, [("p1", "heart_rate", T0 + i, 70.0, 0, "hr-1") for i in range(3)], now=T0)
    state = json_roundtrip(engine.export_all())["p1"]
    state["devices"]["hr-1"]["heart_rate"] = T0 - 100  # the watermarks behind the history
    state["rules"]["hr_rising"]["last_t"] = T0 - 100
    fresh = Engine(rules)
    fresh.import_state("p1", state)
    assert run6(fresh, [("p1", "heart_rate", T0 + 2, value, 0, "hr-1")], now=T0 + 3) == []
