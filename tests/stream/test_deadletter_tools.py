"""``rpm deadletter``: reading rpm.deadletter, and replaying its records where they came from.

Unit tests on the parsing, selection and replay construction (malformed records give a clear
error per record, never an exception), then the real command against real Tansu, a real worker
and InfluxDB.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpm_app.cli import build_parser
from rpm_app.services import ServiceProcess, Stack
from rpm_core import topics
from rpm_core.deadletter import MAX_KEPT_BYTES, deadletter_record
from rpm_core.errors import ConfigError
from rpm_core.host import free_port
from rpm_core.settings import MqttSettings
from rpm_core.wire import MAX_FUTURE_SKEW_S, encode_readings, encode_readings_record, readings_topic
from stream.bridge import Bridge, Inbound
from stream.deadletter_tools import (
    MAX_RECORD_BYTES,
    DeadLetter,
    DeadLetterToolError,
    ListReport,
    NotReplayable,
    ReplayRecord,
    ReplayReport,
    Selection,
    Unreadable,
    entry_line,
    parse_deadletter,
    parse_offsets,
    parse_since,
    read_entry,
    reason_kind,
    replay,
    replay_record,
    shown,
)
from stream.records import Group, decode_record
from tests.support.aio import run
from tests.support.influx import series
from tests.support.procs import eventually, rpm_argv, rpm_env, running, spawn

PARTITIONS = 8
NOW = 1_780_000_000.0


def patients_by_partition(n: int = 40) -> dict[int, list[str]]:
    """Patient ids grouped by their rpm.readings partition (PARTITIONS partitions)."""
    out: dict[int, list[str]] = {}
    for k in range(n):
        out.setdefault(topics.partition_for(f"p{k:04d}", PARTITIONS), []).append(f"p{k:04d}")
    return out


BY_PARTITION = patients_by_partition()
SAME_A, SAME_B = next(ps for ps in BY_PARTITION.values() if len(ps) >= 2)[:2]
OTHER = next(ps[0] for part, ps in BY_PARTITION.items() if part != topics.partition_for(SAME_A, PARTITIONS))


def group(patient: str | None, *, metric: str = "heart_rate", values: tuple[float, ...] = (70.0, 71.0),
          t0: float = NOW, device: str = "hrs-1") -> dict[str, Any]:
    g: dict[str, Any] = {"device": device, "source": "sim", "metric": [metric] * len(values),
                         "t": [t0 + k for k in range(len(values))], "value": list(values), "flags": [0] * len(values)}
    if patient is not None:
        g["patient"] = patient
    return g


def worker_deadletter(payload: bytes | None, *, reason: str = "processing failed: Bug", source: str = topics.READINGS,
                      received_at: float = NOW) -> bytes:
    """A dead-letter record as the worker writes one (stream.pipeline.Pipeline._deadletter)."""
    return deadletter_record(stage="worker", reason=reason, source=source, payload=payload, received_at=received_at)


def bridge_deadletter(payload: bytes, *, topic: str, received_at: float = NOW,
                      reason: str = "samples[0]: heart_rate value outside plausible range [20, 300]") -> bytes:
    """A dead-letter record as the bridge writes one (stream.bridge.Bridge._build)."""
    return deadletter_record(stage="bridge", reason=reason, source=topic, payload=payload, received_at=received_at)


def parsed(value: bytes, offset: int = 0) -> DeadLetter:
    return parse_deadletter(value, partition=0, offset=offset)


# --- parsing --------------------------------------------------------------------------------------


def test_a_worker_record_round_trips_through_the_writer_of_dead_letters() -> None:
    payload = encode_readings_record(None, [group(SAME_A)])
    dl = parsed(worker_deadletter(payload), offset=7)
    assert (dl.offset, dl.stage, dl.reason, dl.source) == (7, "worker", "processing failed: Bug", "rpm.readings")
    assert (dl.received_at, dl.size, dl.payload, dl.payload_is_text, dl.truncated) == (NOW, len(payload), payload,
                                                                                       True, False)
    assert dl.intact and dl.sha256 == hashlib.sha256(payload).hexdigest()


def test_a_binary_payload_is_kept_as_base64_and_read_back_as_bytes() -> None:
    payload = b"\xff\xfe\x00binary"
    dl = parsed(worker_deadletter(payload))
    assert dl.payload == payload and not dl.payload_is_text and dl.intact
    assert dl.to_json(payload=True)["payload_b64"] == base64.b64encode(payload).decode()
    assert "payload_b64" not in dl.to_json() and "payload" not in dl.to_json(), "payloads only when asked for"


def test_a_truncated_payload_is_read_but_not_intact() -> None:
    payload = b"x" * (MAX_KEPT_BYTES + 10)
    dl = parsed(worker_deadletter(payload))
    assert dl.truncated and len(dl.payload) == MAX_KEPT_BYTES and dl.size == len(payload)
    assert not dl.intact


GOOD = orjson.loads(worker_deadletter(b'{"v":1}'))


def variant(**changes: Any) -> bytes:
    """The good record with some fields changed (``...``: removed)."""
    doc = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


def raw_variant(key: str, raw_json: bytes) -> bytes:
    """The good record with ``key`` set to JSON text orjson would not write (NaN, 1e400, 10**30)."""
    return variant(**{key: "@@"}).replace(b'"@@"', raw_json)


MALFORMED = [
    pytest.param(None, "empty record", id="tombstone"),
    pytest.param(b"not json", "not JSON", id="not-json"),
    pytest.param(raw_variant("received_at", b"NaN"), "not JSON", id="nan"),
    pytest.param(raw_variant("received_at", b"1e400"), "not JSON", id="inf"),
    pytest.param(b"[1, 2]", "not a JSON object", id="array"),
    pytest.param(b'"\\ud800"', "not JSON", id="lone-surrogate"),
    pytest.param(b" " * (MAX_RECORD_BYTES + 1), "more than a dead-letter record", id="huge"),
    pytest.param(variant(stage=...), "stage must be a string", id="no-stage"),
    pytest.param(variant(stage=5), "stage must be a string", id="stage-number"),
    pytest.param(variant(reason=["x"]), "reason must be a string", id="reason-list"),
    pytest.param(variant(source=None), "source must be a string", id="source-null"),
    pytest.param(variant(received_at=None), "received_at", id="received-null (orjson writes NaN as null)"),
    pytest.param(variant(received_at="2025-11-25"), "received_at", id="received-string"),
    pytest.param(variant(received_at=True), "received_at", id="received-bool"),
    pytest.param(variant(received_at=1e20), "received_at", id="received-beyond-year-9999"),
    pytest.param(variant(received_at=-5), "received_at", id="received-negative"),
    pytest.param(variant(size=-1), "size must be", id="size-negative"),
    pytest.param(variant(size=1.5), "size must be", id="size-float"),
    pytest.param(variant(size=True), "size must be", id="size-bool"),
    pytest.param(raw_variant("size", b"1" + b"0" * 30), "size must be", id="size-huge (orjson: a float)"),
    pytest.param(variant(truncated="no"), "truncated must be", id="truncated-string"),
    pytest.param(variant(sha256=None), "sha256 must be a string", id="sha-null"),
    pytest.param(variant(payload="x", payload_b64="eA=="), "exactly one of payload", id="both-payloads"),
    pytest.param(variant(payload=None, payload_b64=None), "exactly one of payload", id="no-payload"),
    pytest.param(variant(payload=3), "exactly one of payload", id="payload-number"),
    pytest.param(variant(payload=None, payload_b64="!!not base64!!"), "not valid base64", id="bad-base64"),
]


@pytest.mark.parametrize(("value", "problem"), MALFORMED)
def test_a_malformed_record_is_one_unreadable_entry_with_its_problem(value: bytes | None, problem: str) -> None:
    entry = read_entry(value, partition=0, offset=42)
    assert isinstance(entry, Unreadable), entry
    assert problem in entry.problem and entry.offset == 42
    outcome = replay_record(entry, partitions=PARTITIONS)
    assert isinstance(outcome, NotReplayable) and outcome.why.startswith("unreadable dead-letter record: ")
    assert "unreadable dead-letter record" in entry_line(entry) and "42" in entry_line(entry)
    assert orjson.loads(orjson.dumps(entry.to_json()))["error"] == entry.problem


def test_what_can_be_read_of_a_malformed_record_still_selects_it() -> None:
    entry = read_entry(variant(size="big"), partition=0, offset=3)
    assert isinstance(entry, Unreadable)
    assert (entry.stage, entry.reason) == ("worker", "processing failed: Bug")
    assert Selection(stage="worker", reason="processing").matches(entry)
    assert not Selection(stage="bridge").matches(entry)
    assert not Selection(since=0.0).matches(entry), "its time is unknown"


# --- selection and output -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("3-9", (3, 9)), ("3-", (3, None)), ("12", (12, 12)), (" 0-0 ", (0, 0)),
])
def test_offsets_ranges(text: str, expected: tuple[int, int | None]) -> None:
    assert parse_offsets(text) == expected


@pytest.mark.parametrize("text", ["9-3", "-3", "a-b", "1-2-3", "", "1.5"])
def test_bad_offsets_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="offsets"):
        parse_offsets(text)


@pytest.mark.parametrize(("text", "epoch"), [
    ("2026-05-28T20:26:40Z", NOW), ("2026-05-28T22:26:40+02:00", NOW), ("2026-05-28T20:26:40", NOW),
    ("2026-05-28", NOW - (20 * 3600 + 26 * 60 + 40)),
])
def test_since_is_iso_8601_and_utc_unless_it_says_otherwise(text: str, epoch: float) -> None:
    assert parse_since(text) == epoch


def test_since_that_is_not_a_time_is_refused() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("yesterday")


def test_selection_criteria_all_have_to_match() -> None:
    entries = [parsed(worker_deadletter(b"{}", received_at=NOW + k, reason=reason), offset=k)
               for k, reason in enumerate(["processing failed: Bug", "Processing failed: KeyError", "group holds x"])]
    entries.append(parsed(bridge_deadletter(b"{}", topic=readings_topic("p1"), received_at=NOW + 3), offset=3))

    def offsets(sel: Selection) -> list[int]:
        return [e.offset for e in entries if sel.matches(e)]

    assert offsets(Selection()) == [0, 1, 2, 3]
    assert offsets(Selection(stage="worker")) == [0, 1, 2]
    assert offsets(Selection(stage="worker", reason="PROCESSING FAILED")) == [0, 1]
    assert offsets(Selection(since=NOW + 1)) == [1, 2, 3]
    assert offsets(Selection(offsets=(1, 2))) == [1, 2]
    assert offsets(Selection(offsets=(2, None))) == [2, 3]
    assert offsets(Selection(stage="bridge", offsets=(0, 2))) == []


def test_reasons_are_counted_by_kind() -> None:
    report = ListReport()
    for reason in ["samples[0]: heart_rate value outside plausible range [15, 350]",
                   "samples[12]: heart_rate value outside plausible range [15, 350]",
                   "samples[3]: unknown metric 'spo2'; expected one of heart_rate, rr_interval, glucose"]:
        report.add(parsed(bridge_deadletter(b"{}", topic="t", reason=reason)))
    report.add(read_entry(b"garbage", partition=0, offset=9))
    unreadable = "unreadable dead-letter record: not JSON (unexpected character, expected a JSON value: line N " \
                 "column N (char N))"
    assert report.kinds == {
        ("bridge", "samples[N]: heart_rate value outside plausible range [N, N]"): 2,
        ("bridge", "samples[N]: unknown metric …; expected one of heart_rate, rr_interval, glucose"): 1,
        ("?", unreadable): 1,
    }, "numbers as N, what the input put in the reason redacted"
    assert reason_kind("processing failed: Bug") == "processing failed: Bug"


def test_what_the_sender_chose_is_escaped_and_bounded_on_a_terminal() -> None:
    topic = "rpm/v1/p/\x1b[2J\x1b]0;owned\x07/readings"
    line = entry_line(parsed(bridge_deadletter(b"{}", topic=topic, reason="bad\nthing\r" + "x" * 1000)))
    assert "\x1b" not in line and "\n" not in line and "\r" not in line and "\x07" not in line
    assert "\\x1b[2J" in line and "bad\\nthing\\r" in line
    assert len(line) < 500
    assert shown("\u202egnp.exe") == "\\u202egnp.exe", "a bidi override is a format character: escaped"


def test_a_line_never_shows_the_payload() -> None:
    payload = encode_readings_record(None, [group(SAME_A, values=(61.375,))])
    line = entry_line(parsed(worker_deadletter(payload), offset=5))
    assert "61.375" not in line and SAME_A not in line
    assert line.split()[:4] == ["5", "2026-05-28T20:26:40.000Z", "worker", "rpm.readings"]
    assert line.endswith(f"{len(payload)}  processing failed: Bug")


# --- replay: worker records -----------------------------------------------------------------------


def test_a_worker_record_is_replayed_unchanged_to_its_patients_partition() -> None:
    payload = encode_readings_record(None, [group(SAME_A), group(SAME_B, metric="glucose", values=(99.0,))])
    outcome = replay_record(parsed(worker_deadletter(payload)), partitions=PARTITIONS)
    assert outcome == ReplayRecord(topics.partition_for(SAME_A, PARTITIONS), payload, 3)


def test_a_single_patient_record_names_its_patient_once() -> None:
    payload = encode_readings_record(OTHER, [group(None, values=(60.0, 61.0, 62.0))])
    outcome = replay_record(parsed(worker_deadletter(payload)), partitions=PARTITIONS)
    assert outcome == ReplayRecord(topics.partition_for(OTHER, PARTITIONS), payload, 3)


def test_a_record_whose_patients_span_partitions_cannot_be_replayed() -> None:
    payload = encode_readings_record(None, [group(SAME_A), group(OTHER)])
    outcome = replay_record(parsed(worker_deadletter(payload)), partitions=PARTITIONS)
    assert isinstance(outcome, NotReplayable) and "belong to 2 partitions" in outcome.why
    assert isinstance(replay_record(parsed(worker_deadletter(payload)), partitions=1), ReplayRecord)


@pytest.mark.parametrize(("record", "why"), [
    (worker_deadletter(b"{not json"), "still rejected by the worker's decoder: record is not JSON"),
    (worker_deadletter(encode_readings_record(None, [group(SAME_A, values=(999.0,))])),
     "still rejected by the worker's decoder: group holds a value outside its metric's plausible range"),
    (worker_deadletter(b"\xff\x00"), "still rejected by the worker's decoder"),
    (worker_deadletter(b'{"ack": 1}', source=topics.ALERT_ACKS, reason="bad acknowledgement: x"),
     "only rpm.readings records can be replayed"),
    (worker_deadletter(b"{}" * MAX_KEPT_BYTES), "payload truncated"),
    (deadletter_record(stage="sink", reason="InfluxDB rejected", source="influxdb", payload=b"vitals x=1",
                       received_at=NOW), "stage 'sink' cannot be replayed"),
])
def test_what_cannot_be_replayed_says_why(record: bytes, why: str) -> None:
    outcome = replay_record(parsed(record), partitions=PARTITIONS)
    assert isinstance(outcome, NotReplayable) and why in outcome.why, outcome


def test_a_payload_that_no_longer_matches_its_hash_is_not_replayed() -> None:
    payload = encode_readings_record(None, [group(SAME_A, values=(70.0,))])
    tampered = worker_deadletter(payload).replace(b"70.0", b"80.0")
    outcome = replay_record(parsed(tampered), partitions=PARTITIONS)
    assert outcome == NotReplayable("payload does not match its recorded size and sha256")


# --- replay: bridge records -----------------------------------------------------------------------


def bridge_builds(payload: bytes, topic: str, received_at: float) -> Any:
    """What the real bridge does with one MQTT message (its record, or its dead-letter record)."""
    bridge = Bridge(mqtt_settings=MqttSettings(host="127.0.0.1", port=1), bootstrap="127.0.0.1:1", client_id="t")
    return bridge._build([Inbound(mid=1, qos=1, topic=topic, payload=payload, received_at=received_at)], PARTITIONS)


def same_groups(a: list[Group], b: list[Group]) -> bool:
    return len(a) == len(b) and all(
        (x.patient, x.device, x.source, list(x.metric)) == (y.patient, y.device, y.source, list(y.metric))
        and all(u.dtype == v.dtype and np.array_equal(u, v) for u, v in ((x.t, y.t), (x.value, y.value),
                                                                           (x.flags, y.flags)))
        for x, y in zip(a, b, strict=True))


MESSAGES = [
    ("p0001", "hrs-1", "ble", [["heart_rate", NOW - 60, 72], ["rr_interval", NOW - 60, 0.83, 1]]),
    ("p0002", "gls-00:11:22:33:44:55", "manual", [["glucose", NOW - 3600.5, 54.5, 2]]),
    ("x.y_z-9", "cgm-1", "import", [["glucose", NOW - 10 * k, 100 + k] for k in range(50)]),
    ("p0003", "hrs-2", "sim", [["heart_rate", NOW + MAX_FUTURE_SKEW_S, 15]]),
]


@pytest.mark.parametrize(("patient", "device", "source", "samples"), MESSAGES)
def test_a_bridge_replay_builds_the_record_the_bridge_would_have(patient: str, device: str, source: str,
                                                                  samples: list[list[Any]]) -> None:
    payload, topic = encode_readings(patient=patient, device=device, source=source, samples=samples,
                                     msg_id="m1"), readings_topic(patient)
    batch = bridge_builds(payload, topic, NOW)
    (out,) = batch.records
    bridge_partition, bridge_value = out.partition, out.value
    outcome = replay_record(parsed(bridge_deadletter(payload, topic=topic)), partitions=PARTITIONS)
    assert isinstance(outcome, ReplayRecord), outcome
    assert outcome.partition == bridge_partition == topics.partition_for(patient, PARTITIONS)
    assert same_groups(decode_record(outcome.value), decode_record(bridge_value))
    assert outcome.readings == len(samples) == out.readings


@pytest.mark.parametrize(("payload", "topic"), [
    (b"not json", readings_topic("p1")),
    (encode_readings(patient="p2", device="d", source="sim", samples=[["heart_rate", NOW, 70]]), readings_topic("p1")),
    (encode_readings(patient="p1", device="d", source="sim", samples=[["heart_rate", NOW, 999]]), readings_topic("p1")),
    (encode_readings(patient="p1", device="d", source="sim", samples=[["heart_rate", NOW, 70]]), "rpm/v1/p/p1/status"),
    # In the future when the bridge received it: still rejected, however late the replay runs.
    (encode_readings(patient="p1", device="d", source="sim",
                     samples=[["heart_rate", NOW + MAX_FUTURE_SKEW_S + 60, 70]]), readings_topic("p1")),
])
def test_a_message_still_invalid_is_reported_with_the_bridges_reason(payload: bytes, topic: str) -> None:
    (bridge_deadletter_value,) = bridge_builds(payload, topic, NOW).deadletter_values()
    bridge_reason = orjson.loads(bridge_deadletter_value)["reason"]
    outcome = replay_record(parsed(bridge_deadletter(payload, topic=topic)), partitions=PARTITIONS)
    assert outcome == NotReplayable(f"still rejected by the bridge: {bridge_reason}")


def test_an_unhashable_source_is_rejected_by_the_bridge_and_reported_as_still_rejected() -> None:
    """It once made the bridge's validation raise TypeError (and ``rpm bridge`` exit)."""
    payload = orjson.dumps({"v": 1, "patient": "p1", "device": "d1", "source": [], "samples": []})
    (value,) = bridge_builds(payload, readings_topic("p1"), NOW).deadletter_values()
    assert orjson.loads(value)["reason"].startswith("source must be one of")
    outcome = replay_record(parsed(bridge_deadletter(payload, topic=readings_topic("p1"))), partitions=PARTITIONS)
    assert isinstance(outcome, NotReplayable) and outcome.why.startswith("still rejected by the bridge: source")


