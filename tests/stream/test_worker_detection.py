"""The live worker's use of the detectors, without services: device codes, enrolment, ownership, metrics.

The engine and rules are the real ones; only the clock is a variable, and the sink (never written
to here) points nowhere.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from detectors.engine import Engine
from detectors.packed import is_packed
from rpm_core.roster import hash_password
from rpm_core.rules import load_rules, parse_rules
from rpm_core.sink import make_sink
from rpm_core.wire import encode_readings_record
from stream.metrics import render, worker_metrics
from stream.pipeline import DictStore, Pipeline
from stream.protocol import WorkerStatus, owned_patients, partition_for
from stream.records import decode_records
from stream.worker import roster_patients
from tests.conftest import REPO

T0 = 1_700_000_000.0
STALE_RULES = """
version: 1
rules:
  glucose_silent:
    type: staleness
    metric: glucose
    levels:
      warning: {after: 5s, escalate_after: null}
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pipeline(rules_text: str | None = None, *, enrolled: list[str] | None = None, clock: Clock | None = None,
             store: DictStore | None = None) -> Pipeline:
    ruleset = load_rules(REPO / "alert_rules.yaml") if rules_text is None else parse_rules(rules_text)
    return Pipeline(
        engine_factory=lambda: Engine(ruleset), sink=make_sink(url="http://127.0.0.1:9", db="unused"),
        store=store, clock=clock or Clock(T0), enrolled=(lambda: enrolled) if enrolled is not None else None,
    )


def group(device: str, metric: str, values: list[float], t0: float = T0) -> dict[str, object]:
    n = len(values)
    return {"device": device, "source": "sim", "metric": [metric] * n, "t": [t0 + 60.0 * k for k in range(n)],
            "value": values, "flags": [0] * n}


class TestDeviceCodes:
    def test_every_sample_carries_its_groups_device_code(self) -> None:
        pipe = pipeline()
        decoded = decode_records([
            encode_readings_record("p1", [group("cgm-1", "glucose", [100, 101, 102]), group("gls-1", "glucose", [90])]),
            encode_readings_record("p2", [group("hr-2", "heart_rate", [70, 71])]),
        ])
        batch = pipe._sample_batch(decoded)
        codes = pipe.engine.device_codes(["cgm-1", "gls-1", "hr-2"]).tolist()
        assert batch.devices.tolist() == [codes[0]] * 3 + [codes[1]] + [codes[2]] * 2
        assert batch.patient.tolist() == [pipe.engine.registry.index_of(p) for p in ["p1"] * 4 + ["p2"] * 2]

    def test_meter_prefix_rule_fires_on_the_meter_but_not_on_the_cgm(self) -> None:
        pipe = pipeline()
        decoded = decode_records([
            encode_readings_record("p1", [group("cgm-1", "glucose", [48.0])]),
            encode_readings_record("p2", [group("bgm-2", "glucose", [48.0])]),  # the agent's meter prefix
        ])
        events = pipe.engine.process(pipe._sample_batch(decoded), now=T0 + 30)
        meter = [(e.patient, e.state) for e in events if e.rule == "glucose_meter_low"]
        assert meter == [("p2", "raised")]


class TestEnrolment:
    def test_reload_enrolls_and_the_silence_clock_starts_at_reload(self) -> None:
        clock = Clock(T0)
        pipe = pipeline(STALE_RULES, enrolled=["quiet"], clock=clock)
        pipe.reload()
        assert pipe.stats.enrolled == 1
        assert pipe.engine.tick(T0 + 4) == []
        events = pipe.engine.tick(T0 + 6)
        assert [(e.patient, e.rule, e.state) for e in events] == [("quiet", "glucose_silent", "raised")]

    def test_a_reload_keeps_the_clock_of_a_checkpointed_enrolment(self) -> None:
        clock, store = Clock(T0), DictStore()
        pipe = pipeline(STALE_RULES, enrolled=["quiet"], clock=clock, store=store)
        pipe.reload()
        pipe._checkpoint()
        assert "quiet" in store.data
        clock.now = T0 + 3  # a rebalance or a retried batch rebuilds the engine later
        pipe.reload()
        assert [e.patient for e in pipe.engine.tick(T0 + 5.5)] == ["quiet"], "clock from the first enrolment"

    def test_without_a_roster_nobody_is_enrolled(self) -> None:
        pipe = pipeline(STALE_RULES)
        pipe.reload()
        assert pipe.stats.enrolled == 0 and pipe.engine.tick(T0 + 3600) == []


