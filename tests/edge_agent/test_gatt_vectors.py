"""Every ``->`` test vector of HEALTH_PROFILES.md §1-§7, asserting every value its line names.

Each case carries the exact spec line it comes from; ``test_every_spec_vector_line_is_covered``
checks that no vector line of the spec was left out. The spec lives outside this repository, so
its vectors are kept in ``data/health_profiles_vectors.md`` (its headings and fenced blocks,
verbatim, written by ``data/extract_vectors.py``, which also checks the copy against the spec).
"""

from __future__ import annotations

import importlib.util
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent import gatt
from edge_agent.gatt import (
    AdjustReason,
    BodySensorLocation,
    CarbohydrateId,
    CgmFeatureFlags,
    CgmSensorStatus,
    GlucoseFeatureFlags,
    GlucoseHealth,
    GlucoseMeasurement,
    GlucoseSensorStatus,
    GlucoseTester,
    GlucoseUnit,
    Meal,
    MedicationId,
    MedicationUnit,
    RacpOpCode,
    RacpRequest,
    RacpResponse,
    RacpResponseCode,
    SampleLocation,
    SampleType,
    SensorContact,
    SFloat,
    SocpOpCode,
    SocpResponse,
    SocpResponseCode,
    VendorIdSource,
)

DATA = Path(__file__).resolve().parent / "data"
VECTORS_PATH = DATA / "health_profiles_vectors.md"
COVERED_LINES: set[str] = set()
NAN = pytest.approx(math.nan, nan_ok=True)
# §3: the CGM "time=" values are Session Start (2024-03-15 08:00:00 local, see the SST vector) + offset.
SESSION_START = datetime(2024, 3, 15, 8, 0)


def h(text: str) -> bytes:
    """Hex bytes as the spec writes them: ``"16 48 00"``."""
    return bytes.fromhex(text)


def case(line: str, *values: Any, id: str | None = None) -> Any:
    """A parametrize case taken from ``line`` of the spec."""
    COVERED_LINES.add(line)
    return pytest.param(*values, id=id or line[:40])


def assert_fields(obj: object, expected: dict[str, Any]) -> None:
    for name, want in expected.items():
        assert getattr(obj, name) == want, name


# ------------------------------------------------------------------------------------------------ §1


HR_CASES = [
    case("00 48 -> hr_bpm=72, contact=not supported", "00 48", 72, SensorContact.NOT_SUPPORTED, None, None, None),
    case(
        "16 48 00 04 02 03 -> hr_bpm=72, contact=detected, rr_raw=[1024, 770], rr_ms=[1000, 752]",
        "16 48 00 04 02 03",
        72,
        SensorContact.DETECTED,
        None,
        (1024, 770),
        [1000, 752],
    ),
    case(
        "1d 2c 01 e8 03 55 02 -> hr_bpm=300, contact=not detected, energy_kJ=1000, rr_raw=[597], rr_ms=[583]",
        "1d 2c 01 e8 03 55 02",
        300,
        SensorContact.NOT_DETECTED,
        1000,
        (597,),
        [583],
    ),
    case(
        "10 3c (RR flag, zero intervals) -> hr_bpm=60, contact=not supported, rr_raw=[], rr_ms=[]",
        "10 3c",
        60,
        SensorContact.NOT_SUPPORTED,
        None,
        (),
        [],
    ),
]


@pytest.mark.parametrize(("data", "bpm", "contact", "energy", "rr_raw", "rr_ms"), HR_CASES)
def test_heart_rate_measurement(
    data: str,
    bpm: int,
    contact: SensorContact,
    energy: int | None,
    rr_raw: tuple[int, ...] | None,
    rr_ms: list[int] | None,
) -> None:
    m = gatt.parse_heart_rate_measurement(h(data))
    assert m.bpm == bpm
    assert m.sensor_contact is contact
    assert m.energy_expended_kj == energy
    assert m.rr_intervals == rr_raw
    if rr_ms is not None:
        assert [round(s * 1000) for s in m.rr_intervals_s] == rr_ms
        assert m.rr_intervals_s == tuple(rr / 1024 for rr in rr_raw or ())
    assert bytes(m) == h(data)


BSL_LINE = "Body Sensor Location 01 -> Chest | Body Sensor Location 02 -> Wrist"


@pytest.mark.parametrize(
    ("data", "location"),
    [case(BSL_LINE, "01", BodySensorLocation.CHEST, id="chest"), case(BSL_LINE, "02", BodySensorLocation.WRIST)],
)
def test_body_sensor_location(data: str, location: BodySensorLocation) -> None:
    assert gatt.parse_body_sensor_location(h(data)) is location
    assert gatt.encode_body_sensor_location(location) == h(data)


# ------------------------------------------------------------------------------------------------ §2

