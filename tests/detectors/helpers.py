"""Builders and hypothesis strategies shared by the detector tests (``tests.detectors.helpers``)."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from typing import Any

from hypothesis import strategies as st

from detectors import AlertEvent, Direction, Engine, RuleSet, Severity, ThresholdLevel, ThresholdRule
from detectors.rules import (
    BaselineRule,
    Flapping,
    ForecastRule,
    Period,
    RateRule,
    RhythmRule,
    StaleLevel,
    StalenessRule,
)

T0 = 1_700_000_000.0
Sample = tuple[str, str, float, float, int]  # patient, metric, t, value, flags


def tachycardia_rule(**changes: Any) -> ThresholdRule:
    """A heart-rate rule like the default one, with ``changes`` applied."""
    fields: dict[str, Any] = {
        "name": "tachycardia",
        "metric": "heart_rate",
        "direction": Direction.ABOVE,
        "levels": (
            ThresholdLevel(severity=Severity.WARNING, threshold=120, for_s=600, escalate_after_s=900),
            ThresholdLevel(severity=Severity.CRITICAL, threshold=150, for_s=120, escalate_after_s=300),
        ),
        "clear_threshold": 110,
        "clear_for_s": 300,
        "max_gap_s": 120,
        "cooldown_s": 600,
    }
    fields.update(changes)
    return ThresholdRule(**fields)


def series(patient: str, metric: str, start: float, values: list[float], step: float = 60.0) -> list[Sample]:
    """Samples of one patient and metric, ``step`` seconds apart from ``T0 + start``."""
    return [(patient, metric, T0 + start + i * step, float(v), 0) for i, v in enumerate(values)]


def run(engine: Engine, samples: list[Sample]) -> list[AlertEvent]:
    """Feed ``samples`` to ``engine`` as one batch."""
    if not samples:
        return engine.process(engine.batch([], [], [], []))
    patients, metrics, t, value, flags = zip(*samples, strict=True)
    return engine.process(engine.batch(list(patients), list(metrics), list(t), list(value), list(flags)))


def dicts(events: list[AlertEvent]) -> list[dict[str, Any]]:
    """Events as comparable dicts (NaN-free)."""
    return [e.to_dict() for e in events]


def by_key(events: list[AlertEvent]) -> list[dict[str, Any]]:
    """Events sorted independently of batching (different patients may interleave differently)."""
    return sorted(dicts(events), key=lambda d: (d["patient"], d["rule"], d["time"], d["state"]))


def json_roundtrip(state: Any) -> Any:
    """What a Faust table (JSON serializer) would give back; NaN would fail here."""
    return json.loads(json.dumps(state, allow_nan=False))


# -- hypothesis strategies --------------------------------------------------------------------------

PATIENTS = ("p0", "p1", "p2")
DURATIONS = (0.0, 5.0, 10.0, 15.0, 30.0)
# Excursions tolerated by a run: none (most rules), shorter than a sample step, a few steps, more than a gap.
TOLERATES = st.sampled_from((0.0, 0.0, 1.0, 4.0, 9.0, 30.0))
# Running medians of threshold rules: none (most rules), of two (an even count), three, five readings.
MEDIANS = st.sampled_from((1, 1, 2, 3, 5))


@st.composite
def threshold_rules(
    draw: st.DrawFn, name: str, metric: str, direction: Direction | None = None, median_of: int | None = None
) -> ThresholdRule:
    """A random but valid threshold rule whose thresholds sit in 100-170, where the values are
    (``median_of``: an override's, which must keep the rule's; drawn if None)."""
    direction = direction or draw(st.sampled_from(list(Direction)))
    severities = sorted(draw(st.sets(st.sampled_from(list(Severity)), min_size=1, max_size=3)))
    sign = direction.sign
    threshold = draw(st.integers(115, 155)) * 1.0
    levels = []
    for severity in severities:
        levels.append(
            ThresholdLevel(
                severity=severity,
                threshold=threshold,
                for_s=draw(st.sampled_from(DURATIONS)),
                escalate_after_s=draw(st.sampled_from((None, 10.0, 30.0, 60.0))),
            )
        )
        threshold += sign * draw(st.integers(1, 15))
    return ThresholdRule(
        name=name,
        metric=metric,
        direction=direction,
        levels=tuple(levels),
        clear_threshold=levels[0].threshold - sign * draw(st.integers(0, 12)),
        clear_for_s=draw(st.sampled_from(DURATIONS)),
        max_gap_s=draw(st.sampled_from((7.0, 12.0, 25.0, 1000.0))),
        tolerate_s=draw(TOLERATES),
        median_of=draw(MEDIANS) if median_of is None else median_of,
        cooldown_s=draw(st.sampled_from((0.0, 10.0, 30.0))),
        enabled=draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else True,
    )


@st.composite
def rulesets(draw: st.DrawFn) -> RuleSet:
    """One to three rules over heart rate and glucose, with per-patient overrides sometimes."""
    specs = draw(
        st.lists(st.sampled_from(("heart_rate", "glucose")), min_size=1, max_size=3).map(
            lambda ms: [(f"rule{i}", m) for i, m in enumerate(ms)]
        )
    )
    rules = tuple(draw(threshold_rules(name, metric)) for name, metric in specs)
    patient_rules: dict[str, dict[str, ThresholdRule]] = {}
    for patient in draw(st.sets(st.sampled_from(PATIENTS), max_size=2)):
        base = draw(st.sampled_from(rules))
        override = draw(threshold_rules(base.name, base.metric, base.direction, base.median_of))
        patient_rules[patient] = {base.name: override}
    return RuleSet(rules=rules, patient_rules=patient_rules)


@st.composite
def streams(draw: st.DrawFn, max_per_series: int = 40) -> list[Sample]:
    """Samples of a few patients and metrics, in time order overall (ties in random order).

    Steps of 0 make exact duplicates (with possibly different values: the first must win), steps
    longer than the rules' max gaps break continuity, a few samples carry quality flags.
    """
    out: list[Sample] = []
    for patient in PATIENTS:
        for metric in ("heart_rate", "glucose", "rr_interval"):
            n = draw(st.integers(0, max_per_series))
            t = T0 + draw(st.sampled_from((0.0, 0.5, 3.0)))
            for _ in range(n):
                t += draw(st.sampled_from((0.0, 1.0, 2.5, 5.0, 5.0, 5.0, 10.0, 20.0)))
                value = draw(st.integers(95, 175)) + draw(st.sampled_from((0.0, 0.0, 0.5)))
                flags = draw(st.sampled_from((0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 24, 10)))
                out.append((patient, metric, t, float(value), flags))
    order = draw(st.permutations(range(len(out))))
    shuffled = [out[i] for i in order]
    return sorted(shuffled, key=lambda s: s[2])  # stable: ties keep their random order


def split(samples: list[Sample], cuts: list[int], rnd: random.Random) -> list[list[Sample]]:
    """``samples`` cut into batches at ``cuts``, each batch shuffled (the engine sorts)."""
    bounds = sorted({0, len(samples), *(c % (len(samples) + 1) for c in cuts)})
    batches = [samples[a:b] for a, b in itertools.pairwise(bounds)]
    for batch in batches:
        rnd.shuffle(batch)
    return batches


# -- every rule type ----------------------------------------------------------------------------------

SIGNAL_KINDS = ("threshold", "rate", "forecast", "baseline", "rhythm")
DEVICES = ("", "cgm-1", "gls-1", "cgm-2")


@st.composite
def schedules(draw: st.DrawFn, base: ThresholdRule) -> tuple[Period, ...]:
    """Zero or one period (in UTC or Paris time) with its own, shifted levels."""
    if draw(st.integers(0, 2)) != 0:
        return ()
    shift = draw(st.integers(-6, 6)) * 1.0
    levels = tuple(
        ThresholdLevel(severity=lv.severity, threshold=lv.threshold + shift, for_s=lv.for_s) for lv in base.levels
    )
    clear = base.clear_threshold + shift - base.direction.sign * draw(st.integers(0, 3))
    start = draw(st.integers(0, 1439))
    end = (start + draw(st.integers(1, 1438))) % 1440
    return (
        Period(
            name="night",
            start_min=start,
            end_min=end,
            tz=draw(st.sampled_from(("UTC", "Europe/Paris"))),
            levels=levels,
            clear_threshold=clear,
        ),
    )


def _extras(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """Type-specific fields, scaled to the short random streams (seconds, not hours)."""
    if kind == "rate":
        return {
            "consecutive": draw(st.integers(1, 3)),
            "gate_below": draw(st.sampled_from((None, 150.0))),
            "gate_above": draw(st.sampled_from((None, 100.0))),
        }
    if kind == "forecast":
        return {
            "model": draw(st.sampled_from(("damped_trend", "ar2", "kalman"))),
            "horizon_s": draw(st.sampled_from((20.0, 600.0, 1200.0))),
            "window_s": draw(st.sampled_from((20.0, 60.0))),
            "damping_s": draw(st.sampled_from((30.0, 1800.0))),
            "min_points": draw(st.integers(2, 4)),
        }
    if kind == "baseline":
        return {
            "block_s": 10.0,
            "window_s": draw(st.sampled_from((30.0, 60.0))),
            "min_blocks": draw(st.integers(1, 3)),
            "min_scale": draw(st.sampled_from((0.5, 5.0))),
        }
    if kind == "rhythm":
        return {
            "window_beats": 16,
            "every_beats": draw(st.sampled_from((1, 3, 8))),
            "votes": draw(st.integers(1, 3)),
            "trim_beats": draw(st.integers(0, 2)),
            "nrmssd_min": draw(st.sampled_from((0.05, 0.1))),
            "method": draw(st.sampled_from(RhythmRule.METHODS)),
        }
    return {}


@st.composite
def signal_rules(
    draw: st.DrawFn, name: str, kind: str, metric: str, like: ThresholdRule | None = None
) -> ThresholdRule:
    """A random valid rule of ``kind``; ``like`` (a default) fixes what overrides must keep."""
    cls = {"threshold": ThresholdRule, "rate": RateRule, "forecast": ForecastRule, "baseline": BaselineRule}.get(kind)
    if kind == "rhythm":
        level = ThresholdLevel(
            severity=draw(st.sampled_from(list(Severity))),
            threshold=0.5,
            for_s=draw(st.sampled_from(DURATIONS)),
            escalate_after_s=draw(st.sampled_from((None, 30.0))),
        )
        fields = {"levels": (level,), "clear_threshold": 0.5, "direction": Direction.ABOVE}
        cls = RhythmRule
    else:
        base = draw(threshold_rules(name, metric, like.direction if like else None))
        fields = {f: getattr(base, f) for f in ("levels", "clear_threshold", "direction")}
        if kind == "rate":
            fields = _rate_levels(draw, base.direction)
        elif kind == "baseline":
            fields = _z_levels(draw, base.direction)
    extras = _extras(draw, kind)
    if kind == "threshold":
        extras["median_of"] = draw(MEDIANS)
    if like is not None:
        for fixed in ("model", "block_s", "window_s", "window_beats", "median_of"):
            if hasattr(like, fixed):
                extras[fixed] = getattr(like, fixed)
    rule = cls(  # type: ignore[misc]
        name=name,
        metric=metric,
        **fields,
        clear_for_s=draw(st.sampled_from(DURATIONS)),
        max_gap_s=draw(st.sampled_from((7.0, 12.0, 25.0, 1000.0))),
        tolerate_s=0.0 if kind == "rhythm" else draw(TOLERATES),
        cooldown_s=draw(st.sampled_from((0.0, 10.0, 30.0))),
        enabled=draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else True,
        flapping=draw(st.sampled_from((None, None, Flapping(raises=2, within_s=60.0, hold_s=30.0)))),
        **_devices(draw, like, "gls-"),
        **extras,
    )
    if like is not None and like.schedule:
        return replace(rule, schedule=like_schedule(like, rule))
    if like is None and kind != "rhythm":
        return replace(rule, schedule=draw(schedules(rule)))
    return rule


def _devices(draw: st.DrawFn, like: ThresholdRule | StalenessRule | None, prefix: str) -> dict[str, str | None]:
    """The rule's device filter: the default's (an override cannot change it), else drawn: every
    device, only ``prefix``, all but a prefix (``cgm-2`` under ``cgm-``: some of the included left out)."""
    if like is not None:
        return {"device_prefix": like.device_prefix, "exclude_device_prefix": like.exclude_device_prefix}
    include = draw(st.sampled_from((None, None, prefix)))
    exclude = draw(st.sampled_from((None, None, "gls-", "cgm-", "cgm-2") if include is None else (None, f"{prefix}2")))
    return {"device_prefix": include, "exclude_device_prefix": exclude}


def like_schedule(like: ThresholdRule, rule: ThresholdRule) -> tuple[Period, ...]:
    """The default's periods, with the override's own levels (an override keeps the period names)."""
    return tuple(replace(p, levels=rule.levels, clear_threshold=rule.clear_threshold) for p in like.schedule)


def _rate_levels(draw: st.DrawFn, direction: Direction) -> dict[str, Any]:
    sign = direction.sign
    first = sign * draw(st.sampled_from((0.0, 1.0, 5.0, 20.0)))
    levels = [ThresholdLevel(severity=Severity.WARNING, threshold=first, for_s=draw(st.sampled_from(DURATIONS)))]
    if draw(st.booleans()):
        levels.append(ThresholdLevel(severity=Severity.CRITICAL, threshold=first + sign * 30.0, escalate_after_s=30.0))
    return {
        "levels": tuple(levels),
        "clear_threshold": first - sign * draw(st.sampled_from((0.0, 2.0))),
        "direction": direction,
    }


def _z_levels(draw: st.DrawFn, direction: Direction) -> dict[str, Any]:
    sign = direction.sign
    first = sign * draw(st.sampled_from((0.5, 1.0, 2.0)))
    levels = (ThresholdLevel(severity=Severity.WARNING, threshold=first, for_s=draw(st.sampled_from(DURATIONS))),)
    return {"levels": levels, "clear_threshold": first - sign * 0.5, "direction": direction}


@st.composite
def staleness_rules(draw: st.DrawFn, name: str, metric: str, like: StalenessRule | None = None) -> StalenessRule:
    """A random staleness rule (seconds-scale silences)."""
    first = draw(st.sampled_from((5.0, 15.0, 30.0)))
    levels = [
        StaleLevel(severity=Severity.WARNING, after_s=first, escalate_after_s=draw(st.sampled_from((None, 20.0))))
    ]
    if draw(st.booleans()):
        levels.append(StaleLevel(severity=Severity.CRITICAL, after_s=first + draw(st.sampled_from((5.0, 40.0)))))
    return StalenessRule(
        name=name,
        metric=metric,
        levels=tuple(levels),
        cooldown_s=draw(st.sampled_from((0.0, 20.0))),
        enabled=draw(st.booleans()) if draw(st.integers(0, 5)) == 0 else True,
        **_devices(draw, like, "cgm-"),
    )


@st.composite
def all_rulesets(draw: st.DrawFn) -> RuleSet:
    """One to three rules of any type, sometimes with per-patient overrides."""
    kinds = draw(st.lists(st.sampled_from((*SIGNAL_KINDS, "staleness")), min_size=1, max_size=3))
    rules: list[Any] = []
    for i, kind in enumerate(kinds):
        metric = "rr_interval" if kind == "rhythm" else draw(st.sampled_from(("heart_rate", "glucose")))
        if kind == "staleness":
            rules.append(draw(staleness_rules(f"rule{i}", metric)))
        else:
            rules.append(draw(signal_rules(f"rule{i}", kind, metric)))
    patient_rules: dict[str, dict[str, Any]] = {}
    for patient in draw(st.sets(st.sampled_from(PATIENTS), max_size=2)):
        base = draw(st.sampled_from(rules))
        if isinstance(base, StalenessRule):
            override = draw(staleness_rules(base.name, base.metric, base))
        else:
            override = draw(signal_rules(base.name, base.type, base.metric, base))
        patient_rules[patient] = {base.name: override}
    return RuleSet(rules=tuple(rules), patient_rules=patient_rules)


@st.composite
def device_streams(draw: st.DrawFn, max_per_series: int = 24) -> list[tuple[Any, ...]]:
    """Like :func:`streams`, with device ids (sometimes two devices per metric) and RR intervals."""
    out: list[tuple[Any, ...]] = []
    for patient in PATIENTS:
        for metric in ("heart_rate", "glucose", "rr_interval"):
            devices = draw(st.lists(st.sampled_from(DEVICES), min_size=1, max_size=2, unique=True))
            for device in devices:
                n = draw(st.integers(0, max_per_series))
                t = T0 + draw(st.sampled_from((0.0, 0.5, 3.0)))
                for _ in range(n):
                    t += draw(st.sampled_from((0.0, 1.0, 2.5, 5.0, 5.0, 5.0, 10.0, 20.0)))
                    if metric == "rr_interval":
                        value = draw(st.sampled_from((0.5, 0.7, 0.8, 0.8, 0.8, 0.85, 0.9, 1.2, 1.6)))
                    else:
                        value = draw(st.integers(95, 175)) + draw(st.sampled_from((0.0, 0.0, 0.5)))
                    flags = draw(st.sampled_from((0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 24, 10)))
                    out.append((patient, metric, t, float(value), flags, device))
    order = draw(st.permutations(range(len(out))))
    shuffled = [out[i] for i in order]
    return sorted(shuffled, key=lambda s: s[2])


def run6(engine: Engine, samples: list[tuple[Any, ...]], now: float | None = None) -> list[AlertEvent]:
    """Feed samples with a device column to ``engine`` as one batch."""
    if not samples:
        return engine.process(engine.batch([], [], [], []), now=now)
    patients, metrics, t, value, flags, devices = zip(*samples, strict=True)
    batch = engine.batch(list(patients), list(metrics), list(t), list(value), list(flags), list(devices))
    return engine.process(batch, now=now)