# --- replay never raises --------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["heart_rate", "glucose", "rr_interval", "p1", "sim"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
RECORD_DOCS = st.fixed_dictionaries(
    {"v": st.just(1) | JSON, "groups": st.lists(st.fixed_dictionaries(
        {k: JSON for k in ("patient", "device", "source", "metric", "t", "value", "flags")}), max_size=3) | JSON},
    optional={"patient": JSON},
)
MESSAGE_DOCS = st.fixed_dictionaries(
    {"v": st.just(1) | JSON, "patient": st.just("p1") | JSON, "device": st.just("d1") | JSON,
     "source": st.just("sim") | JSON, "samples": st.lists(st.lists(JSON, max_size=5), max_size=4) | JSON},
    optional={"id": JSON},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=RECORD_DOCS | JSON, raw=st.binary(max_size=64), use_raw=st.booleans())
def test_any_worker_payload_gives_a_record_or_a_reason(doc: Any, raw: bytes, use_raw: bool) -> None:
    payload = raw if use_raw else orjson.dumps(doc)
    outcome = replay_record(parsed(worker_deadletter(payload)), partitions=PARTITIONS)
    assert isinstance(outcome, ReplayRecord | NotReplayable)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=MESSAGE_DOCS | JSON, topic=st.sampled_from([readings_topic("p1"), "rpm/v1/p/../readings", "", "#"]))