class TestCheckpointFormat:
    def test_a_worker_reads_the_json_checkpoints_of_the_previous_version_then_writes_packed_ones(self) -> None:
        clock, store = Clock(T0), DictStore()
        old = pipeline(clock=clock)
        old.engine.process(old._sample_batch(decode_records([
            encode_readings_record("p1", [group("hr-1", "heart_rate", [150.0] * 12)]),
            encode_readings_record("p2", [group("cgm-2", "glucose", [100, 90, 80, 70, 60, 50])]),
        ])), now=T0)
        states = {p: old.engine.export_state(p) for p in ("p1", "p2")}
        store.data = {p: orjson.dumps(state) for p, state in states.items()}  # what the previous version wrote
        new = pipeline(clock=clock, store=store)
        new.reload()
        assert new.stats.state_loads == 2
        assert {p: new.engine.export_state(p) for p in states} == states
        new.engine.dirty_patients()
        new.checkpoint_patients(["p1"])  # nothing changed: nothing is written
        assert store.data["p1"][:1] == b"{"
        new.note_dirty()
        new._pending.update(dict.fromkeys(states, (T0, 0)))
        new.checkpoint()
        assert all(is_packed(raw) for raw in store.data.values())
        newer = pipeline(clock=clock, store=store)
        newer.reload()
        assert {p: newer.engine.export_state(p) for p in states} == states
        assert len(newer.engine.open_alerts()) == len(old.engine.open_alerts()) > 0

    def test_json_checkpoints_on_request_for_a_rolling_upgrade(self) -> None:
        from rpm_core.errors import ConfigError
        from stream.worker import state_format

        assert state_format({}) == "packed" and state_format({"RPM_STATE_FORMAT": " JSON "}) == "json"
        with pytest.raises(ConfigError):
            state_format({"RPM_STATE_FORMAT": "msgpack"})
        store = DictStore()
        pipe = Pipeline(engine_factory=lambda: Engine(load_rules(REPO / "alert_rules.yaml")),
                        sink=make_sink(url="http://127.0.0.1:9", db="unused"), store=store, state_format="json")
        pipe.engine.process(pipe._sample_batch(decode_records([
            encode_readings_record("p1", [group("hr-1", "heart_rate", [150.0] * 12)])])), now=T0)
        pipe.checkpoint()
        assert orjson.loads(store.data["p1"]) == pipe.engine.export_state("p1")

    def test_an_unreadable_record_starts_the_patient_fresh(self) -> None:
        store = DictStore()
        store.data = {"p1": b"\xa7S\x02garbage", "p2": b"{not json"}
        pipe = pipeline(store=store)
        pipe.reload()
        assert pipe.stats.state_loads == 0
        assert pipe.engine.export_state("p1")["rules"] == {} and pipe.engine.export_state("p2")["rules"] == {}

    def test_patients_started_afresh_are_reported_in_the_heartbeat_for_a_while(self) -> None:
        """An unreadable state loses a patient's open alerts and counted minutes: the worker's heartbeat
        names them (the watchdog turns that into a technical alert) for STATE_RESET_HOLD_S."""
        from types import SimpleNamespace

        from rpm_core.technical import STATE_RESET_HOLD_S, decode_heartbeat
        from stream.worker import heartbeat

        clock, store = Clock(T0), DictStore()
        readable = pipeline(clock=clock)
        readable.engine.process(readable._sample_batch(decode_records([
            encode_readings_record("p3", [group("hr-3", "heart_rate", [150.0] * 3)])])), now=T0)
        store.data = {"p1": b"\xa7S\x02garbage", "p2": b"{not json",
                      "p3": orjson.dumps(readable.engine.export_state("p3"))}
        pipe = pipeline(store=store, clock=clock)
        pipe.reload()
        app = SimpleNamespace(started=True, should_stop=False)  # only what health() reads of a Faust app
        status = WorkerStatus(roster=(), configured_partitions=8)

        def beat() -> tuple[set[str], int]:
            doc = decode_heartbeat(heartbeat(app, pipe, status, instance="w1", ward_of={}).encode())
            return set(doc.state_reset), doc.state_reset_count

        assert beat() == ({"p1", "p2"}, 2)
        assert "rpm_worker_state_resets_total 2" in render(worker_metrics(pipe.stats, pipe.sink.stats, status=status))
        clock.now = T0 + STATE_RESET_HOLD_S - 1
        assert beat() == ({"p1", "p2"}, 2)
        clock.now = T0 + STATE_RESET_HOLD_S + 1
        assert beat() == (set(), 0)

    async def test_patients_on_no_ward_whose_readings_arrive_are_named_in_the_heartbeat_for_a_while(
            self, influx_url: str, influx_db: str) -> None:
        """Their alerts reach no nurse station (each shows its own ward's patients): the worker names
        them, and the watchdog tells the operators (tech.patient_unassigned). The real InfluxDB takes
        the batch's points."""
        from types import SimpleNamespace

        from rpm_core.technical import UNASSIGNED_HOLD_S, decode_heartbeat
        from stream.worker import heartbeat

        clock = Clock(T0)
        rules = load_rules(REPO / "alert_rules.yaml")
        pipe = Pipeline(engine_factory=lambda: Engine(rules), sink=make_sink(url=influx_url, db=influx_db), clock=clock)
        pipe.bind(send_alert=_ignore, send_deadletter=_ignore)
        records = [encode_readings_record(p, [group(f"hr-{p}", "heart_rate", [70.0])]) for p in ("p1", "p2", "stray")]
        try:
            await pipe.handle(records, checkpoint=False)
        finally:
            await pipe.sink.close()
        app = SimpleNamespace(started=True, should_stop=False)
        status = WorkerStatus(roster=("p1", "p2"), configured_partitions=8)

        def beat(ward_of: dict[str, str]) -> tuple[tuple[str, ...], int, set[str]]:
            doc = decode_heartbeat(heartbeat(app, pipe, status, instance="w1", ward_of=ward_of).encode())
            return doc.unassigned, doc.unassigned_count, set(doc.ward_last_reading)

        roster = {"p1": "north", "p2": "south"}
        assert beat(roster) == (("stray",), 1, {"north", "south"})
        assert beat({}) == ((), 0, {"all"}), "without a roster everyone is on the one ward"
        clock.now = T0 + UNASSIGNED_HOLD_S + 1
        assert beat(roster) == ((), 0, {"north", "south"})


