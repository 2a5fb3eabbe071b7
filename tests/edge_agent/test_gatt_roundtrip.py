"""Round trips: decode(encode(x)) == x for every codec, over hypothesis values and flag products."""

from __future__ import annotations

import binascii
import dataclasses
import itertools
import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import gatt
from edge_agent.errors import EdgeAgentError, GattDecodeError
from edge_agent.gatt import (
    AdjustReason,
    BatteryLevel,
    BodySensorLocation,
    CarbohydrateId,
    CgmAlert,
    CgmCalibration,
    CgmCalibrationStatus,
    CgmFeature,
    CgmFeatureFlags,
    CgmMeasurement,
    CgmSensorStatus,
    CgmStatus,
    CurrentTime,
    DayOfWeek,
    GlucoseContextFlags,
    GlucoseFeature,
    GlucoseFeatureFlags,
    GlucoseHealth,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseMeasurementFlags,
    GlucoseSensorStatus,
    GlucoseTester,
    GlucoseUnit,
    HeartRateMeasurement,
    LocalTimeInformation,
    Meal,
    MedicationId,
    MedicationUnit,
    PnpId,
    RacpFilterType,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpOperator,
    RacpRequest,
    RacpResponse,
    RacpResponseCode,
    SampleLocation,
    SampleType,
    SensorContact,
    SessionRunTime,
    SessionStartTime,
    SFloat,
    SocpAlertLevel,
    SocpCalibrationValue,
    SocpCommunicationInterval,
    SocpOpCode,
    SocpRequest,
    SocpResponse,
    SocpResponseCode,
    SystemId,
    VendorIdSource,
)

# Shared CI machines: per-example deadlines would only make these flaky.
relaxed = settings(deadline=None)