def test_any_bridge_payload_gives_a_record_or_a_reason(doc: Any, topic: str) -> None:
    outcome = replay_record(parsed(bridge_deadletter(orjson.dumps(doc), topic=topic)), partitions=PARTITIONS)
    assert isinstance(outcome, ReplayRecord | NotReplayable)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200) | JSON.map(orjson.dumps)
       | st.dictionaries(st.sampled_from(sorted(GOOD)), JSON).map(lambda d: orjson.dumps({**GOOD, **d})))
def test_any_bytes_on_the_topic_give_an_entry(raw: bytes) -> None:
    entry = read_entry(raw, partition=0, offset=1)
    assert isinstance(entry, DeadLetter | Unreadable)
    assert isinstance(replay_record(entry, partitions=PARTITIONS), ReplayRecord | NotReplayable)
    entry_line(entry)


# --- reports and usage ----------------------------------------------------------------------------


def test_the_exit_status_says_whether_everything_selected_was_replayed() -> None:
    report = ReplayReport(selected=3, replayed=3, readings=9)
    assert report.exit_status == 0 and report.lines() == ["selected 3, replayed 3 (9 readings), not replayable 0"]
    report.not_replayable["payload truncated (N bytes, only the head kept)"] += 1
    assert report.exit_status == 1
    assert report.lines()[1].split() == ["1", "payload", "truncated", "(N", "bytes,", "only", "the", "head", "kept)"]
    assert ReplayReport(dry_run=True).lines()[0].startswith("selected 0, would replay 0")