GLUCOSE_CASES = [
    case(
        "02 01 00 e8 07 03 0f 08 1e 00 64 b0 11 -> seq=1, user_facing_time=2024-03-15 08:30:00, unit=kg/L, "
        "mg_dL=100, mmol_L=5.551, location=Finger, context_follows=False",
        "02 01 00 e8 07 03 0f 08 1e 00 64 b0 11",
        {
            "sequence_number": 1,
            "user_facing_time": datetime(2024, 3, 15, 8, 30),
            "unit": GlucoseUnit.KG_PER_L,
            "glucose_mg_dl": pytest.approx(100, abs=1e-9),
            "glucose_mmol_l": pytest.approx(5.551, abs=5e-4),
            "sample_location": SampleLocation.FINGER,
            "sample_type": SampleType.CAPILLARY_WHOLE_BLOOD,  # §2 prose: 11 = capillary WB at finger
            "context_follows": False,
        },
    ),
    case(
        "1f 2a 00 e7 07 0c 1f 17 32 00 0f 00 38 c0 12 01 00 -> seq=42, time_offset_min=15, "
        "user_facing_time=2024-01-01 00:05:00, unit=mol/L, mmol_L=5.6, mg_dL=100.89, location=Finger, "
        "status=0x0001 ['battery low'], context_follows=True",
        "1f 2a 00 e7 07 0c 1f 17 32 00 0f 00 38 c0 12 01 00",
        {
            "sequence_number": 42,
            "time_offset_min": 15,
            "user_facing_time": datetime(2024, 1, 1, 0, 5),
            "unit": GlucoseUnit.MOL_PER_L,
            "glucose_mmol_l": pytest.approx(5.6, abs=1e-12),
            "glucose_mg_dl": pytest.approx(100.89, abs=5e-3),
            "sample_location": SampleLocation.FINGER,
            "sample_type": SampleType.CAPILLARY_PLASMA,  # §2 prose: 12 = capillary plasma at finger
            "status_flags": GlucoseSensorStatus.DEVICE_BATTERY_LOW,
            "context_follows": True,
        },
    ),
    case(
        "0b 00 01 e8 07 06 01 0c 00 00 c4 ff fe 07 f1 20 00 -> seq=256, time_offset_min=-60, "
        "user_facing_time=2024-06-01 11:00:00, unit=kg/L, location=Not available, "
        "status=0x0020 ['result HIGHER than device can process'], context_follows=False",
        "0b 00 01 e8 07 06 01 0c 00 00 c4 ff fe 07 f1 20 00",
        {
            "sequence_number": 256,
            "time_offset_min": -60,
            "user_facing_time": datetime(2024, 6, 1, 11, 0),
            "unit": GlucoseUnit.KG_PER_L,
            "sample_location": SampleLocation.NOT_AVAILABLE,
            "sample_type": SampleType.CAPILLARY_WHOLE_BLOOD,  # §2 prose: f1 = capillary WB, location n/a
            "status_flags": GlucoseSensorStatus.RESULT_TOO_HIGH,
            "glucose_mg_dl": math.inf,  # §2 prose: 0x07FE is +INF, over range
            "context_follows": False,
        },
    ),
]


@pytest.mark.parametrize(("data", "expected"), GLUCOSE_CASES)
def test_glucose_measurement(data: str, expected: dict[str, Any]) -> None:
    m = gatt.parse_glucose_measurement(h(data))
    assert_fields(m, expected)
    assert bytes(m) == h(data)


def test_glucose_status_values_are_the_sig_bit_order() -> None:
    assert int(GlucoseSensorStatus.DEVICE_BATTERY_LOW) == 0x0001
    assert int(GlucoseSensorStatus.RESULT_TOO_HIGH) == 0x0020  # not swapped with bit 6 (Nordic's Android lib)


CONTEXT_CASES = [
    case("02 2a 00 01 -> seq=42, meal=Preprandial", "02 2a 00 01", {"sequence_number": 42, "meal": Meal.PREPRANDIAL}),
    case(
        "0f 2a 00 01 32 d0 02 51 08 07 3c -> seq=42, carb=[Breakfast, 0.05, 50 g], meal=Postprandial, tester=Self, "
        "health=No issues, exercise_s=1800, intensity_pct=60",
        "0f 2a 00 01 32 d0 02 51 08 07 3c",
        {
            "sequence_number": 42,
            "carbohydrate_id": CarbohydrateId.BREAKFAST,
            "carbohydrate_kg": 0.05,
            "carbohydrate_g": pytest.approx(50, abs=1e-12),
            "meal": Meal.POSTPRANDIAL,
            "tester": GlucoseTester.SELF,
            "health": GlucoseHealth.NO_HEALTH_ISSUES,
            "exercise_duration_s": 1800,
            "exercise_intensity_pct": 60,
        },
    ),
    case(
        "f0 2b 00 00 01 04 b0 41 f0 -> seq=43, ext_flags=0, medication=[Rapid acting insulin, 4e-05, L, 0.04 mL], "
        "hba1c_pct=6.5",
        "f0 2b 00 00 01 04 b0 41 f0",
        {
            "sequence_number": 43,
            "extended_flags": 0,
            "medication_id": MedicationId.RAPID_ACTING_INSULIN,
            "medication_unit": MedicationUnit.LITERS,
            "medication_ml": pytest.approx(0.04, abs=1e-15),
            "hba1c_pct": 6.5,
        },
    ),
]