# ------------------------------------------------------------------------------------------------ strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
s16 = st.integers(-0x8000, 0x7FFF)
sfloats = st.builds(SFloat, u16)
# Whole seconds, Date Time's year range, and far enough from 9999 that offsets cannot overflow.
naive_times = st.datetimes(min_value=datetime(1583, 1, 1), max_value=datetime(9998, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)
sample_types = st.sampled_from(SampleType)
sample_locations = st.sampled_from(SampleLocation)
time_zones = st.none() | st.integers(-48, 56).map(lambda q: q * 15)
dst_offsets = st.sampled_from([None, 0, 30, 60, 120])
crcs = st.none() | u16


def octet(shift: int) -> st.SearchStrategy[CgmSensorStatus | None]:
    return st.none() | u8.map(lambda byte: CgmSensorStatus(byte << shift))


heart_rates = st.builds(
    HeartRateMeasurement,
    bpm=u16,
    sensor_contact=st.sampled_from(SensorContact),
    energy_expended_kj=st.none() | u16,
    rr_intervals=st.none() | st.lists(u16, max_size=9).map(tuple),
)


@st.composite
def glucose_measurements(draw: st.DrawFn) -> GlucoseMeasurement:
    concentration = draw(st.booleans())
    return GlucoseMeasurement(
        sequence_number=draw(u16),
        base_time=draw(st.none() | naive_times),
        time_offset_min=draw(st.none() | s16),
        concentration=draw(sfloats) if concentration else None,
        unit=draw(st.sampled_from(GlucoseUnit)),
        sample_type=draw(sample_types) if concentration else None,
        sample_location=draw(sample_locations) if concentration else None,
        status_flags=draw(st.none() | u16.map(GlucoseSensorStatus)),
        context_follows=draw(st.booleans()),
    )


def _pair(draw: st.DrawFn, first: st.SearchStrategy[Any], second: st.SearchStrategy[Any]) -> tuple[Any, Any]:
    return (draw(first), draw(second)) if draw(st.booleans()) else (None, None)


@st.composite
def glucose_contexts(draw: st.DrawFn) -> GlucoseMeasurementContext:
    carb_id, carb = _pair(draw, st.sampled_from(CarbohydrateId), sfloats)
    tester, health = _pair(draw, st.sampled_from(GlucoseTester), st.sampled_from(GlucoseHealth))
    duration, intensity = _pair(draw, u16, st.integers(0, 100))
    med_id, med = _pair(draw, st.sampled_from(MedicationId), sfloats)
    return GlucoseMeasurementContext(
        draw(u16),
        draw(st.none() | u8),
        carb_id,
        carb,
        draw(st.none() | st.sampled_from(Meal)),
        tester,
        health,
        duration,
        intensity,
        med_id,
        med,
        draw(st.sampled_from(MedicationUnit)),
        draw(st.none() | sfloats),
    )


cgm_measurements = st.builds(
    CgmMeasurement,
    glucose=sfloats,
    time_offset_min=u16,
    status=octet(0),
    cal_temp=octet(8),
    warning=octet(16),
    trend=st.none() | sfloats,
    quality=st.none() | sfloats,
    rfu_flags=st.sampled_from([0, 0x04, 0x08, 0x10, 0x1C]),
)
# Any CRC value, right or wrong: the record decodes either way and reports crc_ok.
cgm_measurements_with_crc = st.builds(dataclasses.replace, cgm_measurements, crc=u16)
calibrations = st.builds(
    CgmCalibration,
    glucose=sfloats,
    time_min=u16,
    sample_type=sample_types,
    sample_location=sample_locations,
    next_calibration_time_min=u16,
    record_number=u16,
    status=st.integers(0, 0xFF).map(CgmCalibrationStatus),
)


@st.composite
def racp_requests(draw: st.DrawFn) -> RacpRequest:
    opcode = draw(st.sampled_from([RacpOpCode(n) for n in (1, 2, 3, 4)]))
    if opcode is RacpOpCode.ABORT_OPERATION:
        return RacpRequest(opcode, RacpOperator.NULL)
    operator = draw(st.sampled_from([RacpOperator(n) for n in range(1, 7)]))
    count = {2: 1, 3: 1, 4: 2}.get(operator, 0)
    if not count:
        return RacpRequest(opcode, operator)
    filter_type = draw(st.sampled_from([RacpFilterType.SEQUENCE_NUMBER, RacpFilterType.USER_FACING_TIME]))
    values: list[Any] = draw(st.lists(naive_times if filter_type == 2 else u16, min_size=count, max_size=count))
    return RacpRequest(opcode, operator, filter_type, tuple(sorted(values)))


@st.composite
def socp_requests(draw: st.DrawFn) -> SocpRequest:
    opcode = draw(st.sampled_from(SocpOpCode))
    operands: dict[SocpOpCode, st.SearchStrategy[Any]] = {
        SocpOpCode.SET_COMMUNICATION_INTERVAL: u8,
        SocpOpCode.GET_CALIBRATION_VALUE: u16,
        SocpOpCode.SET_CALIBRATION_VALUE: calibrations,
        **{SocpOpCode(alert): sfloats for alert in CgmAlert},
    }
    responses = {SocpOpCode(alert + 2) for alert in CgmAlert} | {SocpOpCode(n) for n in (0x03, 0x06, 0x1C)}
    if opcode in responses:
        opcode = SocpOpCode.START_SESSION
    return SocpRequest(opcode, draw(operands.get(opcode, st.none())))


socp_indications = st.one_of(
    st.builds(SocpResponse, st.sampled_from(SocpOpCode) | u8, st.sampled_from(SocpResponseCode)),
    st.builds(SocpCommunicationInterval, u8),
    st.builds(SocpCalibrationValue, calibrations),
    st.builds(SocpAlertLevel, st.sampled_from(CgmAlert), sfloats),
)
racp_indications = st.one_of(
    st.builds(RacpNumberOfRecords, u16),
    st.builds(RacpResponse, st.sampled_from(RacpOpCode) | u8, st.sampled_from(RacpResponseCode)),
)


def _cgm_decode(data: bytes, *, e2e_crc: bool) -> CgmMeasurement:
    (record,) = gatt.parse_cgm_measurements(data, e2e_crc=e2e_crc)
    return record


CODECS: list[tuple[str, st.SearchStrategy[Any], Callable[[bytes], Any]]] = [
    ("SFloat", sfloats, SFloat.from_bytes),
    ("HeartRateMeasurement", heart_rates, gatt.parse_heart_rate_measurement),
    ("GlucoseMeasurement", glucose_measurements(), gatt.parse_glucose_measurement),
    ("GlucoseMeasurementContext", glucose_contexts(), gatt.parse_glucose_context),
    ("GlucoseFeature", st.builds(GlucoseFeature, u16.map(GlucoseFeatureFlags)), gatt.parse_glucose_feature),
    ("RacpRequest", racp_requests(), RacpRequest.from_bytes),
    ("RacpIndication", racp_indications, gatt.parse_racp_response),
    ("CgmMeasurement", cgm_measurements, partial(_cgm_decode, e2e_crc=False)),
    ("CgmMeasurement+CRC", cgm_measurements_with_crc, partial(_cgm_decode, e2e_crc=True)),
    (
        "CgmFeature",
        st.builds(CgmFeature, st.integers(0, 0xFFFFFF).map(CgmFeatureFlags), sample_types, sample_locations, u16),
        gatt.parse_cgm_feature,
    ),
    (
        "CgmStatus",
        st.builds(CgmStatus, u16, st.integers(0, 0xFFFFFF).map(CgmSensorStatus), crcs),
        gatt.parse_cgm_status,
    ),
    (
        "SessionStartTime",
        st.builds(SessionStartTime, st.none() | naive_times, time_zones, dst_offsets, crcs),
        gatt.parse_session_start_time,
    ),
    ("SessionRunTime", st.builds(SessionRunTime, u16, crcs), gatt.parse_session_run_time),
    ("CgmCalibration", calibrations, CgmCalibration.from_bytes),
    ("SocpRequest", socp_requests(), SocpRequest.from_bytes),
    ("SocpIndication", socp_indications, gatt.parse_socp_response),
    ("BatteryLevel", st.builds(BatteryLevel, st.integers(0, 100)), BatteryLevel.from_bytes),
    ("PnpId", st.builds(PnpId, st.sampled_from(VendorIdSource), u16, u16, u16), gatt.parse_pnp_id),
    (
        "SystemId",
        st.builds(SystemId, st.integers(0, (1 << 40) - 1), st.integers(0, (1 << 24) - 1)),
        gatt.parse_system_id,
    ),
    (
        "CurrentTime",
        st.builds(CurrentTime, st.none() | naive_times, st.sampled_from(DayOfWeek), u8, u8.map(AdjustReason)),
        gatt.parse_current_time,
    ),
    (
        "LocalTimeInformation",
        st.builds(LocalTimeInformation, time_zones, dst_offsets),
        LocalTimeInformation.from_bytes,
    ),
]


@pytest.mark.parametrize(("strategy", "decode"), [pytest.param(s, d, id=name) for name, s, d in CODECS])
@relaxed
@given(data=st.data())
def test_decode_of_encode_is_identity(
    strategy: st.SearchStrategy[Any], decode: Callable[[bytes], Any], data: st.DataObject
) -> None:
    value = data.draw(strategy)
    encoded = bytes(value)
    assert decode(encoded) == value
    assert bytes(decode(encoded)) == encoded


@relaxed
@given(st.lists(cgm_measurements, min_size=1, max_size=4))
def test_cgm_notification_with_several_records(records: list[CgmMeasurement]) -> None:
    assert gatt.parse_cgm_measurements(gatt.encode_cgm_measurements(records), e2e_crc=False) == tuple(records)


@relaxed
@given(st.lists(cgm_measurements.map(lambda r: r.with_crc()), min_size=1, max_size=4))
def test_cgm_notification_with_several_crc_records(records: list[CgmMeasurement]) -> None:
    decoded = gatt.parse_cgm_measurements(gatt.encode_cgm_measurements(records), e2e_crc=True)
    assert decoded == tuple(records)
    assert all(record.crc_ok for record in decoded)


@relaxed
@given(naive_times | st.none())
def test_date_time(value: datetime | None) -> None:
    assert gatt.decode_date_time(gatt.encode_date_time(value)) == value


@relaxed
@given(st.text().filter(lambda s: not s.endswith("\0")))
def test_dis_string(text: str) -> None:
    assert gatt.decode_dis_string(gatt.encode_dis_string(text)) == text
    assert gatt.decode_dis_string(gatt.encode_dis_string(text) + b"\0\0") == text


@pytest.mark.parametrize("location", list(BodySensorLocation))
def test_body_sensor_location(location: BodySensorLocation) -> None:
    assert gatt.parse_body_sensor_location(gatt.encode_body_sensor_location(location)) is location


# ------------------------------------------------------------------------------------------------ IEEE 11073


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_every_sfloat_code_survives_decode_encode_decode() -> None:
    for raw in range(0x10000):
        value = gatt.decode_sfloat(raw)
        assert _same(gatt.decode_sfloat(gatt.encode_sfloat(value)), value), hex(raw)


@relaxed
@given(st.integers(0, 0xFFFFFFFF))
def test_float_code_survives_decode_encode_decode(raw: int) -> None:
    # Every FLOAT code (|m| < 2^23, 10^-128..10^127) is a normal double whose repr() is m×10^e
    # itself, so re-encoding finds an exact representation.
    value = gatt.decode_float(raw)
    assert _same(gatt.decode_float(gatt.encode_float(value)), value)


def _split_sfloat(raw: int) -> tuple[int, int]:
    mantissa, exponent = raw & 0xFFF, raw >> 12
    return mantissa - (0x1000 if mantissa >= 0x800 else 0), exponent - (16 if exponent >= 8 else 0)


@relaxed
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-2045e7, max_value=2045e7))
def test_encode_sfloat_rounds_to_the_best_precision(value: float) -> None:
    raw = gatt.encode_sfloat(value)
    _mantissa, exponent = _split_sfloat(raw)
    decoded = gatt.decode_sfloat(raw)
    assert abs(decoded - value) <= 0.5 * 10.0**exponent * (1 + 1e-9)
    if decoded != value and exponent > -8:
        # Rounded: one exponent finer would have needed a mantissa the 12 bits cannot hold.
        finer = round(Decimal(repr(value)).scaleb(1 - exponent))
        limit = 2045 if exponent - 1 == 0 else 2047
        assert not -limit - (exponent != 1) <= finer <= limit


