"""Rule parameters are stored once per parameter set, not per patient (issue 20, goal 2).

Every patient holds only the row of its parameter set (:class:`detectors.columns.ParamRows`): row 0
the rule's default, one row per distinct override, shared by every patient with an equal override.
The alerts must be exactly the scalar reference's, with many patients on one override and with
overrides replaced at run time.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import Engine, RuleSet, ThresholdLevel
from detectors.rules import Flapping, Severity, StalenessRule
from detectors.threshold import ThresholdDetector
from tests.detectors.helpers import (
    PATIENTS,
    all_rulesets,
    device_streams,
    dicts,
    run,
    run6,
    series,
    signal_rules,
    split,
    staleness_rules,
    tachycardia_rule,
)
from tests.detectors.reference import ReferenceEngine

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _param_arrays(det: Any) -> list[np.ndarray]:
    names = ("threshold", "for_s", "clear_threshold", "clear_for_s", "max_gap_s", "hold_s", "enabled", "after_s")
    arrays = [getattr(det, n) for n in names if hasattr(det, n)]
    ep = det.episodes
    return [*arrays, ep.cooldown_s, ep.escalate_after_s, ep.flap_raises, ep.flap_within_s, ep.flap_hold_s]


@SETTINGS
@given(
    rules=all_rulesets(),
    samples=device_streams(),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    seed=st.integers(),
    data=st.data(),
)
def test_patients_sharing_one_override_equal_the_reference(rules, samples, cuts, seed, data) -> None:
    base = data.draw(st.sampled_from(rules.rules))
    if isinstance(base, StalenessRule):
        override = data.draw(staleness_rules(base.name, base.metric, base))
    else:
        override = data.draw(signal_rules(base.name, base.type, base.metric, base))
    sharing = data.draw(st.sets(st.sampled_from(PATIENTS), min_size=2))
    # Equal but distinct objects, as a rules file with the same override for several patients gives.
    patient_rules = {p: {base.name: dataclasses.replace(override)} for p in sharing}
    shared = RuleSet(rules=rules.rules, patient_rules=patient_rules)
    engine, reference = Engine(shared), ReferenceEngine(shared)
    for batch in split(samples, cuts, random.Random(seed)):
        assert dicts(run6(engine, batch)) == dicts(reference.process(batch))
    for det in engine._detectors:
        assert len(det.rows) <= 2  # the default and the one override, however many patients share it
        assert all(a.shape[-1] == len(det.rows) for a in _param_arrays(det))


def test_parameters_do_not_grow_with_the_patients() -> None:
    high = tachycardia_rule(levels=(ThresholdLevel(severity=Severity.WARNING, threshold=140, for_s=600),))
    overrides = {f"athlete-{i}": {"tachycardia": dataclasses.replace(high)} for i in range(100)}
    engine = Engine(RuleSet(rules=(tachycardia_rule(),), patient_rules=overrides))
    engine.registry.indices([f"p-{i}" for i in range(1000)] + list(overrides))
    engine.process(engine.batch(["p-0"], ["heart_rate"], [0.0], [80.0]))
    det = engine._detectors[0]
    assert len(engine._dirty) >= 1100
    assert len(det.rows) == 2
    assert all(a.shape[-1] == 2 for a in _param_arrays(det))
    assert det.rows.row.dtype == np.int32
    assert det.rows.users.tolist() == [len(engine._dirty) - 100, 100]
    assert det.rule_for(engine.registry.get("athlete-7")) == high
    assert det.rule_for(engine.registry.get("p-3")) is det.rule


def test_an_override_replaced_at_run_time_takes_effect_and_frees_the_fast_path() -> None:
    default = tachycardia_rule()
    lenient = tachycardia_rule(levels=(ThresholdLevel(severity=Severity.WARNING, threshold=200),))
    det = ThresholdDetector(default)
    det.resize(8)
    det.configure(3, lenient)
    det.configure(5, dataclasses.replace(lenient))
    assert (len(det.rows), det.rows.uniform, det.rows.row.tolist()) == (2, False, [0, 0, 0, 1, 0, 1, 0, 0])
    det.configure(3, default)
    det.configure(5, default)
    assert det.rows.uniform and det.rows.users.tolist() == [8, 0]
    assert det.rule_for(5) is default
    # The unused row no longer counts: an engine patient back on the default alarms as before.
    engine = Engine(RuleSet(rules=(default,), patient_rules={"p": {"tachycardia": lenient}}))
    run(engine, series("p", "heart_rate", 0, [80]))
    engine._detectors[0].configure(engine.registry.get("p"), default)
    events = run(engine, series("p", "heart_rate", 10, [160] * 40))
    fresh = Engine(RuleSet(rules=(default,)))
    run(fresh, series("p", "heart_rate", 0, [80]))
    assert dicts(events) == dicts(run(fresh, series("p", "heart_rate", 10, [160] * 40)))
    assert events


def test_a_rule_without_flapping_holds_no_raise_time_ring_until_a_record_brings_one() -> None:
    flappy = tachycardia_rule(flapping=Flapping(raises=2, within_s=3600, hold_s=600))
    source = Engine(RuleSet(rules=(flappy,)))
    run(source, series("p", "heart_rate", 0, [160] * 5))
    state = source.export_state("p")
    assert state["rules"]["tachycardia"]["alert"]["recent"]  # a raise time to carry over
    record = source.export_packed(["p"])[0]

    def plain_engine() -> Engine:
        engine = Engine(RuleSet(rules=(tachycardia_rule(),)))
        run(engine, series("q", "heart_rate", 0, [160] * 5))  # raises, but keeps no raise times
        assert not engine._detectors[0].episodes.recent.flags.writeable
        return engine

    by_json, by_packed, by_many = plain_engine(), plain_engine(), plain_engine()
    by_json.import_state("p", state)
    by_packed.import_packed("p", record)
    assert by_many.import_packed_many([("p", record)]) == {}
    for engine in (by_json, by_packed, by_many):
        assert engine._detectors[0].episodes.recent.flags.writeable
        assert engine.export_state("p") == state
        assert engine.export_state("q")["rules"]["tachycardia"]["alert"]["recent"] == []