@pytest.mark.parametrize(("data", "expected"), CONTEXT_CASES)
def test_glucose_context(data: str, expected: dict[str, Any]) -> None:
    c = gatt.parse_glucose_context(h(data))
    assert_fields(c, expected)
    assert bytes(c) == h(data)


def test_glucose_context_medication_value() -> None:
    c = gatt.parse_glucose_context(h("f0 2b 00 00 01 04 b0 41 f0"))
    assert c.medication is not None
    assert c.medication.value == 4e-05


FEATURE_LINE = "ff 07 (number of feature bits set) -> 11 | 00 00 -> features=[]"


@pytest.mark.parametrize(
    ("data", "features", "count"),
    [
        case(
            "03 04 -> features=[low battery detection, sensor malfunction detection, multiple bond]",
            "03 04",
            GlucoseFeatureFlags.LOW_BATTERY_DETECTION
            | GlucoseFeatureFlags.SENSOR_MALFUNCTION_DETECTION
            | GlucoseFeatureFlags.MULTIPLE_BOND,
            3,
        ),
        case(FEATURE_LINE, "ff 07", None, 11, id="all-11"),
        case(FEATURE_LINE, "00 00", GlucoseFeatureFlags(0), 0, id="none"),
    ],
)
def test_glucose_feature(data: str, features: GlucoseFeatureFlags | None, count: int) -> None:
    f = gatt.parse_glucose_feature(h(data))
    if features is not None:
        assert f.features == features
    assert len(list(f.features)) == count
    assert bytes(f) == h(data)


RACP_COUNT_ABORT = "number of records (all) -> 04 01 | abort -> 03 00"


@pytest.mark.parametrize(
    ("built", "data"),
    [
        case("report all -> 01 01", gatt.racp_report_all(), "01 01"),
        case("report seq >= 43 (last seen 42) -> 01 03 01 2b 00", gatt.racp_report_seq_at_least(43), "01 03 01 2b 00"),
        case("report seq >= 43 (last seen 42) -> 01 03 01 2b 00", gatt.racp_report_after(42), "01 03 01 2b 00"),
        case("report seq 10..20 -> 01 04 01 0a 00 14 00", gatt.racp_report_seq_range(10, 20), "01 04 01 0a 00 14 00"),
        case(
            "report user-facing-time >= 2024-01-01 -> 01 03 02 e8 07 01 01 00 00 00",
            gatt.racp_report_time_at_least(datetime(2024, 1, 1)),
            "01 03 02 e8 07 01 01 00 00 00",
        ),
        case(RACP_COUNT_ABORT, gatt.racp_report_number_of_records(), "04 01", id="count"),
        case(RACP_COUNT_ABORT, gatt.racp_abort(), "03 00", id="abort"),
        case(
            "CGM: report time-offset >= 1440 -> 01 03 01 a0 05",
            gatt.racp_report_time_offset_at_least(1440),
            "01 03 01 a0 05",
        ),
    ],
)
def test_racp_request(built: bytes, data: str) -> None:
    assert built == h(data)
    assert bytes(RacpRequest.from_bytes(built)) == built


def test_racp_cgm_request_with_e2e_crc_appends_crc() -> None:
    body = h("01 03 01 a0 05")
    crc = gatt.crc16_mcrf4xx(body).to_bytes(2, "little")
    assert gatt.racp_report_time_offset_at_least(1440, e2e_crc=True) == body + crc


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        case("rx 06 00 01 01 -> request=Report stored records, result=Success", "06 00 01 01",
             RacpResponse(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.SUCCESS)),
        case("rx 06 00 01 06 -> request=Report stored records, result=No records found", "06 00 01 06",
             RacpResponse(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.NO_RECORDS_FOUND)),
        case("rx 06 00 02 05 -> request=Delete stored records, result=Invalid Operand", "06 00 02 05",
             RacpResponse(RacpOpCode.DELETE_STORED_RECORDS, RacpResponseCode.INVALID_OPERAND)),
    ],
)  # fmt: skip
def test_racp_response_code(data: str, expected: RacpResponse) -> None:
    response = gatt.parse_racp_response(h(data))
    assert isinstance(response, RacpResponse)
    assert response.request_opcode is expected.request_opcode
    assert response.response_code is expected.response_code
    assert bytes(response) == h(data)