@pytest.mark.parametrize(
    ("value", "raw"),
    [(math.nan, 0x07FF), (math.inf, 0x07FE), (-math.inf, 0x0802), (120, 0x0078), (12.34, 0xE4D2), (0.0, 0)],
)
def test_encode_sfloat_special_and_exact_values(value: float, raw: int) -> None:
    assert gatt.encode_sfloat(value) == raw


@pytest.mark.parametrize("value", [2046, -2046, 2047, -2047, -2048])
def test_encode_sfloat_never_produces_a_special_code(value: int) -> None:
    raw = gatt.encode_sfloat(value)
    assert raw not in range(0x07FE, 0x0803)
    assert gatt.decode_sfloat(raw) == pytest.approx(value, abs=5)


@pytest.mark.parametrize("value", [2047e7 + 1e7, -2049e7, 1e300, -1e300])
def test_encode_sfloat_rejects_values_out_of_range(value: float) -> None:
    with pytest.raises(GattDecodeError):
        gatt.encode_sfloat(value)


def test_explicit_exponent() -> None:
    assert gatt.encode_sfloat(120, exponent=1) == 0x100C
    with pytest.raises(GattDecodeError):
        gatt.encode_sfloat(120, exponent=8)


# ------------------------------------------------------------------------------------------------ flag products