async def _ignore(_key: object, _value: bytes) -> None:
    return None


class TestOwnership:
    @pytest.mark.parametrize(("key", "java"), [
        # org.apache.kafka.common.utils.UtilsTest#testMurmur2: Utils.murmur2 of these strings' bytes.
        ("21", -973932308), ("foobar", -790332482), ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829), ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ])
    def test_partition_is_the_java_clients(self, key: str, java: int) -> None:
        for n in (1, 3, 8, 12):
            assert partition_for(key, n) == (java & 0x7FFFFFFF) % n

    def test_partition_is_the_producers(self) -> None:
        partitioner = DefaultPartitioner()
        for i in range(200):
            patient = f"p{i:04d}"
            assert partition_for(patient, 8) == partitioner(patient.encode(), list(range(8)), list(range(8)))

    def test_two_workers_split_a_roster_without_overlap(self) -> None:
        roster = [f"p{i:04d}" for i in range(100)]
        a = owned_patients(roster, {0, 1, 2}, 8)
        b = owned_patients(roster, {3, 4, 5, 6, 7}, 8)
        assert not set(a) & set(b) and sorted(a + b) == roster
        assert owned_patients(roster, set(), 8) == []

    def test_status_enrolls_only_after_assignment(self) -> None:
        status = WorkerStatus(roster=("p0000", "p0001", "p0002"), configured_partitions=8)
        assert status.enrolled() == []
        status.partitions = frozenset(range(8))
        assert status.enrolled() == ["p0000", "p0001", "p0002"]
        status.partitions = frozenset({partition_for("p0001", 8)})
        assert "p0001" in status.enrolled()
        status.topic_partitions = 1  # the broker's count wins over the configured one
        status.partitions = frozenset({0})
        assert status.enrolled() == ["p0000", "p0001", "p0002"]

    def test_roster_patients_come_from_the_file_or_nowhere(self, tmp_path: object) -> None:
        from pathlib import Path

        path = Path(str(tmp_path)) / "roster.yaml"
        path.write_text(
            "version: 1\nwards:\n  a: {patients: [p2, p1]}\n  b: {patients: [p3]}\n"
            f"stations:\n  desk: {{ward: a, password_hash: \"{hash_password('pw', n=2)}\"}}\n"
        )
        assert roster_patients(str(path), env={}) == ("p1", "p2", "p3")
        assert roster_patients(None, env={"RPM_ROSTER": str(path)}) == ("p1", "p2", "p3")
        assert roster_patients(None, env={}) == ()