@pytest.mark.parametrize(("data", "count"), [case("rx 05 00 0a 00 -> count=10", "05 00 0a 00", 10)])
def test_racp_number_of_records(data: str, count: int) -> None:
    response = gatt.parse_racp_response(h(data))
    assert isinstance(response, gatt.RacpNumberOfRecords)
    assert response.count == count
    assert bytes(response) == h(data)


# ------------------------------------------------------------------------------------------------ §3

ALL_WARNINGS = CgmSensorStatus(0xFF0000)
CGM_CASES = [
    case(
        "06 00 78 00 05 00 -> mg_dL=120, time_offset_min=5, time=2024-03-15 08:05:00",
        "06 00 78 00 05 00",
        False,
        {"glucose_mg_dl": 120, "time_offset_min": 5},
        datetime(2024, 3, 15, 8, 5),
    ),
    case(
        "0a 03 bb f3 a0 05 f1 ff 5a 00 -> mg_dL=95.5, time_offset_min=1440, time=2024-03-16 08:00:00, "
        "trend_mgdl_min=-1.5, quality_pct=90",
        "0a 03 bb f3 a0 05 f1 ff 5a 00",
        False,
        {"glucose_mg_dl": 95.5, "time_offset_min": 1440, "trend_mg_dl_min": -1.5, "quality_pct": 90},
        datetime(2024, 3, 16, 8, 0),
    ),
    case(
        "0f e3 d2 e4 05 00 02 14 ff 02 f0 e5 f3 8e 3f -> mg_dL=12.34, time_offset_min=5, time=2024-03-15 08:05:00, "
        "status=[device battery low], cal_temp=[calibration recommended, temp too high], warning=[< patient low, "
        "> patient high, < hypo, > hyper, rate of decrease exceeded, rate of increase exceeded, "
        "< device can process, > device can process], trend_mgdl_min=0.2, quality_pct=99.7, "
        "crc=rx 0x3F8E calc 0x3F8E OK",
        "0f e3 d2 e4 05 00 02 14 ff 02 f0 e5 f3 8e 3f",
        True,
        {
            "glucose_mg_dl": 12.34,
            "time_offset_min": 5,
            "status": CgmSensorStatus.DEVICE_BATTERY_LOW,
            "cal_temp": CgmSensorStatus.CALIBRATION_RECOMMENDED | CgmSensorStatus.TEMPERATURE_TOO_HIGH,
            "warning": CgmSensorStatus.BELOW_PATIENT_LOW
            | CgmSensorStatus.ABOVE_PATIENT_HIGH
            | CgmSensorStatus.BELOW_HYPO
            | CgmSensorStatus.ABOVE_HYPER
            | CgmSensorStatus.RATE_OF_DECREASE_EXCEEDED
            | CgmSensorStatus.RATE_OF_INCREASE_EXCEEDED
            | CgmSensorStatus.BELOW_DEVICE_RANGE
            | CgmSensorStatus.ABOVE_DEVICE_RANGE,
            "trend_mg_dl_min": 0.2,
            "quality_pct": 99.7,
            "crc": 0x3F8E,
            "crc_ok": True,
        },
        datetime(2024, 3, 15, 8, 5),
    ),
    case(
        "08 00 0c 10 06 00 58 6f (corrupt CRC) -> mg_dL=120, time_offset_min=6, time=2024-03-15 08:06:00, "
        "crc=rx 0x6F58 calc 0x6F59 MISMATCH",
        "08 00 0c 10 06 00 58 6f",
        True,
        {"glucose_mg_dl": 120, "time_offset_min": 6, "crc": 0x6F58, "crc_ok": False},
        datetime(2024, 3, 15, 8, 6),
    ),
    case(
        "07 80 ff 07 0a 00 01 (status octet only, NaN glucose) -> mg_dL=NaN, time_offset_min=10, "
        "time=2024-03-15 08:10:00, status=[session stopped]",
        "07 80 ff 07 0a 00 01",
        False,
        {
            "glucose_mg_dl": NAN,
            "time_offset_min": 10,
            "status": CgmSensorStatus.SESSION_STOPPED,
            "cal_temp": None,
            "warning": None,
        },
        datetime(2024, 3, 15, 8, 10),
    ),
]


@pytest.mark.parametrize(("data", "e2e_crc", "expected", "time"), CGM_CASES)
def test_cgm_measurement(data: str, e2e_crc: bool, expected: dict[str, Any], time: datetime) -> None:
    (record,) = gatt.parse_cgm_measurements(h(data), e2e_crc=e2e_crc)
    assert_fields(record, expected)
    assert record.reading_time(SESSION_START) == time
    assert bytes(record) == h(data)