@pytest.mark.parametrize(
    ("bpm", "contact", "energy", "rr"),
    list(itertools.product([72, 300], SensorContact, [None, 1000], [None, (), (1024, 770)])),
)
def test_heart_rate_flag_product(
    bpm: int, contact: SensorContact, energy: int | None, rr: tuple[int, ...] | None
) -> None:
    m = HeartRateMeasurement(bpm, contact, energy, rr)
    encoded = bytes(m)
    flags = encoded[0]
    assert bool(flags & 0x01) is (bpm > 255)
    assert (
        flags & 0x06
        == {SensorContact.NOT_SUPPORTED: 0, SensorContact.NOT_DETECTED: 4, SensorContact.DETECTED: 6}[contact]
    )
    assert bool(flags & 0x08) is (energy is not None)
    assert bool(flags & 0x10) is (rr is not None)
    assert len(encoded) == 1 + (2 if bpm > 255 else 1) + (2 if energy is not None else 0) + 2 * len(rr or ())
    assert gatt.parse_heart_rate_measurement(encoded) == m


@pytest.mark.parametrize("flags", range(256))
def test_heart_rate_every_flags_byte(flags: int) -> None:
    """Reserved bits are ignored; 'detected' without 'supported' means 'not supported' (§1)."""
    payload = bytes([flags]) + bytes(2 if flags & 1 else 1) + bytes(2 if flags & 8 else 0) + b"\x00\x04"
    if not flags & 0x10:
        payload = payload[:-2]
    m = gatt.parse_heart_rate_measurement(payload)
    assert (m.energy_expended_kj is not None) is bool(flags & 0x08)
    assert m.rr_intervals == ((1024,) if flags & 0x10 else None)
    if not flags & 0x04:
        assert m.sensor_contact is SensorContact.NOT_SUPPORTED


