"""The acknowledgement wire format (``rpm_core.acks``): round trips and every rejection reason."""

from __future__ import annotations

import itertools

import orjson
import pytest

from rpm_core.acks import MAX_ACK_BYTES, Ack, AckDecodeError, decode_ack, encode_ack

GOOD = {"v": 1, "alert_id": "3f2a9c0d1e2b4a5c", "patient": "p0001", "by": "Nurse Ana", "at": 1764100000.25,
        "station": "north-desk"}


@pytest.mark.parametrize(("alert_id", "patient", "by", "at", "station"), list(itertools.product(
    ["3f2a9c0d1e2b4a5c", "a"],
    ["p0001", "patient_7.b:x-1"],
    ["Ana", "  Zoë Müller-Łukasz  ", "N" * 64],
    [946684800.0, 1764100000, 1764100000.125],
    ["north-desk", "s1"],
)))
def test_encode_decode_round_trip(alert_id: str, patient: str, by: str, at: float, station: str) -> None:
    raw = encode_ack(alert_id=alert_id, patient=patient, by=by, at=at, station=station)
    ack = decode_ack(raw, key=patient.encode())
    assert ack == Ack(alert_id=alert_id, patient=patient, by=by.strip(), at=at, station=station)
    assert ack.key == patient.encode()
    assert decode_ack(bytes(ack)) == ack


def test_value_is_the_documented_json() -> None:
    raw = encode_ack(alert_id="abc", patient="p0001", by="Ana", at=1764100000, station="north-desk")
    assert orjson.loads(raw) == {"v": 1, "alert_id": "abc", "patient": "p0001", "by": "Ana",
                                 "at": 1764100000.0, "station": "north-desk"}


@pytest.mark.parametrize(("change", "reason"), [
    ({"v": 2}, "version"),
    ({"v": True}, "version"),
    ({"extra": 1}, "unknown fields: extra"),
    ({"alert_id": "has space"}, "alert_id"),
    ({"alert_id": 7}, "alert_id"),
    ({"patient": "p/1"}, "patient"),
    ({"station": ""}, "station"),
    ({"by": "   "}, "empty"),
    ({"by": "x" * 65}, "longer"),
    ({"by": "Ana\x00"}, "control"),
    ({"by": 5}, "string"),
    ({"at": "1764100000"}, "finite number"),
    ({"at": True}, "finite number"),
    ({"at": 1000.0}, "before 2000"),
])
def test_invalid_acks_are_rejected_with_a_reason(change: dict[str, object], reason: str) -> None:
    doc = {**GOOD, **change}
    with pytest.raises(ValueError, match=reason):
        decode_ack(orjson.dumps(doc))


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_missing_keys_are_rejected(missing: str) -> None:
    doc = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(AckDecodeError):
        decode_ack(orjson.dumps(doc))


def test_not_json_not_object_too_big_wrong_key_and_future() -> None:
    with pytest.raises(AckDecodeError, match="not JSON"):
        decode_ack(b"{nope")
    with pytest.raises(AckDecodeError, match="object"):
        decode_ack(b"[1, 2]")
    with pytest.raises(AckDecodeError, match="larger"):
        decode_ack(b" " * (MAX_ACK_BYTES + 1))
    with pytest.raises(AckDecodeError, match="key"):
        decode_ack(orjson.dumps(GOOD), key=b"p0002")
    with pytest.raises(AckDecodeError, match="future"):
        decode_ack(orjson.dumps(GOOD), now=float(GOOD["at"]) - 301)  # type: ignore[arg-type]
    assert decode_ack(orjson.dumps(GOOD), now=float(GOOD["at"]) - 299)  # type: ignore[arg-type]


@pytest.mark.parametrize("at", [float("nan"), float("inf")])
def test_non_finite_times_are_refused(at: float) -> None:
    with pytest.raises(AckDecodeError, match="finite"):
        Ack(alert_id="a", patient="p0001", by="Ana", at=at, station="s")


def test_encode_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(AckDecodeError):
        encode_ack(alert_id="a", patient="p0001", by="", at=1764100000.0, station="s")