@pytest.mark.parametrize("argv", [
    ["deadletter", "replay"],
    ["deadletter", "replay", "--stage", "sink"],
    ["deadletter", "replay", "--stage", "worker", "--offsets", "9-3"],
    ["deadletter", "list", "--since", "last tuesday"],
    ["deadletter", "list", "--limit", "0"],
    ["deadletter"],
])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize("argv", [["deadletter", "list"], ["deadletter", "replay", "--stage", "worker"]])
def test_without_a_kafka_address_the_command_says_so(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    """A ConfigError, which ``rpm`` prints and exits 2 with."""
    monkeypatch.delenv("RPM_KAFKA_URL", raising=False)
    args = build_parser().parse_args(argv)
    with pytest.raises(ConfigError, match="RPM_KAFKA_URL is not set"):
        args.func(args)


def test_kafka_out_of_reach_is_one_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    # a loop of its own, as the command has (asyncio.run), not a pytest-asyncio one
    with pytest.raises(DeadLetterToolError, match=r"cannot reach Kafka at 127\.0\.0\.1:"):
        run(replay(f"127.0.0.1:{free_port()}", Selection(stage="worker")))
    assert "Unclosed" not in caplog.text, "the consumer is stopped on the way out"


# --- against the real services --------------------------------------------------------------------


async def produce_batched(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Produce ``values`` in batches (as the worker and the bridge do), waiting for the acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=20,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value=v) for v in values])
    finally:
        await producer.stop()