@pytest.mark.parametrize(
    ("offset", "concentration", "unit", "status", "follows"),
    list(
        itertools.product(
            [None, -60], [False, True], GlucoseUnit, [None, GlucoseSensorStatus.RESULT_TOO_LOW], [False, True]
        )
    ),
)
def test_glucose_measurement_flag_product(
    offset: int | None, concentration: bool, unit: GlucoseUnit, status: GlucoseSensorStatus | None, follows: bool
) -> None:
    m = GlucoseMeasurement(
        7,
        datetime(2024, 3, 15, 8, 30),
        offset,
        SFloat(0xB064) if concentration else None,
        unit,
        SampleType.CAPILLARY_PLASMA if concentration else None,
        SampleLocation.FINGER if concentration else None,
        status,
        follows,
    )
    encoded = bytes(m)
    expected_flags = (
        (offset is not None) * GlucoseMeasurementFlags.TIME_OFFSET_PRESENT
        | concentration * GlucoseMeasurementFlags.CONCENTRATION_PRESENT
        | (unit is GlucoseUnit.MOL_PER_L) * GlucoseMeasurementFlags.UNIT_MOL_PER_L
        | (status is not None) * GlucoseMeasurementFlags.SENSOR_STATUS_PRESENT
        | follows * GlucoseMeasurementFlags.CONTEXT_FOLLOWS
    )
    assert encoded[0] == expected_flags
    assert len(encoded) == 10 + 2 * (offset is not None) + 3 * concentration + 2 * (status is not None)
    assert gatt.parse_glucose_measurement(encoded) == m


