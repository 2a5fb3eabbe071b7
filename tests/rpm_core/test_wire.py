"""The MQTT readings schema: good messages parse, every kind of bad one fails with a reason."""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpm_core.wire import (
    MAX_MESSAGE_BYTES,
    ReadingsMessage,
    SampleFlag,
    WireError,
    encode_readings,
    parse_readings_message,
    patient_from_topic,
    readings_topic,
)

NOW = 1_780_000_000.0
TOPIC = readings_topic("p0001")


def good(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "v": 1, "patient": "p0001", "device": "hrs-p0001", "source": "sim",
        "samples": [["heart_rate", NOW - 2, 72], ["rr_interval", NOW - 1.5, 0.83, 0], ["glucose", NOW, 104.0, 2]],
    }
    doc.update(over)
    return doc


def parse(doc: object, topic: str = TOPIC) -> ReadingsMessage:
    return parse_readings_message(orjson.dumps(doc), topic=topic, now=NOW)


def test_good_message_parses_to_normalised_samples() -> None:
    msg = parse(good())
    assert msg.patient == "p0001" and msg.device == "hrs-p0001" and msg.source == "sim"
    assert msg.samples == (
        ("heart_rate", NOW - 2, 72.0, 0), ("rr_interval", NOW - 1.5, 0.83, 0), ("glucose", NOW, 104.0, 2),
    )


def test_encode_is_the_inverse_of_parse() -> None:
    samples = [["heart_rate", NOW, 60.0, 0]]
    payload = encode_readings(patient="p0001", device="d", source="ble", samples=samples)
    assert parse_readings_message(payload, topic=TOPIC, now=NOW).samples == (("heart_rate", NOW, 60.0, 0),)


def test_a_hi_or_lo_result_travels_as_a_flagged_sample_and_old_flags_stay_valid() -> None:
    """Issue 14: a meter's "HI" is the meter's limit flagged ABOVE_RANGE ("LO": BELOW_RANGE)."""
    samples = [["glucose", NOW - 2, 600, int(SampleFlag.ABOVE_RANGE)], ["glucose", NOW - 1, 20, 16],
               ["glucose", NOW, 104.0, 2 | 4 | 1]]  # an earlier agent's flags (bits 0-2) parse as before
    msg = parse(good(samples=samples))
    assert [s[3] for s in msg.samples] == [8, 16, 7]
    assert msg.to_group()["flags"] == (8, 16, 7)


def test_message_id_is_optional_and_checked() -> None:
    assert parse(good(id="outbox-42")).patient == "p0001"


def test_group_is_columnar() -> None:
    group = parse(good()).to_group()
    assert group["metric"] == ("heart_rate", "rr_interval", "glucose")
    assert group["flags"] == (0, 0, 2)