def test_worker_metrics_render_the_pipeline_counters() -> None:
    pipe = pipeline()
    pipe.stats.records, pipe.stats.samples = 3, 30
    pipe.stats.observe_batch(1)
    pipe.stats.observe_batch(3)
    pipe.stats.alerts_by[("glucose_low", "raised")] = 2
    pipe.sink.stats.retries = 4
    status = WorkerStatus(roster=("p1",), partitions=frozenset({0, 1}))
    text = render(worker_metrics(pipe.stats, pipe.sink.stats, status=status))
    for line in [
        "rpm_worker_records_total 3", "rpm_worker_readings_total 30",
        'rpm_worker_alert_events_total{rule="glucose_low",state="raised"} 2',
        'rpm_worker_batch_records_bucket{le="1"} 1', 'rpm_worker_batch_records_bucket{le="10"} 2',
        'rpm_worker_batch_records_bucket{le="+Inf"} 2', "rpm_worker_batch_records_count 2",
        "rpm_sink_retries_total 4", "rpm_worker_assigned_partitions 2", "# TYPE rpm_worker_batch_records histogram",
    ]:
        assert line in text.splitlines(), line


def test_health_needs_a_running_app_and_recovered_partitions() -> None:
    from types import SimpleNamespace

    from stream.worker import health

    pipe = pipeline()
    app = SimpleNamespace(started=True, should_stop=False)
    status = WorkerStatus(configured_partitions=8)
    body = health(app, pipe, status)
    assert body["running"] is True and body["assigned"] is False  # → 503
    status.partitions, status.recovered = frozenset({3, 1}), True
    body = health(app, pipe, status)
    assert body["assigned"] is True and body["partitions"] == [1, 3]
    assert health(SimpleNamespace(started=True, should_stop=True), pipe, status)["running"] is False


def test_the_state_store_setting_is_checked_before_the_worker_starts() -> None:
    from rpm_core.errors import ConfigError
    from stream.worker import state_store

    assert state_store({}) == "memory"
    assert state_store({"RPM_STATE_STORE": "RocksDB"}) == "rocksdb"  # rocksdict is a dev dependency
    with pytest.raises(ConfigError, match="expected one of memory, rocksdb"):
        state_store({"RPM_STATE_STORE": "redis"})


@pytest.mark.parametrize("raw", ["ten", "-1", "301", "nan", "inf"])
def test_a_bad_checkpoint_interval_is_refused_with_its_range(raw: str) -> None:
    from stream.worker import checkpoint_interval_s

    with pytest.raises(ValueError, match="expected seconds between 0 and 300"):
        checkpoint_interval_s({"RPM_CHECKPOINT_INTERVAL_S": raw})
    assert checkpoint_interval_s({}) == 30.0
    assert checkpoint_interval_s({"RPM_CHECKPOINT_INTERVAL_S": "0"}) == 0.0


async def test_a_record_dated_beyond_the_bridges_bound_is_dead_lettered_and_does_not_silence_the_patient() -> None:
    """A rogue producer on rpm.readings (the bridge refuses times more than 300 s ahead of its clock):
    a reading dated an hour ahead of the worker's clock would become the device's watermark and the
    patient's last reading, so the real readings after it would be dropped as already seen."""
    pipe = pipeline(clock=Clock(T0))
    letters: list[bytes] = []

    async def keep(_key: object, record: bytes) -> None:
        letters.append(record)

    pipe.bind(send_alert=keep, send_deadletter=keep)
    rogue = encode_readings_record("p1", [group("hr-1", "heart_rate", [72.0], t0=T0 + 3600)])
    # Had it been accepted, its line would be written to a sink that points nowhere, retried for
    # ever: the guard turns that hang into a failure (accepted or refused, nothing here waits).
    await asyncio.wait_for(pipe.handle([rogue], checkpoint=False), timeout=60)
    assert len(letters) == 1 and b"in the future" in letters[0]
    assert pipe.last_seen == {} and len(pipe.engine.registry) == 0
