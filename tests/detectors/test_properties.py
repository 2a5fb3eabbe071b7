"""Property tests: the vectorized engine equals the scalar reference, whatever the batching.

Streams are random multi-patient, multi-metric, with duplicates, gaps, quality flags and
per-patient overrides; batch boundaries fall anywhere.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import Engine
from tests.detectors.helpers import by_key, dicts, json_roundtrip, rulesets, run, split, streams
from tests.detectors.reference import ReferenceEngine

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(rules=rulesets(), samples=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8), seed=st.integers())
def test_engine_equals_reference_batch_by_batch(rules, samples, cuts, seed) -> None:
    engine, reference = Engine(rules), ReferenceEngine(rules)
    for batch in split(samples, cuts, random.Random(seed)):
        assert dicts(run(engine, batch)) == dicts(reference.process(batch))


@SETTINGS
@given(rules=rulesets(), samples=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8), seed=st.integers())
def test_batching_does_not_change_the_alerts(rules, samples, cuts, seed) -> None:
    batches = split(samples, cuts, random.Random(seed))
    whole = run(Engine(rules), [s for batch in batches for s in batch])
    engine = Engine(rules)
    pieces = [e for batch in batches for e in run(engine, batch)]
    assert by_key(pieces) == by_key(whole)
    assert by_key(whole) == by_key(ReferenceEngine(rules).process([s for b in batches for s in b]))


@SETTINGS
@given(rules=rulesets(), samples=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8), seed=st.integers())
def test_redelivered_input_creates_nothing(rules, samples, cuts, seed) -> None:
    engine = Engine(rules)
    batches = split(samples, cuts, random.Random(seed))
    for batch in batches:
        run(engine, batch)
    state = engine.export_all()
    for batch in batches:  # the whole stream again, as after a consumer restart
        assert run(engine, batch) == []
    assert engine.export_all() == state


@SETTINGS
@given(rules=rulesets(), samples=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8), seed=st.integers())
def test_checkpoint_and_restore_between_any_batches(rules, samples, cuts, seed) -> None:
    """A worker that restores every patient from its JSON checkpoint after each batch behaves the same."""
    reference = ReferenceEngine(rules)
    engine = Engine(rules)
    for batch in split(samples, cuts, random.Random(seed)):
        assert dicts(run(engine, batch)) == dicts(reference.process(batch))
        restored = Engine(rules)
        for patient, state in json_roundtrip(engine.export_all()).items():
            restored.import_state(patient, state)
        engine = restored


ops = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.integers(1, 60)),
        st.tuples(st.just("tick"), st.floats(0, 40)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
    ),
    max_size=12,
)


@SETTINGS
@given(rules=rulesets(), samples=streams(), plan=ops)
def test_ticks_and_acknowledgements_match_the_reference(rules, samples, plan) -> None:
    """Escalation and acknowledgement interleaved with batches, compared event by event."""
    engine, reference = Engine(rules), ReferenceEngine(rules)
    pos, now = 0, samples[0][2] if samples else 0.0
    for op, arg in plan:
        if op == "batch":
            batch, pos = samples[pos : pos + arg], pos + arg
            if batch:
                now = max(now, max(s[2] for s in batch))
            assert dicts(run(engine, batch)) == dicts(reference.process(batch))
        elif op == "tick":
            now += arg
            assert dicts(engine.tick(now)) == dicts(reference.tick(now))
        else:
            open_ids = reference.open_alert_ids()
            assert sorted(e.alert_id for e in engine.open_alerts()) == open_ids
            if open_ids:
                aid = open_ids[arg % len(open_ids)]
                assert dicts(engine.acknowledge(aid, "nurse", now)) == dicts(reference.acknowledge(aid, "nurse", now))