def test_cgm_corrupt_crc_computes_the_value_the_spec_names() -> None:
    (record,) = gatt.parse_cgm_measurements(h("08 00 0c 10 06 00 58 6f"), e2e_crc=True)
    assert record.with_crc().crc == 0x6F59


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        case(
            "two records in one notification -> [[120, 5], [120, 6]]",
            "06 00 0c 10 05 00 06 00 0c 10 06 00",
            [[120, 5], [120, 6]],
        )
    ],
)
def test_cgm_two_records_in_one_notification(data: str, expected: list[list[int]]) -> None:
    records = gatt.parse_cgm_measurements(h(data), e2e_crc=False)
    assert [[r.glucose_mg_dl, r.time_offset_min] for r in records] == expected
    assert gatt.encode_cgm_measurements(records) == h(data)


@pytest.mark.parametrize(
    ("data", "features", "crc_ok"),
    [
        case(
            "00 90 01 59 c4 5c -> features=[E2E-CRC, CGM trend information, CGM quality], "
            "location=Subcutaneous tissue (CGM), crc=OK",
            "00 90 01 59 c4 5c",
            CgmFeatureFlags.E2E_CRC | CgmFeatureFlags.TREND_INFORMATION | CgmFeatureFlags.QUALITY,
            True,
        ),
        case(
            "00 00 00 59 ff ff -> features=[], location=Subcutaneous tissue (CGM), "
            "crc=0xFFFF placeholder (E2E not supported)",
            "00 00 00 59 ff ff",
            CgmFeatureFlags(0),
            True,
        ),
    ],
)
def test_cgm_feature(data: str, features: CgmFeatureFlags, crc_ok: bool) -> None:
    f = gatt.parse_cgm_feature(h(data))
    assert f.features == features
    assert f.sample_location is SampleLocation.SUBCUTANEOUS_TISSUE
    assert f.sample_type is SampleType.INTERSTITIAL_FLUID
    assert f.crc_ok is crc_ok
    assert f.e2e_crc is (CgmFeatureFlags.E2E_CRC in features)
    if not f.e2e_crc:
        assert f.crc == 0xFFFF
    assert bytes(f) == h(data)


CGM_STATUS_EXPECTED = {
    "time_offset_min": 60,
    "status_flags": CgmSensorStatus.SESSION_STOPPED | CgmSensorStatus.CALIBRATION_REQUIRED | CgmSensorStatus.BELOW_HYPO,
}


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        case(
            "3c 00 01 08 04 -> time_offset_min=60, status=[session stopped], cal_temp=[calibration required], "
            "warning=[< hypo]",
            "3c 00 01 08 04",
            None,
        ),
        case(
            "3c 00 01 08 04 51 41 -> time_offset_min=60, status=[session stopped], cal_temp=[calibration required], "
            "warning=[< hypo], crc=OK",
            "3c 00 01 08 04 51 41",
            0x4151,
        ),
    ],
)
def test_cgm_status(data: str, crc: int | None) -> None:
    s = gatt.parse_cgm_status(h(data))
    assert_fields(s, CGM_STATUS_EXPECTED)
    assert s.status & 0xFF == CgmSensorStatus.SESSION_STOPPED
    assert s.status & 0xFF00 == CgmSensorStatus.CALIBRATION_REQUIRED
    assert s.status & 0xFF0000 == CgmSensorStatus.BELOW_HYPO
    assert s.crc == crc
    assert s.crc_ok
    assert bytes(s) == h(data)


@pytest.mark.parametrize(
    ("data", "local", "tz_min", "dst_min", "utc"),
    [
        case(
            "e8 07 03 0f 08 00 00 04 00 -> local=2024-03-15 08:00:00, tz_min=60, dst_min=0, utc=2024-03-15 07:00:00",
            "e8 07 03 0f 08 00 00 04 00",
            SESSION_START,
            60,
            0,
            datetime(2024, 3, 15, 7, 0, tzinfo=UTC),
        ),
        case(
            "e8 07 07 04 0c 1e 00 ec 04 -> local=2024-07-04 12:30:00, tz_min=-300, dst_min=60, utc=2024-07-04 16:30:00",
            "e8 07 07 04 0c 1e 00 ec 04",
            datetime(2024, 7, 4, 12, 30),
            -300,
            60,
            datetime(2024, 7, 4, 16, 30, tzinfo=UTC),
        ),
    ],
)
def test_session_start_time(data: str, local: datetime, tz_min: int, dst_min: int, utc: datetime) -> None:
    sst = gatt.parse_session_start_time(h(data))
    assert (sst.local_time, sst.tz_offset_min, sst.dst_offset_min, sst.utc) == (local, tz_min, dst_min, utc)
    assert bytes(sst) == h(data)


RUN_TIME_LINE = "a8 00 -> hours=168 | a8 00 87 91 -> hours=168, crc=OK"


