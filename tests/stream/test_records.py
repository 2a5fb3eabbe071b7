"""Decoding rpm.readings records: the worker's defence against anything else on the topic."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpm_core.wire import encode_readings, encode_readings_record, parse_readings_message, readings_topic
from stream.records import RecordError, decode_record, decode_records

NOW = 1_780_000_000.0


def record(**group_over: object) -> bytes:
    msg = parse_readings_message(
        encode_readings(patient="p1", device="d1", source="sim",
                        samples=[["heart_rate", NOW, 70], ["glucose", NOW, 99.5, 2]]),
        topic=readings_topic("p1"), now=NOW,
    )
    group = {**msg.to_group(), **group_over}
    return encode_readings_record("p1", [group])


def test_a_bridge_record_decodes_into_columns() -> None:
    (g,) = decode_record(record())
    assert (g.patient, g.device, g.source, g.metric) == ("p1", "d1", "sim", ["heart_rate", "glucose"])
    assert g.t.tolist() == [NOW, NOW] and g.value.tolist() == [70.0, 99.5] and g.flags.tolist() == [0, 2]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{", "not JSON"),
    (orjson.dumps({"v": 2, "patient": "p1", "groups": []}), "unsupported schema version 2"),
    (orjson.dumps({"v": 1, "patient": "p 1", "groups": [{}]}), "valid patient"),
    (orjson.dumps({"v": 1, "patient": "p1", "groups": [{"device": "d"}]}), "exactly the keys"),
    (record(metric=["spo2", "glucose"]), "known metric"),
    (record(t=["a", "b"]), "must be numbers"),
    (record(t=[NOW]), "equal length"),
    (record(value=[70, 1e9]), "plausible range"),
    (record(flags=[0, 99]), "invalid flags"),
    (record(device="a b"), "not a valid identifier"),
    # the bridge's shape: one record per partition, each group naming its patient
    (orjson.dumps({"v": 1, "groups": []}), "non-empty list of groups"),
    (orjson.dumps({"v": 1, "groups": [{"device": "d"}]}), "exactly the keys"),
    (orjson.dumps({"v": 1, "groups": [orjson.loads(record())["groups"][0] | {"patient": "p 1"}]}),
     "group patient is not a valid identifier"),
    (orjson.dumps({"v": 1, "groups": [orjson.loads(record())["groups"][0] | {"patient": 7}]}),
     "group patient is not a valid identifier"),
    (orjson.dumps({"v": 1, "patient": "p1", "groups": [orjson.loads(record())["groups"][0] | {"patient": "p2"}]}),
     "exactly the keys"),  # a patient at the top and in a group: ambiguous
    (orjson.dumps({"v": 1, "partition": 3, "groups": [orjson.loads(record())["groups"][0] | {"patient": "p1"}]}),
     "unknown fields: partition"),
])
def test_malformed_records_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_record(raw)


def test_one_bad_record_does_not_spoil_the_batch() -> None:
    out = decode_records([record(), b"junk", record()])
    assert len(out.groups) == 2 and out.samples == 4
    assert [raw for raw, _ in out.rejected] == [b"junk"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(["v", "patient", "groups"]), st.integers() | st.text() | st.lists(st.integers()))))
def test_fuzz_records_decode_or_are_rejected(raw: bytes) -> None:
    out = decode_records([raw])
    assert len(out.rejected) + len(out.groups) >= 1


def test_a_record_of_several_patients_decodes_each_group_with_its_own_patient() -> None:
    group = orjson.loads(record())["groups"][0]
    raw = orjson.dumps({"v": 1, "groups": [group | {"patient": "p1"}, group | {"patient": "p2"}]})
    assert [g.patient for g in decode_record(raw)] == ["p1", "p2"]


@pytest.mark.parametrize(("column", "bad", "reason"), [
    ("value", ["70", 99.5], "must be numbers"),  # a number in a string is a wrong JSON type, not a number
    ("t", [NOW, None], "must be numbers"),
    ("flags", [0, 1.5], "must be integers"),
    ("flags", [0, True], "must be integers"),
    ("value", [[70], [99.5]], "must be numbers"),
])
def test_a_column_of_the_wrong_json_type_rejects_its_record_and_only_it(column: str, bad: list[object],
                                                                      reason: str) -> None:
    broken = record(**{column: bad})
    with pytest.raises(RecordError, match=reason):
        decode_record(broken)
    out = decode_records([record(), broken, record()])  # the batch's fast path fails, the slow path finds the one
    assert [raw for raw, _ in out.rejected] == [broken] and reason in out.rejected[0][1]
    assert out.patient == ["p1", "p1"] and out.samples == 4 and out.value.tolist() == [70.0, 99.5] * 2


samples = st.lists(st.tuples(st.sampled_from(["heart_rate", "rr_interval", "glucose"]),
                             st.floats(NOW - 3600, NOW), st.sampled_from([0, 1, 2, 4])), min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["d1", "cgm-2"]), samples),
                         min_size=1, max_size=3), max_size=5))
def test_the_column_wise_batch_decoder_agrees_with_the_record_by_record_one(batch: list[list[tuple]]) -> None:
    values = [
        orjson.dumps({"v": 1, "groups": [
            {"patient": p, "device": d, "source": "ble", "metric": [m for m, _, _ in ss], "t": [t for _, t, _ in ss],
             "value": [{"heart_rate": 72.0, "rr_interval": 0.8, "glucose": 110.0}[m] for m, _, _ in ss],
             "flags": [f for _, _, f in ss]}
            for p, d, ss in groups]})
        for groups in batch
    ]
    out = decode_records(values)
    reference = [g for v in values for g in decode_record(v)]
    assert out.rejected == []
    assert [(g.patient, g.device, g.source, g.metric, g.t.tolist(), g.value.tolist(), g.flags.tolist())
            for g in out.groups] == [
        (g.patient, g.device, g.source, g.metric, g.t.tolist(), g.value.tolist(), g.flags.tolist()) for g in reference]


ids = st.sampled_from(["p1", "d1", "cgm-2", "x" * 64, "x" * 65, "", "a b", "a\nb", "a\n", "é", 7, None, ["d1"],
                       {"d": 1}, "ble", "sim"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(ids, ids, ids, st.sampled_from(["heart_rate", "glucose", "spo2", 3])),
                         min_size=1, max_size=3), min_size=1, max_size=5))
def test_the_batch_decoder_finds_the_same_bad_identifiers_as_the_record_by_record_one(
        batch: list[list[tuple[object, object, object, object]]]) -> None:
    # The fast path checks the identifiers and metric names of a whole batch at once and, if one is
    # bad, decodes the batch again record by record: every record is kept or refused as alone, and
    # refused with the reason the record-by-record decoder gives.
    values = [orjson.dumps({"v": 1, "groups": [
        {"patient": p, "device": d, "source": s, "metric": [m], "t": [NOW], "value": [72.0], "flags": [0]}
        for p, d, s, m in groups]}) for groups in batch]
    out = decode_records(values)
    expected_rejected, expected_groups = [], []
    for v in values:
        try:
            expected_groups += decode_record(v)
        except RecordError as exc:
            expected_rejected.append((v, str(exc)))
    assert out.rejected == expected_rejected
    assert [(g.patient, g.device, g.source, g.metric) for g in out.groups] == [
        (g.patient, g.device, g.source, g.metric) for g in expected_groups]


# A rogue producer on rpm.readings (Tansu has no ACLs): a time the bridge would never let through became
# the device's watermark and the patient's last reading, so the device's real readings after it were
# dropped as already seen and staleness never fired (nobody told); 1e300 s also overflowed InfluxDB's ns.
@pytest.mark.parametrize("t", [1e300, 4_200_000_000.0, -1.0, 0, 946_684_799.0, 2**63])
def test_a_time_outside_the_wire_bounds_rejects_the_record(t: float) -> None:
    broken = record(t=[NOW, t])
    with pytest.raises(RecordError, match="time before 2000-01-01 or after 2100"):
        decode_record(broken)
    out = decode_records([record(), broken])
    assert [raw for raw, _ in out.rejected] == [broken] and out.samples == 2


def test_given_the_clock_a_time_further_ahead_than_the_bridge_allows_rejects_the_record() -> None:
    ahead = record(t=[NOW, NOW + 3600])  # an hour ahead of the worker: the bridge refuses beyond 300 s
    with pytest.raises(RecordError, match="in the future"):
        decode_record(ahead, now=NOW)
    assert decode_records([record(), ahead], now=NOW).rejected == [(ahead, "group holds a time in the future "
                                                                           "(not from the bridge?)")]
    assert decode_records([ahead]).rejected == []  # without a clock (replays, backtests) only the fixed bounds
    # what the bridge accepts (300 s ahead of its clock) passes, with a margin for the hosts' clocks
    assert decode_records([record(t=[NOW, NOW + 300])], now=NOW - 200).rejected == []


def test_a_value_both_above_and_below_the_measuring_range_rejects_the_record() -> None:
    broken = record(flags=[0, 8 | 16])  # the wire refuses it; a detector would read it both ways
    with pytest.raises(RecordError, match="invalid flags"):
        decode_record(broken)
    assert [raw for raw, _ in decode_records([record(), broken]).rejected] == [broken]


def test_a_record_whose_version_is_nested_a_thousand_levels_deep_is_rejected_not_raised() -> None:
    """repr() of the version in the reason raised RecursionError out of decode_records: the worker's
    batch failed, and was retried, for one record of a rogue producer."""
    deep = b"[" * 1000 + b"]" * 1000
    out = decode_records([record(), b'{"v":' + deep + b',"groups":[]}'])
    assert out.samples == 2 and [reason for _raw, reason in out.rejected] == [
        "unsupported schema version a list; expected v1"]