BAD_PAYLOADS = [
    (b"not json at all", "not JSON"),
    (b'{"v": 1, "patient": "p0001", "samples": [["heart_rate", 1780000000, NaN]]}', "not JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (b"", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
]


@pytest.mark.parametrize(("payload", "reason"), BAD_PAYLOADS)
def test_unparseable_payloads_are_rejected(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        parse_readings_message(payload, topic=TOPIC, now=NOW)


BAD_DOCS = [
    (good(v=2), "unsupported schema version 2"),
    (good(v="1"), "unsupported schema version"),
    (good(v=True), "unsupported schema version"),
    ({k: v for k, v in good().items() if k != "v"}, "unsupported schema version None"),
    (good(patient="p0002"), "does not match the topic"),
    (good(patient=17), "patient must be an identifier"),
    (good(patient="p 0001"), "patient must be an identifier"),
    (good(device=None), "device must be an identifier"),
    (good(device="x" * 65), "device must be an identifier"),
    (good(source="satellite"), "source must be one of"),
    (good(extra=1), "unknown fields: extra"),
    (good(id="a b"), "id must be an identifier"),
    (good(id=7), "id must be an identifier"),
    (good(samples=[]), "non-empty list"),
    (good(samples={"heart_rate": 72}), "non-empty list"),
    (good(samples=[["heart_rate", NOW]]), r"samples\[0\]: expected"),
    (good(samples=[["heart_rate", NOW, 72, 0, 9]]), r"samples\[0\]: expected"),
    (good(samples=[["spo2", NOW, 97]]), "unknown metric 'spo2'"),
    (good(samples=[["heart_rate", "yesterday", 72]]), "time must be a finite number"),
    (good(samples=[["heart_rate", True, 72]]), "time must be a finite number"),
    (good(samples=[["heart_rate", NOW, "72"]]), "value must be a finite number"),
    (good(samples=[["heart_rate", NOW, None]]), "value must be a finite number"),
    (good(samples=[["heart_rate", NOW, 1e400]]), "value must be a finite number"),
    (good(samples=[["heart_rate", NOW, 0]]), "outside plausible range"),
    (good(samples=[["heart_rate", NOW, 72], ["glucose", NOW, 5000]]), r"samples\[1\]: glucose value outside"),
    (good(samples=[["rr_interval", NOW, 12.0]]), "outside plausible range"),
    (good(samples=[["heart_rate", NOW + 3600, 72]]), "3600 s in the future"),
    (good(samples=[["heart_rate", 12345.0, 72]]), "before 2000-01-01"),
    (good(samples=[["heart_rate", NOW, 72, -1]]), "flags must be"),
    (good(samples=[["heart_rate", NOW, 72, 64]]), "flags must be"),
    (good(samples=[["glucose", NOW, 600, 8 | 16]]), "both above and below the measuring range"),
    (good(samples=[["heart_rate", NOW, 72, 1.5]]), "flags must be"),
    (good(samples=[["heart_rate", NOW, 72]] * 2001), "limit is 2000"),
]


@pytest.mark.parametrize(("doc", "reason"), BAD_DOCS)
def test_bad_documents_are_rejected_with_a_reason(doc: object, reason: str) -> None:
    with pytest.raises(WireError, match=reason) as info:
        parse(doc)
    assert info.value.reason == str(info.value)


def test_huge_message_is_rejected_before_parsing() -> None:
    payload = b"{" + b" " * (MAX_MESSAGE_BYTES + 1) + b"}"
    with pytest.raises(WireError, match=f"the limit is {MAX_MESSAGE_BYTES}"):
        parse_readings_message(payload, topic=TOPIC, now=NOW)


@pytest.mark.parametrize("topic", [
    "rpm/v1/p/p0001", "rpm/v2/p/p0001/readings", "rpm/v1/p//readings", "rpm/v1/p/a+b/readings",
    "rpm/v1/p/p0001/readings/extra", "other/v1/p/p0001/readings",
])
def test_bad_topics_are_rejected(topic: str) -> None:
    with pytest.raises(WireError):
        patient_from_topic(topic)


VALID_FIELDS = {"v": st.just(1), "patient": st.just("p0001"), "device": st.just("d"), "source": st.just("sim"),
                "samples": st.just([["heart_rate", NOW - 1, 70.0]])}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["v", "patient", "device", "source", "samples", "x"]), children, max_size=5)
    | st.fixed_dictionaries({"v": st.just(1), "patient": st.just("p0001"), "device": st.just("d"),
                             "source": st.just("sim"), "samples": st.lists(children, max_size=3)})
    # every field of an otherwise valid message replaced by any JSON value (a list as "source" once
    # raised TypeError instead of WireError, and one such message stopped the bridge)
    | st.sampled_from(["v", "patient", "device", "source", "samples", "id"]).flatmap(
        lambda field: st.fixed_dictionaries({**VALID_FIELDS, field: children})),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_fuzz_any_json_parses_or_fails_with_wire_error(doc: object) -> None:
    # stdlib json, so that integers beyond 64 bits reach the parser too
    payload = json.dumps(doc).encode()
    try:
        msg = parse_readings_message(payload, topic=TOPIC, now=NOW)
    except WireError as exc:
        reason = exc.reason
        msg = None
    if msg is None:
        assert reason
    else:
        assert all(math.isfinite(s[2]) for s in msg.samples)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300))
def test_fuzz_random_bytes_fail_with_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        parse_readings_message(payload, topic=TOPIC, now=NOW)


@pytest.mark.parametrize("values", [
    ["p1"], ["p1", "hrs-p1", "sim"], ["x" * 64], ["x" * 65], [""], ["a b"], ["a\nb"], ["a\n"], ["\n"], ["p1", "\n"],
    ["p1", ""], ["é"], [7], ["p1", None], [["p1"]], ["p1\n", "p2"], ["a:b.c_d-e"], ["a,b"],
])
def test_all_valid_ids_is_is_valid_id_of_each(values: list[object]) -> None:
    from rpm_core.wire import all_valid_ids, is_valid_id

    assert all_valid_ids(values) == all(is_valid_id(v) for v in values)