@pytest.mark.parametrize(
    ("data", "crc"),
    [case(RUN_TIME_LINE, "a8 00", None, id="plain"), case(RUN_TIME_LINE, "a8 00 87 91", 0x9187, id="crc")],
)
def test_session_run_time(data: str, crc: int | None) -> None:
    rt = gatt.parse_session_run_time(h(data))
    assert rt.run_time_hours == 168
    assert rt.crc == crc
    assert rt.crc_ok
    assert bytes(rt) == h(data)


SOCP_LINE = "start session (no E2E) -> 1a | start session with E2E-CRC -> 1a 5c b0 | set comm interval 5 min -> 01 05"


@pytest.mark.parametrize(
    ("built", "data"),
    [
        case(SOCP_LINE, gatt.socp_start_session(), "1a", id="start"),
        case(SOCP_LINE, gatt.socp_start_session(e2e_crc=True), "1a 5c b0", id="start-e2e"),
        case(SOCP_LINE, gatt.socp_set_communication_interval(5), "01 05", id="interval"),
    ],
)
def test_socp_request(built: bytes, data: str) -> None:
    assert built == h(data)


@pytest.mark.parametrize(
    ("data", "request_opcode", "result"),
    [
        case("rx 1c 1a 01 -> request=Start Session, result=Success", "1c 1a 01",
             SocpOpCode.START_SESSION, SocpResponseCode.SUCCESS),
        case("rx 1c 01 05 -> request=Set Comm Interval, result=Parameter out of range", "1c 01 05",
             SocpOpCode.SET_COMMUNICATION_INTERVAL, SocpResponseCode.PARAMETER_OUT_OF_RANGE),
    ],
)  # fmt: skip
def test_socp_response_code(data: str, request_opcode: SocpOpCode, result: SocpResponseCode) -> None:
    response = gatt.parse_socp_response(h(data))
    assert isinstance(response, SocpResponse)
    assert response.request_opcode is request_opcode
    assert response.response_code is result
    assert bytes(response) == h(data)


@pytest.mark.parametrize(("data", "minutes"), [case("rx 03 05 -> minutes=5", "03 05", 5)])
def test_socp_communication_interval(data: str, minutes: int) -> None:
    response = gatt.parse_socp_response(h(data))
    assert response == gatt.SocpCommunicationInterval(minutes)
    assert bytes(response) == h(data)


# ------------------------------------------------------------------------------------------------ §4

SF1 = "72 00 (0x0072) -> 114 | d2 e4 (0xE4D2) -> 12.34 | 64 b0 (0xB064) -> 0.001 | 38 c0 (0xC038) -> 0.0056"
SF2 = "0c 10 (0x100C) -> 120 | f1 ff (0xFFF1) -> -1.5 | 00 f8 (0xF800) -> -204.8 | ff 07 (0x07FF NaN) -> nan"
SF3 = (
    "00 08 (0x0800 NRes) -> nan | fe 07 (0x07FE +INF) -> inf | 02 08 (0x0802 -INF) -> -inf | 01 08 (0x0801 RFU) -> nan"
)


@pytest.mark.parametrize(
    ("data", "raw", "value"),
    [
        case(SF1, "72 00", 0x0072, 114.0, id="114"),
        case(SF1, "d2 e4", 0xE4D2, 12.34, id="12.34"),
        case(SF1, "64 b0", 0xB064, 0.001, id="0.001"),
        case(SF1, "38 c0", 0xC038, 0.0056, id="0.0056"),
        case(SF2, "0c 10", 0x100C, 120.0, id="120"),
        case(SF2, "f1 ff", 0xFFF1, -1.5, id="-1.5"),
        case(SF2, "00 f8", 0xF800, -204.8, id="-204.8"),
        case(SF2, "ff 07", 0x07FF, math.nan, id="nan"),
        case(SF3, "00 08", 0x0800, math.nan, id="nres"),
        case(SF3, "fe 07", 0x07FE, math.inf, id="+inf"),
        case(SF3, "02 08", 0x0802, -math.inf, id="-inf"),
        case(SF3, "01 08", 0x0801, math.nan, id="rfu"),
    ],
)
def test_sfloat(data: str, raw: int, value: float) -> None:
    assert int.from_bytes(h(data), "little") == raw
    decoded = gatt.decode_sfloat(raw)
    assert decoded == pytest.approx(value, nan_ok=True, rel=0, abs=0)
    assert SFloat.from_bytes(h(data)).value == pytest.approx(value, nan_ok=True, rel=0, abs=0)
    assert gatt.decode_sfloat(gatt.encode_sfloat(decoded)) == pytest.approx(value, nan_ok=True, rel=0, abs=0)


FL1 = "6c 01 00 ff (0xFF00016C) -> 36.4 | ff ff ff 00 (0x00FFFFFF) -> -1 | 01 00 00 02 (0x02000001) -> 100"
FL2 = (
    "ff ff 7f 00 (0x007FFFFF NaN) -> nan | 00 00 80 00 (0x00800000 NRes) -> nan | fe ff 7f 00 (0x007FFFFE +INF) -> inf"
)
FL3 = "02 00 80 00 (0x00800002 -INF) -> -inf | 01 00 80 00 (0x00800001 RFU) -> nan"


