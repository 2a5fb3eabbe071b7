"""Builders and hypothesis strategies shared by the detector tests (``tests.detectors.helpers``)."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from hypothesis import strategies as st

from detectors import AlertEvent, Direction, Engine, RuleSet, Severity, ThresholdLevel, ThresholdRule

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


@st.composite
def threshold_rules(draw: st.DrawFn, name: str, metric: str, direction: Direction | None = None) -> ThresholdRule:
    """A random but valid threshold rule whose thresholds sit in 100-170, where the values are."""
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
        patient_rules[patient] = {base.name: draw(threshold_rules(base.name, base.metric, base.direction))}
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
                flags = draw(st.sampled_from((0, 0, 0, 0, 0, 0, 0, 1, 2, 4)))
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
