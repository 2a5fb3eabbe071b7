"""JSON that names a key twice is refused, never read last-key-wins (issue 13).

``{"patient": "pB", "patient": "pA"}`` is ``pA`` to orjson and Python's json, ``pB`` to other
parsers: a message that one component checks as one patient's and another reads as another's.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from rpm_core.acks import AckDecodeError, decode_ack, encode_ack
from rpm_core.commands import CommandDecodeError, PatientMessage
from rpm_core.technical import TechnicalAlertError, decode_heartbeat
from rpm_core.wire import DuplicateKeyError, WireError, encode_readings, loads_unique, parse_readings_message

NOW = time.time()


def test_a_readings_message_naming_its_patient_twice_is_refused() -> None:
    good = encode_readings(patient="pA", device="d", source="sim", samples=[["heart_rate", NOW - 1, 70]])
    parse_readings_message(good, topic="rpm/v1/p/pA/readings", now=NOW)
    for key in (b'"patient":"pB",', b'"device":"x",', b'"samples":[],', b'"v":2,', b'"source" : "ble",'):
        doubled = good.replace(b"{", b"{" + key, 1)
        with pytest.raises(WireError, match="duplicate keys"):
            parse_readings_message(doubled, topic="rpm/v1/p/pA/readings", now=NOW)


def test_a_device_named_like_a_key_is_not_a_duplicate() -> None:
    msg = encode_readings(patient="patient", device="device", source="sim", samples=[["heart_rate", NOW - 1, 70]])
    assert parse_readings_message(msg, topic="rpm/v1/p/patient/readings", now=NOW).device == "device"


@pytest.mark.parametrize("text", [b'{"a": 1, "a": 2}', b'[{"x": {"b": 1, "b": 1}}]', '{"k": 1, "k": 1}'])
def test_loads_unique_refuses_duplicates_at_any_depth(text: bytes | str) -> None:
    with pytest.raises(DuplicateKeyError):
        loads_unique(text)


def test_an_acknowledgement_naming_its_alert_twice_is_refused() -> None:
    ack = encode_ack(alert_id="a" * 16, patient="pA", by="Nurse", at=NOW, station="north")
    assert decode_ack(ack, now=NOW).patient == "pA"
    with pytest.raises(AckDecodeError, match="duplicate key"):
        decode_ack(ack.replace(b"{", b'{"patient":"pB",', 1), now=NOW)


def test_a_command_and_a_heartbeat_with_a_key_twice_are_refused() -> None:
    with pytest.raises(CommandDecodeError, match="duplicate key"):
        PatientMessage.from_bytes(b'{"v": 1, "v": 1}')
    with pytest.raises(TechnicalAlertError):
        decode_heartbeat(b'{"v": 1, "component": "worker", "component": "bridge", "instance": "w", "time": 1}')


# -- our publishers stay below every size limit (issue 13, item 6) -------------------------------------


def test_publishers_split_below_the_wire_limit_whatever_the_numbers() -> None:
    from edge_agent.const import PUBLISH_BATCH_MAX_SAMPLES
    from rpm_core.wire import (
        MAX_MESSAGE_BYTES,
        MAX_SAMPLES_PER_MESSAGE,
        MQTT_MESSAGE_SIZE_LIMIT_BYTES,
        encode_readings_messages,
    )

    # the longest encodings a sample can have: the longest metric, 17-digit floats, a flag
    worst = [["rr_interval", 1_780_000_000.1234567, 0.15000000000000002, 7]] * 5_000
    ident = "x" * 64
    assert PUBLISH_BATCH_MAX_SAMPLES <= 500
    messages = encode_readings_messages(patient=ident, device=ident, source="import", samples=worst)
    assert sum(n for _p, n in messages) == len(worst)
    for payload, n in messages:
        assert len(payload) <= MAX_MESSAGE_BYTES < MQTT_MESSAGE_SIZE_LIMIT_BYTES and n <= MAX_SAMPLES_PER_MESSAGE
        parse_readings_message(payload, topic=f"rpm/v1/p/{ident}/readings", now=1_780_000_001.0)
    # the edge agent's batches (PUBLISH_BATCH_MAX_SAMPLES of the same) fit as one message
    [(one, _n)] = encode_readings_messages(patient=ident, device=ident, source="ble",
                                           samples=worst[:PUBLISH_BATCH_MAX_SAMPLES])
    assert len(one) <= MAX_MESSAGE_BYTES


def test_a_message_too_big_for_its_sample_count_is_halved_until_it_fits() -> None:
    from rpm_core.wire import MAX_MESSAGE_BYTES, encode_readings_messages

    worst = [["rr_interval", 1_780_000_000.1234567, 0.15000000000000002, 7]] * 6_000
    messages = encode_readings_messages(patient="p", device="d", source="sim", samples=worst, max_samples=6_000)
    assert len(messages) > 1 and all(len(p) <= MAX_MESSAGE_BYTES for p, _n in messages)


# One envelope check for every cross-process message: the same answers from each decoder.
def _decoders() -> dict[str, Any]:
    from rpm_core.acks import decode_ack
    from rpm_core.commands import PatientAck
    from rpm_core.technical import decode_heartbeat

    return {"ack": decode_ack, "patient ack": PatientAck.from_bytes, "heartbeat": decode_heartbeat}


@pytest.mark.parametrize("name", ["ack", "patient ack", "heartbeat"])
@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"v": true}', "unsupported schema version True"),  # true == 1 in Python: still refused
    (b'{"v": 1.0000001}', "unsupported schema version"),
    (b'{"v": "1"}', "unsupported schema version"),
    (b'{"v": 1, "v": 1}', "duplicate key"),
    (b"[1]", "must be a JSON object"),
    (b'{"v": 1, "zz": 1}', "unknown fields: zz"),
    (b"\xff", "not JSON"),
    (None, "tombstone"),
])
def test_every_decoder_refuses_a_bad_envelope_the_same_way(name: str, raw: bytes | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        _decoders()[name](raw)


@pytest.mark.parametrize("name", ["ack", "patient ack", "heartbeat"])
def test_a_huge_envelope_is_refused_before_it_is_parsed(name: str) -> None:
    raw = b'{"v": 1, "pad": "' + b"x" * 1_100_000 + b'"}'
    with pytest.raises(ValueError, match="larger than"):
        _decoders()[name](raw)


# orjson reads 1,024 levels of nesting, Python's json raises RecursionError (no ValueError) before that:
# it escaped every decoder's ``except ValueError`` (an ack on Kafka, a patient's ack or status on MQTT, a
# heartbeat), and the readings check took it for "no key named twice".
DEEP = b"[" * 1015 + b"]" * 1015


@pytest.mark.parametrize("name", ["ack", "patient ack", "heartbeat"])
def test_every_decoder_refuses_json_nested_deeper_than_the_standard_parser_reads(name: str) -> None:
    raw = b'{"v": 1, "pad": ' + DEEP + b"}"
    assert len(raw) < 4096, "within every decoder's size limit"
    with pytest.raises(ValueError, match="nested too deeply"):
        _decoders()[name](raw)
    with pytest.raises(ValueError, match="nested too deeply"):
        loads_unique(raw)


def test_a_key_named_twice_cannot_hide_behind_deep_nesting() -> None:
    good = encode_readings(patient="pA", device="hr-1", source="sim", samples=[["heart_rate", NOW - 1, 70]])
    doubled = good.replace(b"{", b'{"d\\u0065vice":' + DEEP + b",", 1)  # orjson keeps the last "device"
    with pytest.raises(WireError, match="nested too deeply"):
        parse_readings_message(doubled, topic="rpm/v1/p/pA/readings", now=NOW)


@pytest.mark.parametrize("where", ["v", "metric"])
def test_a_reason_never_reprs_a_deep_or_huge_value(where: str) -> None:
    """repr() of a list 1,000 levels deep raises RecursionError (out of the bridge's validation, as a
    defect; out of the worker's record decoder, stalling its partition); a 250 kB string was echoed whole."""
    for bad in (DEEP, b'"' + b"x" * 250_000 + b'"'):
        sample = bad if where == "metric" else b'"heart_rate"'
        version = bad if where == "v" else b"1"
        raw = (b'{"v":' + version + b',"patient":"pA","device":"d","source":"sim","samples":[[' + sample
               + b",%d,70]]}" % int(NOW))
        with pytest.raises(WireError) as info:
            parse_readings_message(raw, topic="rpm/v1/p/pA/readings", now=NOW)
        assert len(info.value.reason) < 200