@pytest.mark.parametrize(
    ("data", "raw", "value"),
    [
        case(FL1, "6c 01 00 ff", 0xFF00016C, 36.4, id="36.4"),
        case(FL1, "ff ff ff 00", 0x00FFFFFF, -1.0, id="-1"),
        case(FL1, "01 00 00 02", 0x02000001, 100.0, id="100"),
        case(FL2, "ff ff 7f 00", 0x007FFFFF, math.nan, id="nan"),
        case(FL2, "00 00 80 00", 0x00800000, math.nan, id="nres"),
        case(FL2, "fe ff 7f 00", 0x007FFFFE, math.inf, id="+inf"),
        case(FL3, "02 00 80 00", 0x00800002, -math.inf, id="-inf"),
        case(FL3, "01 00 80 00", 0x00800001, math.nan, id="rfu"),
    ],
)
def test_float(data: str, raw: int, value: float) -> None:
    assert int.from_bytes(h(data), "little") == raw
    decoded = gatt.decode_float(raw)
    assert decoded == pytest.approx(value, nan_ok=True, rel=0, abs=0)
    assert gatt.decode_float(gatt.encode_float(decoded)) == pytest.approx(value, nan_ok=True, rel=0, abs=0)


UNITS_LINE = "0.001 kg/L -> mg/dL -> 100 | 0.0056 mol/L -> mmol/L -> 5.6 | 5.6 mmol/L -> mg/dL (x18.016) -> 100.89"


@pytest.mark.parametrize(
    ("value", "unit", "attribute", "expected", "tolerance"),
    [
        case(UNITS_LINE, 0.001, GlucoseUnit.KG_PER_L, "glucose_mg_dl", 100, 0, id="kg/L"),
        case(UNITS_LINE, 0.0056, GlucoseUnit.MOL_PER_L, "glucose_mmol_l", 5.6, 0, id="mol/L"),
        case(UNITS_LINE, 0.0056, GlucoseUnit.MOL_PER_L, "glucose_mg_dl", 100.89, 5e-3, id="mmol/L->mg/dL"),
    ],
)
def test_glucose_unit_conversion(
    value: float, unit: GlucoseUnit, attribute: str, expected: float, tolerance: float
) -> None:
    m = GlucoseMeasurement(
        1,
        None,
        concentration=SFloat.from_value(value),
        unit=unit,
        sample_type=SampleType.CAPILLARY_PLASMA,
        sample_location=SampleLocation.FINGER,
    )
    assert getattr(m, attribute) == pytest.approx(expected, rel=0, abs=tolerance)


def test_mmol_to_mg_dl_uses_18_016() -> None:
    m = GlucoseMeasurement(
        1,
        None,
        concentration=SFloat.from_value(0.0056),
        unit=GlucoseUnit.MOL_PER_L,
        sample_type=SampleType.CAPILLARY_PLASMA,
        sample_location=SampleLocation.FINGER,
    )
    assert m.glucose_mg_dl == pytest.approx(5.6 * 18.016, rel=1e-15)


# ------------------------------------------------------------------------------------------------ §5

BAS_DIS_LINE = (
    "battery 64 -> 100 | battery 0f -> 15 | manufacturer 41 63 6d 65 -> Acme | firmware '1.2.0\\0' (strip NUL) -> 1.2.0"
)


@pytest.mark.parametrize(
    ("data", "percent"), [case(BAS_DIS_LINE, "64", 100, id="100"), case(BAS_DIS_LINE, "0f", 15, id="15")]
)
def test_battery_level(data: str, percent: int) -> None:
    assert gatt.parse_battery_level(h(data)) == percent
    assert bytes(gatt.BatteryLevel(percent)) == h(data)