async def read_partitions(bootstrap: str, topic: str, *, idle_ms: int = 1500) -> list[tuple[int, bytes]]:
    """(partition, value) of every record of ``topic``, until it stays idle for ``idle_ms``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"test-{uuid.uuid4().hex[:8]}", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while batch := await consumer.getmany(timeout_ms=idle_ms):
                out += [(tp.partition, r.value) for tp, recs in batch.items() for r in recs]
    finally:
        await consumer.stop()
    return out


def rpm(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``rpm <args>`` as a child process pointed at ``stack``."""
    return subprocess.run(rpm_argv(*args), env=rpm_env(stack), capture_output=True, text=True, timeout=120,
                          check=False)


def spawn_worker(stack: Stack, tmp_path: Path) -> ServiceProcess:
    return spawn("worker", ["worker", "--partitions", str(PARTITIONS), "--data-dir", str(tmp_path / "worker"),
                            "--web-port", str(free_port())], rpm_env(stack), tmp_path)


def vitals_counts(stack: Stack) -> dict[tuple[str, str], int]:
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    found = series(url, db, 'SELECT count("value") FROM "vitals" GROUP BY "patient", "metric"')
    return {(s["tags"]["patient"], s["tags"]["metric"]): int(s["values"][0][1]) for s in found}


