"""Hypothesis fuzzing of the inputs not covered elsewhere: acknowledgements (``rpm.alert-acks``),
readings records (``rpm.readings`` as the worker decodes them), dead-letter records, and the
redaction of reasons before they reach a log.

MQTT readings (tests/rpm_core/test_wire.py), the rules loader (tests/rpm_core/test_rules.py) and the
GATT codecs (tests/edge_agent/test_gatt_fuzz.py) have their own fuzz tests.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpm_core.acks import decode_ack, encode_ack
from rpm_core.deadletter import deadletter_record, redact_reason
from rpm_core.wire import WireError, is_valid_id, parse_readings_message
from stream.records import decode_records

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_764_100_000.0

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_like = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                                                            max_size=4), max_leaves=15)
ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)


def dumps(doc: Any) -> bytes:
    """JSON as a hostile sender might write it: stdlib (big integers, NaN and Infinity literals)."""
    return json.dumps(doc).encode()


# --- acknowledgements ---------------------------------------------------------------------------------

ack_docs = st.fixed_dictionaries(
    {},
    optional={"v": st.sampled_from([1, 1.0, True, "1", 2, None]), "alert_id": ids | scalars, "patient": ids | scalars,
              "by": st.text(max_size=80) | scalars, "at": st.floats(allow_nan=True) | scalars,
              "station": ids | scalars, "extra": scalars},
)


def _ack_or_none(value: bytes, *, now: float | None = None) -> Any:
    """The decoded ack, or None when it was refused with a ValueError that says why."""
    try:
        return decode_ack(value, now=now)
    except ValueError as exc:
        if not str(exc):
            raise AssertionError("a refusal without a reason") from exc
        return None


@FUZZ
@given(value=st.binary(max_size=600))
def test_fuzz_ack_bytes_decode_or_raise_value_error(value: bytes) -> None:
    ack = _ack_or_none(value)
    assert ack is None or (is_valid_id(ack.patient) and math.isfinite(ack.at))


@FUZZ
@given(doc=ack_docs)
def test_fuzz_ack_documents_decode_to_valid_acks_or_raise_value_error(doc: dict[str, Any]) -> None:
    ack = _ack_or_none(dumps(doc), now=NOW)
    if ack is None:
        return
    assert is_valid_id(ack.alert_id) and is_valid_id(ack.patient) and is_valid_id(ack.station)
    assert isinstance(ack.by, str) and ack.by.strip() and ack.by.isprintable()
    assert math.isfinite(ack.at) and ack.at <= NOW + 300


@FUZZ
@given(alert_id=ids, patient=ids, station=ids, by=st.text(min_size=1, max_size=40).filter(lambda t: t.strip()
       and t.isprintable()), at=st.floats(min_value=1e9, max_value=NOW))
def test_ack_round_trip(alert_id: str, patient: str, station: str, by: str, at: float) -> None:
    try:
        value = encode_ack(alert_id=alert_id, patient=patient, by=by, at=at, station=station)
    except ValueError:
        return  # a name the schema refuses (e.g. too long once normalised) is refused on both sides
    ack = decode_ack(value, key=patient.encode(), now=NOW)
    assert (ack.alert_id, ack.patient, ack.station, ack.at) == (alert_id, patient, station, at)


def test_an_ack_tombstone_is_a_decode_error() -> None:
    """A Kafka tombstone on rpm.alert-acks once stalled the worker's ack agent (found by the hostile test)."""
    with pytest.raises(ValueError, match="value"):
        decode_ack(None)  # type: ignore[arg-type]


# --- readings records (the worker's side of rpm.readings) ----------------------------------------------

group = st.fixed_dictionaries({}, optional={
    "device": ids | scalars, "source": st.sampled_from(["sim", "ble"]) | scalars,
    "metric": st.lists(st.sampled_from(["heart_rate", "glucose", "rr_interval", "x"]) | scalars, max_size=4) | scalars,
    "t": st.lists(st.floats(allow_nan=True) | scalars, max_size=4) | scalars,
    "value": st.lists(st.floats(allow_nan=True) | scalars, max_size=4) | scalars,
    "flags": st.lists(st.integers(-3, 9) | scalars, max_size=4) | scalars,
    "other": scalars,
})
records = st.fixed_dictionaries({}, optional={"v": st.sampled_from([1, 2, True]) | scalars, "patient": ids | scalars,
                                              "groups": st.lists(group | json_like, max_size=3) | scalars})


@FUZZ
@given(values=st.lists(st.binary(max_size=200) | records.map(dumps) | json_like.map(dumps) | st.none(), max_size=6))
def test_fuzz_records_are_decoded_or_rejected_never_raised(values: list[bytes]) -> None:
    decoded = decode_records(values)
    assert len(decoded.rejected) <= len(values)
    for g in decoded.groups:
        assert is_valid_id(g.patient) and len(g.t) == len(g.value) == len(g.flags) == len(g.metric) > 0
        assert bool((g.t == g.t).all() and (g.value == g.value).all()), "no NaN reaches a detector"
    for raw, reason in decoded.rejected:
        assert reason
        record = orjson.loads(deadletter_record(stage="worker", reason=reason, source="rpm.readings", payload=raw,
                                                received_at=NOW))
        assert record["size"] == len(raw or b"") and len(record["sha256"]) == 64


# --- what reaches a log ---------------------------------------------------------------------------------

CANARY = "ZQXJCANARY"
canary_text = st.text(alphabet="abcdefghij0123456789 _-", max_size=10).map(lambda t: f"{CANARY} {t}")  # never an id


@FUZZ
@given(where=st.sampled_from(["v", "field", "metric", "source", "t", "patient", "device", "id", "flags", "value"]),
       canary=canary_text)
def test_reasons_lose_what_the_sender_wrote_before_they_are_logged(where: str, canary: str) -> None:
    sample: list[Any] = ["heart_rate", NOW - 10, 70, 0]
    doc: dict[str, Any] = {"v": 1, "patient": "p1", "device": "d1", "source": "sim", "samples": [sample]}
    slot = {"metric": 0, "t": 1, "value": 2, "flags": 3}
    if where == "field":
        doc[canary] = 1
    elif where in slot:
        sample[slot[where]] = canary
    else:
        doc[where] = canary
    with pytest.raises(WireError) as info:
        parse_readings_message(dumps(doc), topic="rpm/v1/p/p1/readings", now=NOW)
    assert CANARY not in redact_reason(info.value.reason)


@FUZZ
@given(reason=st.text(max_size=400))
def test_redacted_reasons_are_printable_and_bounded(reason: str) -> None:
    text = redact_reason(reason)
    assert text.isprintable() and len(text) <= 300