@pytest.mark.parametrize(
    ("data", "text"),
    [case(BAS_DIS_LINE, h("41 63 6d 65"), "Acme", id="acme"), case(BAS_DIS_LINE, b"1.2.0\0", "1.2.0", id="fw")],
)
def test_dis_string(data: bytes, text: str) -> None:
    assert gatt.decode_dis_string(data) == text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        case(
            "PnP ID 01 59 00 01 00 10 01 -> vendor_id_source=Bluetooth SIG, vendor_id=0x0059, product_id=0x0001, "
            "product_version=0x0110",
            "01 59 00 01 00 10 01",
            {
                "vendor_id_source": VendorIdSource.BLUETOOTH_SIG,
                "vendor_id": 0x0059,
                "product_id": 0x0001,
                "product_version": 0x0110,
            },
        )
    ],
)
def test_pnp_id(data: str, expected: dict[str, Any]) -> None:
    pnp = gatt.parse_pnp_id(h(data))
    assert_fields(pnp, expected)
    assert bytes(pnp) == h(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        case(
            "Current Time e8 07 03 0f 08 1e 00 05 80 01 -> time=2024-03-15 08:30:00, day_of_week=5, fractions256=128, "
            "sub_s=0.5, adjust_reason=0x01",
            "e8 07 03 0f 08 1e 00 05 80 01",
            {
                "time": datetime(2024, 3, 15, 8, 30),
                "day_of_week": 5,
                "fractions256": 128,
                "sub_s": 0.5,
                "adjust_reason": AdjustReason.MANUAL_TIME_UPDATE,
            },
        )
    ],
)
def test_current_time(data: str, expected: dict[str, Any]) -> None:
    ct = gatt.parse_current_time(h(data))
    assert_fields(ct, expected)
    assert ct.adjust_reason == 0x01
    assert bytes(ct) == h(data)


# ------------------------------------------------------------------------------------------------ §6


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        case("'123456789' check value -> 0x6F91", b"123456789", 0x6F91),
        case(
            "3e 01 02 03 04 05 06 07 08 09 (CGMS 1.0.1 sec 3.11 example) -> 0x2F01",
            h("3e 01 02 03 04 05 06 07 08 09"),
            0x2F01,
        ),
        case(
            "13-byte CGM record (Nordic unit test) -> 0x3F8E",
            h("0f e3 d2 e4 05 00 02 14 ff 02 f0 e5 f3"),
            0x3F8E,
        ),
    ],
)
def test_e2e_crc(data: bytes, crc: int) -> None:
    assert gatt.crc16_mcrf4xx(data) == crc
    assert gatt.append_e2e_crc(data)[-2:] == crc.to_bytes(2, "little")  # sent LSB first
    assert gatt.verify_e2e_crc(gatt.append_e2e_crc(data)) == data


# ------------------------------------------------------------------------------------------------ §7


def _scripted_meter(request: bytes, stored_seqs: list[int]) -> list[int]:
    """The records a GLS meter holding ``stored_seqs`` reports for ``request``."""
    parsed = RacpRequest.from_bytes(request)
    assert parsed.opcode is RacpOpCode.REPORT_STORED_RECORDS
    if parsed.operator is gatt.RacpOperator.ALL_RECORDS:
        return stored_seqs
    assert parsed.operator is gatt.RacpOperator.GREATER_THAN_OR_EQUAL_TO
    assert parsed.filter_type is gatt.RacpFilterType.SEQUENCE_NUMBER
    (first,) = parsed.operand
    assert isinstance(first, int)
    return [seq for seq in stored_seqs if seq >= first]


@pytest.mark.parametrize(
    ("last_seq", "wrote", "seqs"),
    [
        case("last_seq=None: wrote [01 01] -> seqs [42, 43]", None, "01 01", [42, 43]),
        case("last_seq=42: wrote [01 03 01 2b 00] -> seqs [43]", 42, "01 03 01 2b 00", [43]),
        case("last_seq=43: wrote [01 03 01 2c 00] -> seqs []", 43, "01 03 01 2c 00", []),
    ],
)
def test_collector_sync_request(last_seq: int | None, wrote: str, seqs: list[int]) -> None:
    request = gatt.racp_report_after(last_seq)
    assert request == h(wrote)
    assert _scripted_meter(request, [42, 43]) == seqs


# ------------------------------------------------------------------------------------------------ coverage


def _spec_vector_lines(text: str) -> set[str]:
    lines, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and "->" in line:
            lines.add(line.strip())
    return lines


def test_every_spec_vector_line_is_covered() -> None:
    spec_lines = _spec_vector_lines(VECTORS_PATH.read_text(encoding="utf-8"))
    assert len(spec_lines) >= 56
    assert spec_lines - COVERED_LINES == set()
    assert COVERED_LINES - spec_lines == set()


def _extractor() -> Any:
    spec = importlib.util.spec_from_file_location("extract_vectors", DATA / "extract_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extractor_keeps_every_fenced_vector_and_no_prose() -> None:
    spec = (
        "# T\n## 1. A\nprose a -> b is not a vector\n```\n01 -> x=1\n02 -> x=2\n```\n"
        "more prose\n## 2. B\n```\nrx 03 -> y\n```\n"
    )
    kept = _extractor().extract(spec, name="T.md")
    assert _spec_vector_lines(kept) == {"01 -> x=1", "02 -> x=2", "rx 03 -> y"}
    assert "prose" not in kept
    assert "## 2. B" in kept


def test_kept_vectors_name_the_spec_they_came_from() -> None:
    header = VECTORS_PATH.read_text(encoding="utf-8").splitlines()[0]
    assert "HEALTH_PROFILES.md (sha256 " in header