def wait_for_vitals(stack: Stack, worker: ServiceProcess, expected: dict[tuple[str, str], int]) -> None:
    """InfluxDB holds exactly ``expected`` (counts only grow, and a duplicate would be a count too many)."""
    eventually(lambda: vitals_counts(stack), lambda got: got == expected, timeout=90,
               what=f"exactly {expected} in InfluxDB", watch=(worker,))


@pytest.mark.services
def test_replay_of_worker_records_reaches_influxdb_exactly(stack: Stack, tmp_path: Path) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    run(topics.ensure_topics(bootstrap, partitions=PARTITIONS))
    t0 = time.time() - 600
    # What the worker isolated while it had a bug: a two-patient record (one partition), a one-patient
    # record in the single-patient shape, a record of two devices of one patient.
    poisoned = [
        encode_readings_record(None, [group(SAME_A, values=(70.0, 71.0, 72.0), t0=t0),
                                      group(SAME_B, metric="glucose", values=(101.0, 102.0), t0=t0)]),
        encode_readings_record(OTHER, [group(None, metric="rr_interval", values=(0.8, 0.81, 0.82, 0.83), t0=t0)]),
        encode_readings_record(None, [group(SAME_A, values=(80.0, 81.0), t0=t0 + 100),
                                      group(SAME_A, metric="glucose", values=(95.0,), t0=t0, device="cgm-1")]),
    ]
    bridge_valid = encode_readings(patient="pbridge", device="d", source="sim", samples=[["heart_rate", t0, 70]])
    run(produce_batched(bootstrap, topics.DEADLETTER, [
        *(worker_deadletter(v, received_at=t0) for v in poisoned),
        bridge_deadletter(bridge_valid, topic=readings_topic("pbridge"), received_at=t0),
        deadletter_record(stage="sink", reason="InfluxDB rejected the write (400)", source="influxdb",
                          payload=b"vitals,patient=psink value=70 1", received_at=t0),
    ]))

    dry = rpm(stack, "deadletter", "replay", "--stage", "worker", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "selected 3, would replay 3 (12 readings), not replayable 0" in dry.stdout
    assert run(read_partitions(bootstrap, topics.READINGS, idle_ms=500)) == [], "a dry run produces nothing"

    for _ in range(2):  # twice: harmless downstream, and each run says what it produced
        done = rpm(stack, "deadletter", "replay", "--stage", "worker", "--reason", "processing failed")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "selected 3, replayed 3 (12 readings), not replayable 0" in done.stdout
    produced = run(read_partitions(bootstrap, topics.READINGS))
    assert sorted(produced) == sorted(
        (part, v) for v in poisoned for part in [topics.partition_for(decode_record(v)[0].patient, PARTITIONS)] * 2
    ), "each record twice, unchanged, on its patients' partition"

    worker = spawn_worker(stack, tmp_path)
    with running(worker):
        wait_for_vitals(stack, worker, {
            (SAME_A, "heart_rate"): 5, (SAME_A, "glucose"): 1, (SAME_B, "glucose"): 2, (OTHER, "rr_interval"): 4,
        })


@pytest.mark.services
def test_replay_of_bridge_records_validates_again_and_reaches_influxdb(stack: Stack, tmp_path: Path) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    run(topics.ensure_topics(bootstrap, partitions=PARTITIONS))
    t0 = time.time() - 600
    # Rejected by an older, stricter validation (heart rate above 300), valid today.
    fast = encode_readings(patient=SAME_A, device="hrs-1", source="ble",
                           samples=[["heart_rate", t0 + k, 310 + k] for k in range(3)] + [["rr_interval", t0, 0.2]])
    meter = encode_readings(patient=OTHER, device="gls-1", source="manual", samples=[["glucose", t0, 12.5, 2]])
    wrong_topic = encode_readings(patient=SAME_B, device="d", source="sim", samples=[["heart_rate", t0, 70]])
    run(produce_batched(bootstrap, topics.DEADLETTER, [
        bridge_deadletter(fast, topic=readings_topic(SAME_A), received_at=t0),
        bridge_deadletter(wrong_topic, topic=readings_topic(OTHER), received_at=t0,
                          reason="patient in payload does not match the topic"),
        bridge_deadletter(b'{"v": 1, "samples": [' + b"1," * MAX_KEPT_BYTES + b"1]}", topic=readings_topic(SAME_B),
                          received_at=t0, reason="message is N bytes; the limit is 262144"),
        bridge_deadletter(meter, topic=readings_topic(OTHER), received_at=t0,
                          reason="samples[0]: glucose value outside plausible range [20, 600]"),
    ]))

    done = rpm(stack, "deadletter", "replay", "--stage", "bridge")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "selected 4, replayed 2 (5 readings), not replayable 2" in lines
    assert any(ln.split()[0] == "1" and "still rejected by the bridge: patient in payload does not match the topic"
               in ln for ln in lines), lines
    assert any(ln.split()[0] == "2" and "payload truncated" in ln for ln in lines), lines

    worker = spawn_worker(stack, tmp_path)
    with running(worker):
        wait_for_vitals(stack, worker, {(SAME_A, "heart_rate"): 3, (SAME_A, "rr_interval"): 1,
                                        (OTHER, "glucose"): 1})


@pytest.mark.services
def test_list_shows_offsets_and_reasons_but_payloads_only_when_asked(stack: Stack) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    run(topics.ensure_topics(bootstrap, partitions=PARTITIONS))
    secret_hr, secret_glucose = "61.375", "187.625"
    records = [
        worker_deadletter(encode_readings_record(None, [group(SAME_A, values=(float(secret_hr),))])),
        bridge_deadletter(encode_readings(patient="p1", device="d", source="sim",
                                          samples=[["glucose", NOW, float(secret_glucose)]]),
                          topic=readings_topic("p1"),
                          reason="samples[0]: unknown metric 'glucoze'; expected one of heart_rate"),
        b"garbage on the topic",
        *(bridge_deadletter(b"{}", topic=readings_topic(f"q{k}"), reason=f"samples[{k}]: bad") for k in range(300)),
    ]
    # Batched writes: Tansu's end offsets then lag behind the real end; list must still show them all.
    run(produce_batched(bootstrap, topics.DEADLETTER, records))

    out = rpm(stack, "deadletter", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["offset", "received_at", "(UTC)"]
    assert lines[1].split()[:4] == ["0", "2026-05-28T20:26:40.000Z", "worker", "rpm.readings"]
    assert lines[1].endswith("processing failed: Bug")
    assert lines[2].split()[:3] == ["1", "2026-05-28T20:26:40.000Z", "bridge"]
    assert lines[3].split()[0] == "2" and "unreadable dead-letter record: not JSON" in lines[3]
    assert [ln.split()[0] for ln in lines[1:len(records) + 1]] == [str(k) for k in range(len(records))]
    assert secret_hr not in out.stdout and secret_glucose not in out.stdout, "no payload without --payload"
    assert SAME_A not in out.stdout
    summary = lines[len(records) + 1:]
    assert summary[0] == f"{len(records)} of {len(records)} dead-letter records selected; by stage and reason:"
    assert summary[1].split() == ["300", "bridge", "samples[N]:", "bad"]
    assert sorted(tuple(line.split(maxsplit=2)) for line in summary[2:]) == [
        ("1", "?", "unreadable dead-letter record: not JSON (unexpected character, expected a JSON value: line N "
                   "column N (char N))"),
        ("1", "bridge", "samples[N]: unknown metric …; expected one of heart_rate"),
        ("1", "worker", "processing failed: Bug"),
    ]

    shown_payloads = rpm(stack, "deadletter", "list", "--payload", "--offsets", "0-1")
    assert secret_hr in shown_payloads.stdout and secret_glucose in shown_payloads.stdout

    as_json = rpm(stack, "deadletter", "list", "--json", "--stage", "bridge", "--reason", "UNKNOWN METRIC")
    docs = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert [(d["offset"], d["stage"], d["source"]) for d in docs] == [(1, "bridge", "rpm/v1/p/p1/readings")]
    assert "payload" not in docs[0] and "payload_b64" not in docs[0]
    assert "1 of 303 dead-letter records selected" in as_json.stderr

    limited = rpm(stack, "deadletter", "list", "--limit", "2", "--json", "--payload")
    docs = [orjson.loads(line) for line in limited.stdout.splitlines()]
    assert [d["offset"] for d in docs] == [0, 1]
    assert secret_hr in docs[0]["payload"] and "(showing the first 2 of 303 selected)" in limited.stderr


def test_the_lists_of_cases_cover_each_field() -> None:
    """Every field of a dead-letter record has a malformed case above (a new field needs one)."""
    ids = " ".join(p.id or "" for p in MALFORMED)
    fields = {"stage", "reason", "source", "received", "size", "truncated", "sha", "payload", "base64"}
    assert all(f in ids for f in fields), sorted(f for f in fields if f not in ids)
    assert set(GOOD) == {"stage", "reason", "source", "received_at", "size", "sha256", "payload", "payload_b64",
                         "truncated"}