_CONTEXT_PARTS: dict[GlucoseContextFlags, tuple[dict[str, Any], int]] = {
    GlucoseContextFlags.CARBOHYDRATE_PRESENT: (
        {"carbohydrate_id": CarbohydrateId.LUNCH, "carbohydrate": SFloat(0xD032)},
        3,
    ),
    GlucoseContextFlags.MEAL_PRESENT: ({"meal": Meal.FASTING}, 1),
    GlucoseContextFlags.TESTER_HEALTH_PRESENT: (
        {"tester": GlucoseTester.LAB_TEST, "health": GlucoseHealth.UNDER_STRESS},
        1,
    ),
    GlucoseContextFlags.EXERCISE_PRESENT: ({"exercise_duration_s": 0xFFFF, "exercise_intensity_pct": 100}, 3),
    GlucoseContextFlags.MEDICATION_PRESENT: (
        {"medication_id": MedicationId.LONG_ACTING_INSULIN, "medication": SFloat(0xB004)},
        3,
    ),
    GlucoseContextFlags.MEDICATION_UNIT_LITERS: ({"medication_unit": MedicationUnit.LITERS}, 0),
    GlucoseContextFlags.HBA1C_PRESENT: ({"hba1c": SFloat(0xF041)}, 2),
    GlucoseContextFlags.EXTENDED_FLAGS_PRESENT: ({"extended_flags": 0}, 1),
}


@pytest.mark.parametrize("bits", list(itertools.product([False, True], repeat=8)))
def test_glucose_context_flag_product(bits: tuple[bool, ...]) -> None:
    fields: dict[str, Any] = {}
    expected_flags, expected_len = GlucoseContextFlags(0), 3
    for present, (flag, (values, size)) in zip(bits, _CONTEXT_PARTS.items(), strict=True):
        if present:
            fields |= values
            expected_flags |= flag
            expected_len += size
    c = GlucoseMeasurementContext(99, **fields)
    encoded = bytes(c)
    assert encoded[0] == expected_flags
    assert len(encoded) == expected_len
    if GlucoseContextFlags.EXTENDED_FLAGS_PRESENT in expected_flags:
        assert encoded[3] == 0  # §2: right after Seq
    assert gatt.parse_glucose_context(encoded) == c
    assert c.exercise_overrun is (GlucoseContextFlags.EXERCISE_PRESENT in expected_flags)


@pytest.mark.parametrize(
    ("status", "cal_temp", "warning", "trend", "quality", "crc"),
    list(itertools.product([False, True], repeat=6)),
)
def test_cgm_measurement_flag_product(
    status: bool, cal_temp: bool, warning: bool, trend: bool, quality: bool, crc: bool
) -> None:
    record = CgmMeasurement(
        SFloat(0x0078),
        1440,
        status=CgmSensorStatus.DEVICE_BATTERY_LOW if status else None,
        cal_temp=CgmSensorStatus.CALIBRATION_REQUIRED if cal_temp else None,
        warning=CgmSensorStatus.BELOW_HYPO if warning else None,
        trend=SFloat(0xFFF1) if trend else None,
        quality=SFloat(0x005A) if quality else None,
    )
    if crc:
        record = record.with_crc()
    encoded = bytes(record)
    assert encoded[0] == len(encoded) == 6 + status + cal_temp + warning + 2 * (trend + quality + crc)
    assert encoded[1] == 0x80 * status | 0x40 * cal_temp | 0x20 * warning | 0x01 * trend | 0x02 * quality
    # §3: Status -> Cal/Temp -> Warning on the wire, whichever of them are present.
    octets = [byte for present, byte in ((status, 0x02), (cal_temp, 0x08), (warning, 0x04)) if present]
    assert list(encoded[6 : 6 + len(octets)]) == octets
    assert gatt.parse_cgm_measurements(encoded, e2e_crc=crc) == (record,)
    assert record.crc_ok


@pytest.mark.parametrize("shift_name", ["status", "cal_temp", "warning"])
def test_cgm_single_octet_is_read_as_its_own_kind(shift_name: str) -> None:
    """The §3 trap: a record with only one octet present (Nordic/BLECgmSim decode these wrongly)."""
    flag = {"status": 0x80, "cal_temp": 0x40, "warning": 0x20}[shift_name]
    (record,) = gatt.parse_cgm_measurements(bytes([7, flag, 0x78, 0x00, 0x05, 0x00, 0x01]), e2e_crc=False)
    shift = {"status": 0, "cal_temp": 8, "warning": 16}[shift_name]
    assert getattr(record, shift_name) == CgmSensorStatus(1 << shift)
    assert record.status_flags == 1 << shift


