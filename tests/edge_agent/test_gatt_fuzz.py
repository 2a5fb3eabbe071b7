"""Hostile input: every parser returns a valid object or raises GattDecodeError naming a field.

Never another exception type, never an object that does not re-encode to what it decoded from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import gatt
from edge_agent.errors import EdgeAgentError, GattDecodeError

# Shared CI machines: per-example deadlines would only make these flaky.
relaxed = settings(deadline=None)


def _crc_then(value: Any) -> bytes:
    return gatt.append_e2e_crc(bytes(value))


# name -> (parse, re-encode a decoded value, re-encoding reproduces the input bytes exactly)
PARSERS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes], bool]] = {
    "heart_rate": (gatt.parse_heart_rate_measurement, bytes, False),
    "body_sensor_location": (gatt.parse_body_sensor_location, gatt.encode_body_sensor_location, True),
    "glucose": (gatt.parse_glucose_measurement, bytes, False),
    "glucose_context": (gatt.parse_glucose_context, bytes, False),
    "glucose_feature": (gatt.parse_glucose_feature, bytes, True),
    "racp_request": (gatt.RacpRequest.from_bytes, bytes, False),
    "racp_response": (gatt.parse_racp_response, bytes, True),
    "racp_response_e2e": (partial(gatt.parse_racp_response, e2e_crc=True), _crc_then, True),
    "cgm": (partial(gatt.parse_cgm_measurements, e2e_crc=False), gatt.encode_cgm_measurements, True),
    "cgm_e2e": (partial(gatt.parse_cgm_measurements, e2e_crc=True), gatt.encode_cgm_measurements, True),
    "cgm_feature": (gatt.parse_cgm_feature, bytes, True),
    "cgm_status": (gatt.parse_cgm_status, bytes, True),
    "session_start_time": (gatt.parse_session_start_time, bytes, False),
    "session_run_time": (gatt.parse_session_run_time, bytes, True),
    "cgm_calibration": (gatt.CgmCalibration.from_bytes, bytes, True),
    "socp_request": (gatt.SocpRequest.from_bytes, bytes, True),
    "socp_response": (gatt.parse_socp_response, bytes, True),
    "socp_response_e2e": (partial(gatt.parse_socp_response, e2e_crc=True), _crc_then, True),
    "battery": (gatt.BatteryLevel.from_bytes, bytes, True),
    "pnp_id": (gatt.parse_pnp_id, bytes, True),
    "system_id": (gatt.parse_system_id, bytes, True),
    "current_time": (gatt.parse_current_time, bytes, False),
    "local_time_information": (gatt.LocalTimeInformation.from_bytes, bytes, True),
    "date_time": (gatt.decode_date_time, gatt.encode_date_time, False),
    "sfloat": (gatt.SFloat.from_bytes, bytes, True),
    "dis_string": (gatt.decode_dis_string, gatt.encode_dis_string, False),
    "e2e_crc": (gatt.verify_e2e_crc, gatt.append_e2e_crc, True),
}


def decode_or_error(name: str, data: bytes) -> Any:
    """Decode with parser ``name``; on success check the value re-encodes consistently."""
    parse, encode, exact = PARSERS[name]
    try:
        value = parse(data)
    except GattDecodeError as exc:
        assert_names_a_field(exc)
        return None
    again = encode(value)
    assert parse(again) == value
    if exact:
        assert again == data
    return value


def assert_names_a_field(exc: GattDecodeError) -> None:
    assert isinstance(exc, EdgeAgentError)
    assert isinstance(exc, ValueError)
    assert exc.field
    assert " " not in exc.field
    assert exc.field in str(exc)


@pytest.mark.parametrize("name", list(PARSERS))
@relaxed
@given(data=st.binary(max_size=40))
def test_random_bytes(name: str, data: bytes) -> None:
    decode_or_error(name, data)


@pytest.mark.parametrize("name", list(PARSERS))
@relaxed
@given(data=st.binary(max_size=24))
def test_random_bytes_behind_every_first_byte(name: str, data: bytes) -> None:
    """Random tails behind each flags/opcode value reach the deeper branches."""
    for first in range(256):
        decode_or_error(name, bytes([first]) + data)


@relaxed
@given(records=st.lists(st.binary(min_size=5, max_size=14), min_size=1, max_size=4), e2e=st.booleans())
def test_cgm_with_consistent_size_bytes(records: list[bytes], e2e: bool) -> None:
    """Size bytes that match the record lengths get past the framing into the record decoder."""
    data = b"".join(bytes([len(r) + 1]) + r for r in records)
    decode_or_error("cgm_e2e" if e2e else "cgm", data)


# ------------------------------------------------------------------------------------------------ vectors

# (parser, vector from HEALTH_PROFILES.md, truncation points that are themselves valid payloads)
VECTORS: list[tuple[str, str, frozenset[int]]] = [
    ("heart_rate", "00 48", frozenset()),
    ("heart_rate", "16 48 00 04 02 03", frozenset({2, 4})),  # fewer RR-intervals
    ("heart_rate", "1d 2c 01 e8 03 55 02", frozenset({5})),
    ("heart_rate", "10 3c", frozenset()),
    ("body_sensor_location", "01", frozenset()),
    ("body_sensor_location", "02", frozenset()),
    ("glucose", "02 01 00 e8 07 03 0f 08 1e 00 64 b0 11", frozenset()),
    ("glucose", "1f 2a 00 e7 07 0c 1f 17 32 00 0f 00 38 c0 12 01 00", frozenset()),
    ("glucose", "0b 00 01 e8 07 06 01 0c 00 00 c4 ff fe 07 f1 20 00", frozenset()),
    ("glucose_context", "02 2a 00 01", frozenset()),
    ("glucose_context", "0f 2a 00 01 32 d0 02 51 08 07 3c", frozenset()),
    ("glucose_context", "f0 2b 00 00 01 04 b0 41 f0", frozenset()),
    ("glucose_feature", "03 04", frozenset()),
    ("glucose_feature", "ff 07", frozenset()),
    ("glucose_feature", "00 00", frozenset()),
    ("racp_request", "01 01", frozenset()),
    ("racp_request", "01 03 01 2b 00", frozenset()),
    ("racp_request", "01 04 01 0a 00 14 00", frozenset()),
    ("racp_request", "01 03 02 e8 07 01 01 00 00 00", frozenset()),
    ("racp_request", "04 01", frozenset()),
    ("racp_request", "03 00", frozenset()),
    ("racp_request", "01 03 01 a0 05", frozenset()),
    ("racp_response", "05 00 0a 00", frozenset()),
    ("racp_response", "06 00 01 01", frozenset()),
    ("racp_response", "06 00 01 06", frozenset()),
    ("racp_response", "06 00 02 05", frozenset()),
    ("cgm", "06 00 78 00 05 00", frozenset()),
    ("cgm", "06 00 0c 10 05 00 06 00 0c 10 06 00", frozenset({6})),  # the first record alone
    ("cgm", "0a 03 bb f3 a0 05 f1 ff 5a 00", frozenset()),
    ("cgm_e2e", "0f e3 d2 e4 05 00 02 14 ff 02 f0 e5 f3 8e 3f", frozenset()),
    ("cgm_e2e", "08 00 0c 10 06 00 58 6f", frozenset()),
    ("cgm", "07 80 ff 07 0a 00 01", frozenset()),
    ("cgm_feature", "00 90 01 59 c4 5c", frozenset()),
    ("cgm_feature", "00 00 00 59 ff ff", frozenset()),
    ("cgm_status", "3c 00 01 08 04", frozenset()),
    ("cgm_status", "3c 00 01 08 04 51 41", frozenset({5})),  # the CRC is optional by length
    ("session_start_time", "e8 07 03 0f 08 00 00 04 00", frozenset()),
    ("session_start_time", "e8 07 07 04 0c 1e 00 ec 04", frozenset()),
    ("session_run_time", "a8 00", frozenset()),
    ("session_run_time", "a8 00 87 91", frozenset({2})),  # the CRC is optional by length
    ("socp_request", "1a", frozenset()),
    ("socp_request", "01 05", frozenset()),
    ("e2e_crc", "1a 5c b0", frozenset()),
    ("socp_response", "1c 1a 01", frozenset()),
    ("socp_response", "1c 01 05", frozenset()),
    ("socp_response", "03 05", frozenset()),
    ("sfloat", "72 00", frozenset()),
    ("sfloat", "d2 e4", frozenset()),
    ("sfloat", "ff 07", frozenset()),
    ("battery", "64", frozenset()),
    ("battery", "0f", frozenset()),
    ("pnp_id", "01 59 00 01 00 10 01", frozenset()),
    ("current_time", "e8 07 03 0f 08 1e 00 05 80 01", frozenset()),
]
VECTOR_PARAMS = [pytest.param(name, bytes.fromhex(data), valid, id=f"{name}:{data}") for name, data, valid in VECTORS]


@pytest.mark.parametrize(("name", "data", "valid_cuts"), VECTOR_PARAMS)
def test_every_vector_decodes(name: str, data: bytes, valid_cuts: frozenset[int]) -> None:
    assert decode_or_error(name, data) is not None


@pytest.mark.parametrize(("name", "data", "valid_cuts"), VECTOR_PARAMS)
def test_truncation_at_every_length_names_a_field(name: str, data: bytes, valid_cuts: frozenset[int]) -> None:
    parse = PARSERS[name][0]
    for cut in range(len(data)):
        if cut in valid_cuts:
            assert decode_or_error(name, data[:cut]) is not None
            continue
        with pytest.raises(GattDecodeError) as excinfo:
            parse(data[:cut])
        assert_names_a_field(excinfo.value)


@pytest.mark.parametrize(("name", "data", "valid_cuts"), [p for p in VECTOR_PARAMS if p.values[0] != "e2e_crc"])
@pytest.mark.parametrize("extra", [b"\x00", b"\xff"])
def test_one_byte_too_many_names_a_field(name: str, data: bytes, valid_cuts: frozenset[int], extra: bytes) -> None:
    with pytest.raises(GattDecodeError) as excinfo:
        PARSERS[name][0](data + extra)
    assert_names_a_field(excinfo.value)


@relaxed
@given(
    vector=st.sampled_from(VECTORS),
    edits=st.lists(st.tuples(st.integers(0, 31), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 32),
)
def test_mutated_vectors(
    vector: tuple[str, str, frozenset[int]], edits: list[tuple[int, int]], cut: int | None
) -> None:
    name, text, _valid = vector
    data = bytearray.fromhex(text)
    for position, value in edits:
        data[position % len(data)] = value
    decode_or_error(name, bytes(data[:cut]))


# ------------------------------------------------------------------------------------------------ named errors


@pytest.mark.parametrize(
    ("name", "data", "field"),
    [
        ("heart_rate", "", "flags"),
        ("heart_rate", "10 48 00", "rr_intervals"),  # odd number of RR bytes
        ("heart_rate", "01 48", "bpm"),  # u16 format, one byte
        ("heart_rate", "08 48 e8", "energy_expended_kj"),
        ("body_sensor_location", "07", "location"),
        ("glucose", "02 01 00 e8 07 0d 0f 08 1e 00 64 b0 11", "base_time.month"),  # month 13
        ("glucose", "02 01 00 e8 07 02 1e 08 1e 00 64 b0 11", "base_time.day"),  # 30 February
        ("glucose", "02 01 00 e8 07 03 0f 18 1e 00 64 b0 11", "base_time.hours"),
        ("glucose", "02 01 00 e8 03 03 0f 08 1e 00 64 b0 11", "base_time.year"),  # year 1000
        ("glucose", "02 01 00 e8 07 03 0f 08 1e 00 64 b0 10", "sample_type"),  # type 0 is reserved
        ("glucose", "02 01 00 e8 07 03 0f 08 1e 00 64 b0 61", "sample_location"),  # location 6 is reserved
        ("glucose", "02 01 00 e8 07 03 0f 08 1e 00", "concentration"),  # b1 set, value missing
        ("glucose", "00 01 00 e8 07 03 0f 08 1e 00 64", "length"),  # over-long for the flags
        ("glucose", "01 00 00 0f 27 0c 1f 17 3b 3b ff 7f", "time_offset_min"),  # 9999-12-31 + offset overflows
        ("glucose_context", "08 2a 00 08 07 65", "exercise_intensity_pct"),  # 101 %
        ("glucose_context", "04 2a 00 50", "tester"),  # tester 0 is reserved
        ("glucose_context", "80 2a 00", "extended_flags"),
        ("glucose_context", "01 2a 00 08 32 d0", "carbohydrate_id"),  # id 8 is reserved
        ("cgm", "", "size"),
        ("cgm", "05 00 78 00 05", "size"),  # below the minimum of 6
        ("cgm", "07 00 78 00 05 00", "size"),  # beyond the buffer
        ("cgm", "06 01 78 00 05 00", "size"),  # trend flag, no room for it
        ("cgm", "08 00 78 00 05 00 00 00", "size"),  # 2 bytes the flags do not explain
        ("cgm_e2e", "06 00 78 00 05 00", "size"),  # no room for the CRC
        ("cgm_status", "3c 00 01 08 04 51", "crc"),
        ("session_start_time", "e8 07 03 0f 08 00 00 40 00", "tz_offset_min"),  # +64 quarter hours
        ("session_start_time", "e8 07 03 0f 08 00 00 04 03", "dst_offset_min"),  # DST code 3
        ("racp_request", "05 00 0a 00", "opcode"),  # a response is not a request
        ("racp_request", "03 01", "operator"),  # abort takes the null operator
        ("racp_request", "01 04 01 14 00 0a 00", "operand"),  # range high..low
        ("racp_request", "01 03 03 01 00", "filter_type"),
        ("racp_request", "01 03 02 00 00 00 00 00 00 00", "operand"),  # unknown time as a filter
        ("racp_response", "06 01 01 01", "operator"),
        ("racp_response", "06 00 01 0a", "response_code"),
        ("racp_response", "07 00", "opcode"),
        ("racp_response_e2e", "05 00 0a 00 00 00", "e2e_crc"),
        ("socp_response", "1c 1a 06", "response_code"),
        ("socp_response", "1a", "opcode"),
        ("socp_request", "03 05", "opcode"),  # a response is not a request
        ("battery", "65", "percent"),  # 101 %
        ("current_time", "e8 07 03 0f 08 1e 00 08 80 01", "day_of_week"),
        ("pnp_id", "03 59 00 01 00 10 01", "vendor_id_source"),
        ("dis_string", "ff fe", "string"),
        ("e2e_crc", "1a 5c", "e2e_crc"),
    ],
)
def test_specific_errors_name_the_field(name: str, data: str, field: str) -> None:
    with pytest.raises(GattDecodeError) as excinfo:
        PARSERS[name][0](bytes.fromhex(data))
    assert excinfo.value.field == field
    assert_names_a_field(excinfo.value)


@pytest.mark.parametrize("parse", [gatt.parse_heart_rate_measurement, gatt.parse_glucose_measurement])
@pytest.mark.parametrize("data", ["not bytes", 5, None, [1, 2]])
def test_non_bytes_input(parse: Callable[[Any], Any], data: Any) -> None:
    with pytest.raises(GattDecodeError) as excinfo:
        parse(data)
    assert excinfo.value.field == "data"


def test_bytearray_and_memoryview_are_accepted() -> None:
    data = bytes.fromhex("16 48 00 04 02 03")
    assert gatt.parse_heart_rate_measurement(bytearray(data)) == gatt.parse_heart_rate_measurement(memoryview(data))


def test_decode_sfloat_rejects_codes_out_of_range() -> None:
    for raw in (-1, 0x10000):
        with pytest.raises(GattDecodeError):
            gatt.decode_sfloat(raw)
    with pytest.raises(GattDecodeError):
        gatt.decode_float(1 << 32)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: gatt.HeartRateMeasurement(70_000), "bpm"),
        (lambda: gatt.GlucoseMeasurement(1, None, concentration=gatt.SFloat(0x0078)), "concentration"),
        (lambda: gatt.GlucoseMeasurementContext(1, carbohydrate=gatt.SFloat(1)), "carbohydrate_id"),
        (lambda: gatt.CgmMeasurement(gatt.SFloat(0), 0, status=gatt.CgmSensorStatus.BELOW_HYPO), "status"),
        (lambda: gatt.SessionStartTime(None, 7, 0), "tz_offset_min"),
        (lambda: gatt.SessionStartTime(None, 0, 45), "dst_offset_min"),
        (lambda: gatt.RacpRequest(gatt.RacpOpCode.REPORT_STORED_RECORDS, gatt.RacpOperator.ALL_RECORDS, None, (1,)),
         "operand"),
        (lambda: gatt.SocpRequest(gatt.SocpOpCode.SET_COMMUNICATION_INTERVAL, 256), "operand"),
        (lambda: gatt.SocpRequest(gatt.SocpOpCode.START_SESSION, 1), "operand"),
        (lambda: gatt.BatteryLevel(101), "percent"),
    ],
)  # fmt: skip
def test_construction_range_checks(build: Callable[[], object], field: str) -> None:
    with pytest.raises(GattDecodeError) as excinfo:
        build()
    assert excinfo.value.field == field


def test_frozen_and_slotted() -> None:
    record = gatt.parse_cgm_measurements(bytes.fromhex("06 00 78 00 05 00"), e2e_crc=False)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.time_offset_min = 6  # type: ignore[misc]
    assert not hasattr(record, "__dict__")
