"""JSON that names a key twice is refused, never read last-key-wins (issue 13).

``{"patient": "pB", "patient": "pA"}`` is ``pA`` to orjson and Python's json, ``pB`` to other
parsers: a message that one component checks as one patient's and another reads as another's.
"""

from __future__ import annotations

import time

import pytest

from edge_agent.commands import CommandDecodeError, PatientMessage
from rpm_core.technical import TechnicalAlertError, decode_heartbeat
from rpm_core.wire import DuplicateKeyError, WireError, encode_readings, loads_unique, parse_readings_message
from stream.acks import AckDecodeError, decode_ack, encode_ack

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
