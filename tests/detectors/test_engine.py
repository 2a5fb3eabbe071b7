"""The engine's API: batches, at-least-once input, event order, state export/import, bookkeeping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detectors import Direction, Engine, PatientRegistry, RuleSet, SampleBatch, Severity, StateError, ThresholdLevel
from detectors.const import GLUCOSE, HEART_RATE
from tests.detectors.helpers import T0, Sample, json_roundtrip, run, series, tachycardia_rule


@pytest.fixture
def engine() -> Engine:
    return Engine(RuleSet(rules=(tachycardia_rule(),)))


class TestBatches:
    def test_batch_registers_patients_and_maps_metric_names(self, engine: Engine) -> None:
        batch = engine.batch(["b", "a", "b"], ["heart_rate", "glucose", "heart_rate"], [1, 2, 3], [60, 90, 61])
        assert engine.registry.ids() == ["a", "b"]  # distinct ids registered in sorted order
        assert batch.patient.tolist() == [1, 0, 1]
        assert batch.metric.tolist() == [HEART_RATE, GLUCOSE, HEART_RATE]
        assert batch.flags.tolist() == [0, 0, 0]

    def test_batch_accepts_metric_codes(self, engine: Engine) -> None:
        batch = engine.batch(["a"], np.array([GLUCOSE], np.int8), [1.0], [90.0])
        assert batch.metric.tolist() == [GLUCOSE]

    def test_unknown_metric_is_a_value_error(self, engine: Engine) -> None:
        with pytest.raises(ValueError, match="spo2"):
            engine.batch(["a"], ["spo2"], [1.0], [97.0])

    def test_columns_must_have_the_same_length(self) -> None:
        with pytest.raises(ValueError, match="value"):
            SampleBatch(patient=[0, 1], metric=[0, 0], t=[1.0, 2.0], value=[1.0], flags=[0, 0])

    def test_registry_round_trip(self) -> None:
        registry = PatientRegistry(["x", "y"])
        assert registry.index_of("y") == 1 and registry.id_of(0) == "x" and "x" in registry
        assert registry.get("z") is None and len(registry) == 2

    def test_indices_of_known_and_new_ids(self) -> None:
        # known ids are looked up; as soon as one is new, the new ones are registered in sorted order
        registry = PatientRegistry(["c"])
        assert registry.indices(["c", "c"]).tolist() == [0, 0]
        assert registry.indices(["c", "b", "a", "b"]).tolist() == [0, 2, 1, 2]
        assert registry.ids() == ["c", "a", "b"]
        assert registry.indices(np.array(["b", "c"], dtype=object)).tolist() == [2, 0]

    def test_empty_batch(self, engine: Engine) -> None:
        assert engine.process(SampleBatch.empty()) == []


class TestAtLeastOnce:
    def test_duplicates_in_a_batch_keep_the_first(self, engine: Engine) -> None:
        # The second copy of each sample says 80 bpm; if it won, nothing would be raised.
        samples = series("p", "heart_rate", 0, [130] * 11)
        copies = [(p, m, t, 80.0, f) for p, m, t, _, f in samples]
        interleaved = [s for pair in zip(samples, copies, strict=True) for s in pair]
        assert [e.state for e in run(engine, interleaved)] == ["raised"]

    def test_conflicting_duplicates_are_reported_by_their_positions_in_the_batch(self, engine: Engine) -> None:
        """The caller stores the batch: it must learn which samples were not judged (issue: duplicate
        samples), as positions in *its* batch whatever the engine sorted or filtered away."""
        engine.registry.index_of("p")
        engine.registry.index_of("q")
        batch = SampleBatch(
            patient=[1, 0, 0, 5, 0, 1, 0, 0],  # 5: no such patient, filtered out before the sort
            metric=[HEART_RATE, HEART_RATE, HEART_RATE, HEART_RATE, HEART_RATE, HEART_RATE, GLUCOSE, HEART_RATE],
            t=[T0, T0 + 60, T0, T0, T0, T0, T0, T0 + 60],
            value=[70.0, 90.0, 80.0, 1.0, 81.0, 70.0, 99.0, 90.0],
            flags=[0, 0, 0, 0, 0, 0, 0, 1],
        )
        engine.process(batch)
        # p's heart rate at T0: 80 (position 2) kept, 81 (4) not; at T0+60: 90 (1) kept, flagged 90 (7) not;
        # q's two 70s at T0 (0 and 5) agree; the glucose at T0 (6) is another metric.
        assert sorted(zip(engine.conflicts.dropped.tolist(), engine.conflicts.kept.tolist(), strict=True)) == [
            (4, 2), (7, 1)]
        engine.process(SampleBatch(patient=[0], metric=[HEART_RATE], t=[T0 + 120], value=[70.0], flags=[0]))
        assert len(engine.conflicts.dropped) == 0

    def test_samples_older_than_the_watermark_are_dropped(self, engine: Engine) -> None:
        run(engine, series("p", "heart_rate", 600, [80]))
        assert run(engine, series("p", "heart_rate", 0, [130] * 11)) == []

    def test_watermarks_are_per_metric(self, engine: Engine) -> None:
        run(engine, series("p", "glucose", 10_000, [100]))
        assert len(run(engine, series("p", "heart_rate", 0, [130] * 11))) == 1

    def test_flagged_samples_advance_the_watermark(self, engine: Engine) -> None:
        run(engine, [("p", "heart_rate", T0 + 600, 80.0, 1)])
        assert engine.export_state("p")["last_t"] == {"heart_rate": T0 + 600}

    def test_garbage_rows_are_dropped_not_raised(self, engine: Engine) -> None:
        engine.registry.index_of("p")
        batch = SampleBatch(
            patient=[0, 0, 7, -1, 0],
            metric=[0, 9, 0, 0, 0],
            t=[math.nan, T0, T0, T0, T0],
            value=[200.0, 200.0, 200.0, 200.0, math.inf],
            flags=[0, 0, 0, 0, 0],
        )
        assert engine.process(batch) == []
        assert engine.export_state("p")["last_t"] == {"heart_rate": T0}


def test_events_are_in_event_time_then_patient_order(engine: Engine) -> None:
    samples = series("b", "heart_rate", 0, [160] * 3) + series("a", "heart_rate", 0, [160] * 3)
    samples += series("c", "heart_rate", -60, [160] * 3)
    events = run(engine, samples[::-1])
    assert [(e.time - T0, e.patient) for e in events] == [(60.0, "c"), (120.0, "a"), (120.0, "b")]


class TestState:
    def test_export_is_json_and_import_continues_the_episode(self, engine: Engine) -> None:
        run(engine, series("p", "heart_rate", 0, [130] * 8))  # 7 min into the warning run
        state = json_roundtrip(engine.export_state("p"))
        fresh = Engine(engine.rules)
        fresh.import_state("p", state)
        (raised,) = run(fresh, series("p", "heart_rate", 480, [130] * 3))
        assert raised.time == T0 + 600 and raised.since == T0

    def test_open_alerts_survive_export_and_import(self, engine: Engine) -> None:
        (raised,) = run(engine, series("p", "heart_rate", 0, [130] * 11))
        fresh = Engine(engine.rules)
        fresh.import_all(json_roundtrip(engine.export_all()))
        assert [a.alert_id for a in fresh.open_alerts()] == [raised.alert_id]
        (ack,) = fresh.acknowledge(raised.alert_id, by="nurse", at=raised.time + 1)
        assert ack.alert_id == raised.alert_id
        assert fresh.open_alerts()[0].state == "acknowledged"
        (cleared,) = run(fresh, series("p", "heart_rate", 660, [100] * 6))
        assert cleared.alert_id == raised.alert_id
        assert fresh.open_alerts() == []

    def test_export_of_an_unknown_patient_is_empty(self, engine: Engine) -> None:
        assert engine.export_state("nobody") == {"v": 1, "last_t": {}, "rules": {}}

    @pytest.mark.parametrize(
        "bad",
        [
            {"v": 2},
            {"v": 1, "rules": []},
            {"v": 1, "last_t": {"spo2": 1.0}},
            {"v": 1, "rules": {"tachycardia": {"last_t": "yesterday"}}},
            {"v": 1, "rules": {"tachycardia": {"alert": {"level": "severe", "since": 1.0, "raised_at": 1.0}}}},
            {"v": 1, "rules": {"tachycardia": {"alert": {"level": "warning"}}}},
        ],
    )
    def test_malformed_records_are_rejected_and_change_nothing(self, engine: Engine, bad: dict) -> None:
        run(engine, series("p", "heart_rate", 0, [130] * 11))
        before = engine.export_state("p")
        with pytest.raises(StateError):
            engine.import_state("p", bad)
        assert engine.export_state("p") == before
        assert len(engine.open_alerts()) == 1

    def test_state_of_removed_rules_is_ignored(self, engine: Engine) -> None:
        run(engine, series("p", "heart_rate", 0, [130] * 3))
        exported = engine.export_state("p")
        state = exported | {"rules": exported["rules"] | {"gone": {"last_t": 1.0}}}
        engine.import_state("p", state)
        assert set(engine.export_state("p")["rules"]) == {"tachycardia"}

    def test_rules_a_patient_never_touched_are_left_out_and_read_back_as_fresh(self) -> None:
        hypo = tachycardia_rule(
            name="hypoglycemia", metric="glucose", direction=Direction.BELOW, clear_threshold=80,
            levels=(ThresholdLevel(severity=Severity.WARNING, threshold=70, for_s=600, escalate_after_s=900),),
        )
        rules = RuleSet(rules=(tachycardia_rule(), hypo))
        engine = Engine(rules)
        run(engine, series("p", "heart_rate", 0, [130] * 3))
        exported = engine.export_state("p")
        assert set(exported["rules"]) == {"tachycardia"}  # no glucose: its rule is still fresh
        other = Engine(rules)
        other.import_state("p", exported)
        assert other.export_state("p") == exported
        run(other, series("p", "glucose", 10, [50] * 20, step=60))
        assert set(other.export_state("p")["rules"]) == {"tachycardia", "hypoglycemia"}

    def test_a_reload_of_many_patients_keeps_their_watermarks(self, engine: Engine) -> None:
        # A reload imports every patient one by one (their watermarks sorted in together afterwards):
        # samples each had already seen are dropped, newer ones count, and a second import replaces.
        patients = [f"p{i}" for i in range(40)]
        for p in patients:
            run(engine, series(p, "heart_rate", 0, [130] * 8))
        fresh = Engine(engine.rules)
        for p in reversed(patients):
            fresh.import_state(p, json_roundtrip(engine.export_state(p)))
        fresh.import_state("p7", json_roundtrip(engine.export_state("p7")))
        assert [fresh.export_state(p) for p in patients] == [engine.export_state(p) for p in patients]
        assert run(fresh, [s for p in patients for s in series(p, "heart_rate", 0, [130] * 8)]) == []
        raised = run(fresh, [s for p in patients for s in series(p, "heart_rate", 480, [130] * 3)])
        assert sorted(e.patient for e in raised) == sorted(patients)
        assert all(e.time == T0 + 600 and e.since == T0 for e in raised)

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_watermarks_do_not_depend_on_when_new_keys_are_merged(self, seed: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        # New (patient, metric, device) keys wait in a small level before they are merged into the
        # large sorted arrays: merging at once (the behaviour before) and never merging must give the
        # same events, checkpoints and JSON states, also across redelivery, new devices and a reload.
        from pathlib import Path

        import detectors.engine as engine_module
        from rpm_core.rules import load_rules
        from tests.detectors.helpers import run6

        rules = load_rules(Path(__file__).resolve().parents[2] / "alert_rules.yaml")
        rng = np.random.default_rng(seed)
        batches = []
        for b in range(12):
            samples = []
            for _ in range(int(rng.integers(1, 60))):
                p = f"p{int(rng.integers(0, 40)):02d}"
                metric = ["heart_rate", "rr_interval", "glucose"][int(rng.integers(0, 3))]
                device = f"{['hrs', 'cgm', 'meter'][int(rng.integers(0, 3))]}-{int(rng.integers(0, 2))}"
                value = {"heart_rate": 130.0, "rr_interval": 0.5, "glucose": 50.0}[metric] * rng.uniform(0.8, 1.2)
                samples.append((p, metric, T0 + 60.0 * b + float(rng.integers(0, 120)), value, 0, device))
            batches.append(samples)

        def replay(recent_min: int) -> list[object]:
            monkeypatch.setattr(engine_module, "_RECENT_MIN", recent_min)
            engine, out = Engine(rules), []
            for i, samples in enumerate(batches):
                if i == 6:  # a reload halfway: every patient from its packed record
                    ids = engine.registry.ids()
                    fresh = Engine(rules)
                    fresh.import_packed_many(list(zip(ids, engine.export_packed(ids), strict=True)))
                    engine = fresh
                out.append([e.to_dict() for e in run6(engine, samples + samples[:3], now=T0 + 60.0 * i)])
                ids = engine.registry.ids()
                out.append(engine.export_packed(ids))
            out.append([engine.export_state(p) for p in engine.registry.ids()])
            return out

        assert replay(0) == replay(10**9) == replay(8)

    def test_reset_patient_forgets_everything(self, engine: Engine) -> None:
        run(engine, series("p", "heart_rate", 0, [130] * 11))
        engine.reset_patient("p")
        assert engine.open_alerts() == []
        assert engine.export_state("p")["last_t"] == {}

    def test_dirty_patients_lists_what_changed_since_the_last_call(self, engine: Engine) -> None:
        run(engine, series("a", "heart_rate", 0, [130] * 11) + series("b", "heart_rate", 0, [80]))
        assert sorted(engine.dirty_patients()) == ["a", "b"]
        assert engine.dirty_patients() == []
        run(engine, series("b", "heart_rate", 0, [80]))  # redelivered: nothing changes
        assert engine.dirty_patients() == []
        engine.tick(T0 + 100_000)  # escalates a's alert
        assert engine.dirty_patients() == ["a"]


class TestRealarm:
    """Acknowledged is not resolved (issue 15): an acknowledged alert still open after its rule's
    re-alarm interval is raised again, with the same id, and can be acknowledged again."""

    def test_an_acknowledged_alert_still_open_alarms_again_and_can_be_acknowledged_again(self) -> None:
        rules = RuleSet(rules=(tachycardia_rule(),))
        engine = Engine(rules, realarm_after={"tachycardia": (None, 900.0, 300.0)})
        (raised,) = run(engine, series("p", "heart_rate", 0, [130] * 11))  # warning after 10 min
        (ack,) = engine.acknowledge(raised.alert_id, by="nurse", at=raised.time + 60)
        assert engine.tick(ack.time + 899) == []
        # the state survives a checkpoint: the re-alarm clock runs from the acknowledgement
        fresh = Engine(rules, realarm_after={"tachycardia": (None, 900.0, 300.0)})
        fresh.import_all(json_roundtrip(engine.export_all()))
        (again,) = fresh.tick(ack.time + 900)
        assert (again.alert_id, again.state, again.severity, again.since) == (raised.alert_id, "raised", "warning",
                                                                               raised.since)
        assert fresh.open_alerts()[0].state == "raised"
        (ack2,) = fresh.acknowledge(raised.alert_id, by="nurse 2", at=again.time + 5)
        assert ack2.by == "nurse 2"
        assert fresh.tick(ack2.time + 899) == []

    def test_without_an_interval_an_acknowledged_alert_stays_acknowledged(self, engine: Engine) -> None:
        (raised,) = run(engine, series("p", "heart_rate", 0, [130] * 11))
        engine.acknowledge(raised.alert_id, by="nurse", at=raised.time + 60)
        assert engine.tick(raised.time + 86_400) == []

    def test_a_cleared_alert_does_not_alarm_again(self) -> None:
        engine = Engine(RuleSet(rules=(tachycardia_rule(),)), realarm_after={"tachycardia": (None, 60.0, 60.0)})
        (raised,) = run(engine, series("p", "heart_rate", 0, [130] * 11))
        engine.acknowledge(raised.alert_id, by="nurse", at=raised.time + 1)
        (cleared,) = run(engine, series("p", "heart_rate", 660, [100] * 6))
        assert cleared.state == "cleared" and engine.tick(cleared.time + 3600) == []


def test_ar2_rows_without_a_forecast_raise_no_warning_and_stay_empty() -> None:
    """A row whose readings give no forecast (a zero or a missing value) is NaN, and computing it
    beside good rows warns of nothing (warnings are errors: hypothesis found one in CI)."""
    from detectors.forecast import ar2_path

    age = np.array([[300.0, 0.0], [300.0, 0.0], [np.nan, 0.0], [300.0, 0.0]])
    v = np.array([[100.0, 0.0], [0.0, 100.0], [np.nan, 95.0], [100.0, 95.0]])
    path = ar2_path(age, v, np.full(4, 1200.0), np.full(4, 600.0))
    assert np.isnan(path[:3]).all()
    assert path[3, 0] == 95.0 and (path[3, 1:] < 95.0).all()


class TestStaleAcknowledgement:
    """An ack answers the alert as the nurse saw it: one made before the alert worsened (or alarmed
    again) stopped the escalation of a critical alert nobody had seen. The nurse station and the
    notifier already refused it (ACK_CLOCK_SLACK_S); the engine, which escalates, did not."""

    def test_an_ack_made_before_the_alert_worsened_does_not_acknowledge_the_worse_alert(self, engine: Engine) -> None:
        (warning,) = run(engine, series("p", "heart_rate", 0, [130] * 11))  # warning after 10 min
        clicked = warning.time + 30  # the nurse acknowledges the warning...
        (critical,) = run(engine, series("p", "heart_rate", 660, [160] * 3))  # ...it becomes critical meanwhile
        assert (critical.alert_id, critical.severity) == (warning.alert_id, "critical")
        assert clicked < critical.time
        assert engine.acknowledge(warning.alert_id, by="nurse", at=clicked) == []  # the ack arrives after
        (escalated,) = engine.tick(critical.time + 300)
        assert escalated.state == "escalated"
        (ack,) = engine.acknowledge(warning.alert_id, by="nurse", at=critical.time + 301)
        assert ack.state == "acknowledged"

    def test_a_replayed_ack_does_not_acknowledge_the_realarm(self) -> None:
        rules = RuleSet(rules=(tachycardia_rule(),))
        engine = Engine(rules, realarm_after={"tachycardia": (None, 900.0, 300.0)})
        (raised,) = run(engine, series("p", "heart_rate", 0, [130] * 11))
        (ack,) = engine.acknowledge(raised.alert_id, by="nurse", at=raised.time + 60)
        (again,) = engine.tick(ack.time + 900)
        assert again.state == "raised"
        assert engine.acknowledge(raised.alert_id, by="nurse", at=ack.time) == [], "the same ack, read again"
        (ack2,) = engine.acknowledge(raised.alert_id, by="nurse", at=again.time + 1)
        assert ack2.state == "acknowledged"


def test_patients_arriving_batch_by_batch_are_judged_as_if_every_one_had_been_known_from_the_start() -> None:
    """New patients make every per-patient array grow (rings and histories too), several times here:
    the patients already there keep their histories, rings and open alerts through each growth."""
    from rpm_core.rules import load_rules

    rules = load_rules(Path(__file__).resolve().parents[2] / "alert_rules.yaml")
    rng = np.random.default_rng(7)
    waves = [40, 70, 110, 170, 260]  # patients present in each batch: capacity 64 -> 96 -> 144 -> 216 -> 324
    batches: list[list[Sample]] = []
    for b, present in enumerate(waves):
        samples: list[Sample] = []
        for p in range(present):
            pid = f"p{p:04d}"
            t0 = T0 + b * 600.0
            tachy = p % 5 == 0
            for k in range(20):  # heart rate every 30 s, RR intervals irregular for some, glucose falling for others
                samples.append((pid, "heart_rate", t0 + 30 * k, float(160 if tachy else 70 + rng.normal(0, 3)), 0))
                rr = rng.uniform(0.4, 1.2) if p % 3 == 0 else 0.85 + rng.normal(0, 0.01)
                samples.append((pid, "rr_interval", t0 + 30 * k + 0.5, float(rr), 0))
            for k in range(2):
                samples.append((pid, "glucose", t0 + 300 * k, float(max(40.0, 140 - 12 * (b * 2 + k) - p % 7)), 0))
        batches.append(samples)
    growing, known = Engine(rules), Engine(rules)
    known.registry.indices([f"p{p:04d}" for p in range(waves[-1])])
    got = [run(growing, s) for s in batches]
    want = [run(known, s) for s in batches]
    assert got == want and sum(map(len, got)) > 0
    assert growing.export_all() == known.export_all()


def test_a_ring_grows_by_rows_keeping_every_patients_entries_in_c_order() -> None:
    from detectors.columns import grown_rows

    ring = np.arange(6.0).reshape(2, 3)
    out = grown_rows(ring, 4, np.nan)
    assert out.shape == (4, 3) and out.flags.c_contiguous and out.dtype == ring.dtype
    assert np.array_equal(out[:2], ring) and np.isnan(out[2:]).all()
    assert grown_rows(ring, 2, np.nan) is ring
    flags = grown_rows(np.ones((1, 2), np.bool_), 3, False)
    assert flags.tolist() == [[True, True], [False, False], [False, False]]
