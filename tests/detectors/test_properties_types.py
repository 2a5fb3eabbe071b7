"""Property tests for every rule type: the vectorized engine equals the scalar reference.

Random rule sets mix threshold, rate, forecast, baseline, rhythm and staleness rules, with
schedules, flapping suppression, device selectors and per-patient overrides; random streams have
two devices per metric at times, duplicates, gaps and quality flags; batch boundaries, ticks,
acknowledgements and processing times fall anywhere.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import Engine
from tests.detectors.helpers import PATIENTS, all_rulesets, by_key, device_streams, dicts, json_roundtrip, run6, split
from tests.detectors.reference import ReferenceEngine

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CUTS = st.lists(st.integers(0, 10_000), max_size=8)


@SETTINGS
@given(rules=all_rulesets(), samples=device_streams(), cuts=CUTS, seed=st.integers())
def test_every_type_equals_reference_batch_by_batch(rules, samples, cuts, seed) -> None:
    engine, reference = Engine(rules), ReferenceEngine(rules)
    for batch in split(samples, cuts, random.Random(seed)):
        assert dicts(run6(engine, batch)) == dicts(reference.process(batch))


@SETTINGS
@given(rules=all_rulesets(), samples=device_streams(), cuts=CUTS, seed=st.integers())
def test_batching_does_not_change_the_alerts_of_any_type(rules, samples, cuts, seed) -> None:
    batches = split(samples, cuts, random.Random(seed))
    whole = run6(Engine(rules), [s for batch in batches for s in batch])
    engine = Engine(rules)
    pieces = [e for batch in batches for e in run6(engine, batch)]
    assert by_key(pieces) == by_key(whole)


@SETTINGS
@given(rules=all_rulesets(), samples=device_streams(), cuts=CUTS, seed=st.integers())
def test_checkpoint_restore_and_redelivery_for_every_type(rules, samples, cuts, seed) -> None:
    """Restoring every patient from JSON after each batch changes nothing; redelivery creates nothing."""
    reference, engine = ReferenceEngine(rules), Engine(rules)
    batches = split(samples, cuts, random.Random(seed))
    for batch in batches:
        assert dicts(run6(engine, batch)) == dicts(reference.process(batch))
        restored = Engine(rules)
        for patient, state in json_roundtrip(engine.export_all()).items():
            restored.import_state(patient, state)
        engine = restored
    state = engine.export_all()
    for batch in batches:
        assert run6(engine, batch) == []
    assert engine.export_all() == state


ops = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.integers(1, 60)),
        st.tuples(st.just("tick"), st.floats(0, 40)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("enroll"), st.integers(0, 2)),
    ),
    max_size=14,
)


@SETTINGS
@given(rules=all_rulesets(), samples=device_streams(), plan=ops, lag=st.sampled_from((None, 0.0, 30.0)))
def test_ticks_acks_enrolment_and_processing_time_match_the_reference(rules, samples, plan, lag) -> None:
    """Staleness, escalation (from processing time when given) and acknowledgement, event by event."""
    engine, reference = Engine(rules, enrolled=[PATIENTS[0]]), ReferenceEngine(rules, enrolled=(PATIENTS[0],))
    pos, now = 0, samples[0][2] if samples else 0.0
    for op, arg in plan:
        if op == "batch":
            batch, pos = samples[pos : pos + arg], pos + arg
            if batch:
                now = max(now, max(s[2] for s in batch))
            at = None if lag is None else now + lag
            assert dicts(run6(engine, batch, now=at)) == dicts(reference.process(batch, now=at))
        elif op == "tick":
            now += arg
            assert dicts(engine.tick(now)) == dicts(reference.tick(now))
        elif op == "enroll":
            patient = PATIENTS[arg]
            engine.enroll([patient], at=now if arg else None)
            reference.enroll([patient], at=now if arg else None)
        else:
            open_ids = reference.open_alert_ids()
            assert sorted(e.alert_id for e in engine.open_alerts()) == open_ids
            if open_ids:
                aid = open_ids[arg % len(open_ids)]
                assert dicts(engine.acknowledge(aid, "nurse", now)) == dicts(reference.acknowledge(aid, "nurse", now))