# ------------------------------------------------------------------------------------------------ CRC


def _crc_bitwise(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def _reflect(value: int, bits: int) -> int:
    return int(f"{value:0{bits}b}"[::-1], 2)


def _crc_hqx_reflected(data: bytes) -> int:
    return _reflect(binascii.crc_hqx(bytes(_reflect(b, 8) for b in data), 0xFFFF), 16)


def test_crc_check_value() -> None:
    assert gatt.crc16_mcrf4xx(b"123456789") == _crc_bitwise(b"123456789") == _crc_hqx_reflected(b"123456789")
    assert gatt.crc16_mcrf4xx(b"123456789") == 0x6F91


@relaxed
@given(st.binary(max_size=64))
def test_crc_matches_two_reference_implementations(data: bytes) -> None:
    assert gatt.crc16_mcrf4xx(data) == _crc_bitwise(data) == _crc_hqx_reflected(data)


@relaxed
@given(st.binary(min_size=1, max_size=32))
def test_append_then_verify(data: bytes) -> None:
    assert gatt.verify_e2e_crc(gatt.append_e2e_crc(data)) == data


@relaxed
@given(st.binary(min_size=1, max_size=32), st.integers(0, 255), st.integers(1, 255))
def test_verify_rejects_any_single_byte_corruption(data: bytes, position: int, xor: int) -> None:
    framed = bytearray(gatt.append_e2e_crc(data))
    framed[position % len(framed)] ^= xor
    with pytest.raises(GattDecodeError) as excinfo:
        gatt.verify_e2e_crc(bytes(framed))
    assert excinfo.value.field == "e2e_crc"


@pytest.mark.parametrize(
    ("value", "crc_ok"),
    [
        (CgmFeature(CgmFeatureFlags.E2E_CRC, SampleType.INTERSTITIAL_FLUID, SampleLocation.SUBCUTANEOUS_TISSUE), False),
        (CgmFeature(CgmFeatureFlags(0), SampleType.INTERSTITIAL_FLUID, SampleLocation.SUBCUTANEOUS_TISSUE), True),
        (CgmStatus(60, CgmSensorStatus(0x040801), 0x1234), False),
        (SessionRunTime(168, 0x9186), False),
    ],
)
def test_crc_ok_and_with_crc(value: Any, crc_ok: bool) -> None:
    assert value.crc_ok is crc_ok
    assert value.with_crc().crc_ok


# ------------------------------------------------------------------------------------------------ misc API


def test_session_start_time_from_an_aware_local_time() -> None:
    now = datetime(2024, 7, 4, 12, 30, 15, 999, tzinfo=timezone(timedelta(hours=-4)))
    sst = SessionStartTime.from_local(now)
    assert sst.local_time == datetime(2024, 7, 4, 12, 30, 15)
    assert sst.tz_offset_min == -240
    assert sst.dst_offset_min is None  # a fixed-offset zone does not say how much of it is DST
    assert sst.utc is None
    with pytest.raises(GattDecodeError):
        SessionStartTime.from_local(datetime(2024, 7, 4, 12, 30))


def test_socp_builders_round_trip_through_socp_request() -> None:
    calibration = CgmCalibration(SFloat(0x0078), 60, SampleType.CAPILLARY_PLASMA, SampleLocation.FINGER, 720, 1)
    built = {
        gatt.socp_set_communication_interval(0): SocpRequest(SocpOpCode.SET_COMMUNICATION_INTERVAL, 0),
        gatt.socp_get_communication_interval(): SocpRequest(SocpOpCode.GET_COMMUNICATION_INTERVAL),
        gatt.socp_set_calibration(calibration): SocpRequest(SocpOpCode.SET_CALIBRATION_VALUE, calibration),
        gatt.socp_get_calibration(0xFFFF): SocpRequest(SocpOpCode.GET_CALIBRATION_VALUE, 0xFFFF),
        gatt.socp_set_alert_level(CgmAlert.HYPO, 70): SocpRequest(SocpOpCode.SET_HYPO_ALERT_LEVEL, SFloat(70)),
        gatt.socp_get_alert_level(CgmAlert.HYPER): SocpRequest(SocpOpCode.GET_HYPER_ALERT_LEVEL),
        gatt.socp_reset_device_specific_alert(): SocpRequest(SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT),
        gatt.socp_stop_session(): SocpRequest(SocpOpCode.STOP_SESSION),
    }
    for data, request in built.items():
        assert SocpRequest.from_bytes(data) == request
    assert gatt.socp_set_calibration(calibration)[5] == 0x12  # type low nibble, location high nibble


def test_socp_and_racp_builders_with_e2e_crc() -> None:
    for builder in (gatt.socp_stop_session, gatt.racp_report_all, gatt.racp_abort, gatt.racp_delete_all):
        framed = builder(e2e_crc=True)
        assert gatt.verify_e2e_crc(framed) == builder()
    framed = gatt.socp_set_communication_interval(5, e2e_crc=True)
    assert gatt.parse_socp_response(gatt.append_e2e_crc(b"\x03\x05"), e2e_crc=True) == SocpCommunicationInterval(5)
    assert gatt.verify_e2e_crc(framed) == b"\x01\x05"


def test_racp_report_after_covers_the_end_of_the_sequence_space() -> None:
    assert gatt.racp_report_after(0xFFFE) == bytes.fromhex("01 03 01 ff ff")
    assert gatt.racp_report_after(0xFFFF) == gatt.racp_report_all()
    assert gatt.racp_report_time_offset_range(10, 20) == bytes.fromhex("01 04 01 0a 00 14 00")


def test_racp_response_echoes_unknown_opcode() -> None:
    response = gatt.parse_racp_response(bytes.fromhex("06 00 07 02"))
    assert response == RacpResponse(7, RacpResponseCode.OP_CODE_NOT_SUPPORTED)


def test_errors_tree() -> None:
    from edge_agent import errors

    assert issubclass(GattDecodeError, EdgeAgentError)
    assert issubclass(GattDecodeError, ValueError)
    for name in ("DeviceNotFoundError", "PairingError", "OutboxError", "OutboxFullError", "PublishError"):
        assert issubclass(getattr(errors, name), EdgeAgentError)
    assert issubclass(errors.OutboxFullError, errors.OutboxError)
    assert errors.DeviceNotFoundError("C0:FF:EE:00:00:01").address == "C0:FF:EE:00:00:01"
    error = GattDecodeError("size", "too small", "CgmMeasurement")
    assert str(error) == "CgmMeasurement.size: too small"


def test_errors_pickle() -> None:
    import pickle

    from edge_agent import errors

    for error in (
        GattDecodeError("size", "too small", "CgmMeasurement"),
        errors.DeviceNotFoundError("C0:FF:EE:00:00:01"),
        errors.PairingError("C0:FF:EE:00:00:01", "passkey rejected"),
        errors.OutboxFullError(10_000),
    ):
        clone = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
        assert type(clone) is type(error)
        assert str(clone) == str(error)


def test_uuid16() -> None:
    from edge_agent import const

    assert const.uuid16(0x180D) == "0000180d-0000-1000-8000-00805f9b34fb"
    assert const.HEART_RATE_MEASUREMENT_UUID == "00002a37-0000-1000-8000-00805f9b34fb"
    assert const.CGM_SPECIFIC_OPS_CONTROL_POINT_UUID16 == 0x2AAC
    with pytest.raises(ValueError, match="16-bit"):
        const.uuid16(0x10000)
