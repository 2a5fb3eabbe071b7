"""Virtual peripherals without D-Bus: spec vectors (ble/HEALTH_PROFILES.md) and RACP behaviour."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime

import pytest

from edge_agent import const
from edge_agent.gatt import (
    CgmMeasurement,
    CgmSensorStatus,
    GlucoseMeasurement,
    GlucoseSensorStatus,
    GlucoseUnit,
    HeartRateMeasurement,
    Meal,
    RacpOperator,
    RacpResponseCode,
    SampleLocation,
    SampleType,
    SensorContact,
    crc16_mcrf4xx,
)
from simulators.ble_devices import (
    AttError,
    CgmRecord,
    ContinuousGlucoseMonitor,
    GlucoseMeter,
    GlucoseRecord,
    HeartRateStrap,
    RacpRejected,
    VirtualPeripheral,
    racp_select,
)

CGM_FEATURE = const.CGM_FEATURE_UUID
CGM_MEASUREMENT = const.CGM_MEASUREMENT_UUID
CGM_SESSION_RUN_TIME = const.CGM_SESSION_RUN_TIME_UUID
CGM_SESSION_START_TIME = const.CGM_SESSION_START_TIME_UUID
CGM_SPECIFIC_OPS_CONTROL_POINT = const.CGM_SPECIFIC_OPS_CONTROL_POINT_UUID
CGM_STATUS = const.CGM_STATUS_UUID
GLUCOSE_FEATURE = const.GLUCOSE_FEATURE_UUID
GLUCOSE_MEASUREMENT = const.GLUCOSE_MEASUREMENT_UUID
GLUCOSE_MEASUREMENT_CONTEXT = const.GLUCOSE_MEASUREMENT_CONTEXT_UUID
HEART_RATE_CONTROL_POINT = const.HEART_RATE_CONTROL_POINT_UUID
HEART_RATE_MEASUREMENT = const.HEART_RATE_MEASUREMENT_UUID
RECORD_ACCESS_CONTROL_POINT = const.RECORD_ACCESS_CONTROL_POINT_UUID
T0 = datetime(2024, 3, 15, 8, 30)


class RecordingLink:
    """A PeripheralLink that records what the peripheral sends; the RACP indication ends a job."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.indications: asyncio.Queue[bytes] = asyncio.Queue()
        self._changed = asyncio.Condition()

    async def notify(self, peripheral: VirtualPeripheral, uuid: str, value: bytes) -> bool:
        self.sent.append((uuid, value))
        if uuid in (RECORD_ACCESS_CONTROL_POINT, CGM_SPECIFIC_OPS_CONTROL_POINT):
            self.indications.put_nowait(value)
        async with self._changed:
            self._changed.notify_all()
        return True

    async def wait_sent(self, uuid: str, count: int) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: len(self.values(uuid)) >= count)

    async def disconnect(self, peripheral: VirtualPeripheral) -> None:
        peripheral.link_lost("remote")

    def values(self, uuid: str) -> list[bytes]:
        return [v for u, v in self.sent if u == uuid]


def connect(device: VirtualPeripheral, *subscriptions: str) -> RecordingLink:
    link = RecordingLink()
    device.attach(link)
    device.link_connected()
    for uuid in subscriptions:
        device.subscription_changed(uuid, True)
    return link


async def request(device: VirtualPeripheral, link: RecordingLink, uuid: str, data: bytes) -> bytes:
    await device.write(uuid, data, True)
    async with asyncio.timeout(5):
        return await link.indications.get()


# -- Heart rate (§1)


async def test_strap_notifies_its_samples_with_its_own_energy_expended() -> None:
    samples = [HeartRateMeasurement(300, SensorContact.NOT_DETECTED, None, (597,))]
    strap = HeartRateStrap(samples=samples, energy=True, interval_s=0.01)
    strap.energy_kj = 1000
    link = connect(strap, HEART_RATE_MEASUREMENT)
    await link.wait_sent(HEART_RATE_MEASUREMENT, 2)
    strap.detach()
    # §1 vector "1d 2c 01 e8 03 55 02", then the energy grew by one step
    assert link.values(HEART_RATE_MEASUREMENT)[:2] == [
        bytes.fromhex("1d 2c 01 e8 03 55 02"),
        bytes.fromhex("1d 2c 01 e9 03 55 02"),
    ]


async def test_strap_stops_when_unsubscribed() -> None:
    strap = HeartRateStrap(interval_s=0.01)
    link = connect(strap, HEART_RATE_MEASUREMENT)
    await link.wait_sent(HEART_RATE_MEASUREMENT, 1)
    strap.subscription_changed(HEART_RATE_MEASUREMENT, False)
    assert not strap.task_running("measure")


async def test_heart_rate_control_point_resets_energy_and_rejects_other_values() -> None:
    strap = HeartRateStrap(energy=True)
    strap.energy_kj = 500
    await strap.write(HEART_RATE_CONTROL_POINT, b"\x01", True)
    assert strap.energy_kj == 0
    with pytest.raises(AttError) as excinfo:
        await strap.write(HEART_RATE_CONTROL_POINT, b"\x02", True)
    assert excinfo.value.code == 0x80


# -- Glucose (§2)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (GlucoseRecord(1, T0, 100), "02 01 00 e8 07 03 0f 08 1e 00 64 b0 11"),
        (
            GlucoseRecord(
                42,
                datetime(2023, 12, 31, 23, 50),
                100.89,
                GlucoseUnit.MOL_PER_L,
                time_offset_min=15,
                sample_type=SampleType.CAPILLARY_PLASMA,
                status=GlucoseSensorStatus.DEVICE_BATTERY_LOW,
                meal=Meal.PREPRANDIAL,
            ),
            "1f 2a 00 e7 07 0c 1f 17 32 00 0f 00 38 c0 12 01 00",
        ),
        (
            GlucoseRecord(
                256,
                datetime(2024, 6, 1, 12),
                math.inf,
                time_offset_min=-60,
                sample_location=SampleLocation.NOT_AVAILABLE,
                status=GlucoseSensorStatus(0x0020),
            ),
            "0b 00 01 e8 07 06 01 0c 00 00 c4 ff fe 07 f1 20 00",
        ),
    ],
)
def test_glucose_measurement_matches_spec_vectors(record: GlucoseRecord, expected: str) -> None:
    value = bytes(record.measurement())
    assert value == bytes.fromhex(expected)
    assert GlucoseMeasurement.from_bytes(value).sequence_number == record.sequence_number


def test_glucose_context_carries_the_meal() -> None:
    context = GlucoseRecord(42, T0, meal=Meal.PREPRANDIAL).context()
    assert context is not None
    assert bytes(context) == bytes.fromhex("02 2a 00 01")
    assert GlucoseRecord(42, T0).context() is None


@pytest.mark.parametrize(
    ("operator", "operand", "expected"),
    [
        (RacpOperator.ALL_RECORDS, b"", [1, 2, 3, 4]),
        (RacpOperator.GREATER_THAN_OR_EQUAL_TO, bytes.fromhex("01 03 00"), [3, 4]),
        (RacpOperator.LESS_THAN_OR_EQUAL_TO, bytes.fromhex("01 02 00"), [1, 2]),
        (RacpOperator.WITHIN_RANGE_OF, bytes.fromhex("01 02 00 03 00"), [2, 3]),
        (RacpOperator.FIRST_RECORD, b"", [1]),
        (RacpOperator.LAST_RECORD, b"", [4]),
        (RacpOperator.GREATER_THAN_OR_EQUAL_TO, bytes.fromhex("01 09 00"), []),
    ],
)
def test_racp_select(operator: RacpOperator, operand: bytes, expected: list[int]) -> None:
    assert racp_select([4, 2, 3, 1], lambda r: r, operator, operand) == expected


@pytest.mark.parametrize(
    ("operator", "operand", "code"),
    [
        (RacpOperator.NULL, b"", RacpResponseCode.INVALID_OPERATOR),
        (0x07, b"", RacpResponseCode.OPERATOR_NOT_SUPPORTED),
        (RacpOperator.GREATER_THAN_OR_EQUAL_TO, bytes.fromhex("01 03"), RacpResponseCode.INVALID_OPERAND),
        (
            RacpOperator.GREATER_THAN_OR_EQUAL_TO,
            bytes.fromhex("02 e8 07 01 01 00 00 00"),
            RacpResponseCode.OPERAND_NOT_SUPPORTED,
        ),
        (RacpOperator.WITHIN_RANGE_OF, bytes.fromhex("01 05 00 01 00"), RacpResponseCode.INVALID_OPERAND),
        (RacpOperator.ALL_RECORDS, b"\x01", RacpResponseCode.INVALID_OPERAND),
    ],
)
def test_racp_select_rejects(operator: int, operand: bytes, code: RacpResponseCode) -> None:
    with pytest.raises(RacpRejected) as excinfo:
        racp_select([1], lambda r: r, operator, operand)
    assert excinfo.value.code is code


def three_records() -> list[GlucoseRecord]:
    return [GlucoseRecord(seq, T0, 90 + seq, meal=Meal.FASTING if seq == 2 else None) for seq in (1, 2, 3)]


async def test_glucose_report_all_then_newer_only() -> None:
    meter = GlucoseMeter(records=three_records())
    link = connect(meter, GLUCOSE_MEASUREMENT, GLUCOSE_MEASUREMENT_CONTEXT, RECORD_ACCESS_CONTROL_POINT)

    assert await request(meter, link, RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("01 01")) == bytes.fromhex(
        "06 00 01 01"
    )
    assert link.values(GLUCOSE_MEASUREMENT) == [bytes(r.measurement()) for r in meter.records]
    assert link.values(GLUCOSE_MEASUREMENT_CONTEXT) == [bytes.fromhex("02 02 00 03")]

    link.sent.clear()
    response = await request(meter, link, RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("01 03 01 03 00"))
    assert response == bytes.fromhex("06 00 01 01")
    assert link.values(GLUCOSE_MEASUREMENT) == [bytes(meter.records[2].measurement())]

    response = await request(meter, link, RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("01 03 01 04 00"))
    assert response == bytes.fromhex("06 00 01 06")


async def test_glucose_count_delete_and_unsupported_opcode() -> None:
    meter = GlucoseMeter(records=three_records())
    link = connect(meter, GLUCOSE_MEASUREMENT, RECORD_ACCESS_CONTROL_POINT)
    racp = RECORD_ACCESS_CONTROL_POINT
    assert await request(meter, link, racp, bytes.fromhex("04 01")) == bytes.fromhex("05 00 03 00")
    assert await request(meter, link, racp, bytes.fromhex("02 02 01 02 00")) == bytes.fromhex("06 00 02 01")
    assert [r.sequence_number for r in meter.records] == [3]
    assert await request(meter, link, racp, bytes.fromhex("09 01")) == bytes.fromhex("06 00 09 02")
    assert await request(meter, link, racp, bytes.fromhex("01 03 01 2b")) == bytes.fromhex("06 00 01 05")


async def test_glucose_racp_needs_indications_and_one_procedure_at_a_time() -> None:
    meter = GlucoseMeter(records=three_records(), record_interval_s=60.0)
    link = connect(meter, GLUCOSE_MEASUREMENT)
    with pytest.raises(AttError) as excinfo:
        await meter.write(RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("01 01"), True)
    assert excinfo.value.code == 0x81

    meter.subscription_changed(RECORD_ACCESS_CONTROL_POINT, True)
    await meter.write(RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("01 01"), True)
    with pytest.raises(AttError) as excinfo:
        await meter.write(RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("04 01"), True)
    assert excinfo.value.code == 0x80

    await link.wait_sent(GLUCOSE_MEASUREMENT, 1)  # the paced transfer is under way: abort it
    assert await request(meter, link, RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("03 00")) == bytes.fromhex(
        "06 00 03 01"
    )
    assert len(link.values(GLUCOSE_MEASUREMENT)) == 1
    meter.detach()


async def test_glucose_feature_read() -> None:
    assert await GlucoseMeter().read(GLUCOSE_FEATURE) == bytes.fromhex("03 04")


# -- CGM (§3, §6)


@pytest.mark.parametrize(
    ("record", "e2e", "expected"),
    [
        (CgmRecord(5, 120), False, "06 00 78 00 05 00"),
        (CgmRecord(1440, 95.5, trend=-1.5, quality=90), False, "0a 03 bb f3 a0 05 f1 ff 5a 00"),
        (
            CgmRecord(5, 12.34, trend=0.2, quality=99.7, status=CgmSensorStatus(0x02 | 0x14 << 8 | 0xFF << 16)),
            True,
            "0f e3 d2 e4 05 00 02 14 ff 02 f0 e5 f3 8e 3f",
        ),
        (CgmRecord(10, math.nan, status=CgmSensorStatus.SESSION_STOPPED), False, "07 80 ff 07 0a 00 01"),
    ],
)
def test_cgm_measurement_matches_spec_vectors(record: CgmRecord, e2e: bool, expected: str) -> None:
    value = bytes(record.measurement(e2e_crc=e2e))
    assert value == bytes.fromhex(expected)
    assert CgmMeasurement.from_bytes(value, e2e_crc=e2e).crc_ok


async def test_cgm_readable_characteristics_match_spec_vectors() -> None:
    cgm = ContinuousGlucoseMonitor(
        e2e_crc=True,
        run_time_hours=168,
        session_running=False,
        history=[CgmRecord(60, 100, status=CgmSensorStatus.CALIBRATION_REQUIRED | CgmSensorStatus.BELOW_HYPO)],
    )
    assert await cgm.read(CGM_FEATURE) == bytes.fromhex("00 90 01 59 c4 5c")
    assert await cgm.read(CGM_SESSION_RUN_TIME) == bytes.fromhex("a8 00 87 91")
    assert await cgm.read(CGM_STATUS) == bytes.fromhex("3c 00 01 08 04 51 41")
    plain = ContinuousGlucoseMonitor()
    assert await plain.read(CGM_SESSION_START_TIME) == bytes.fromhex("e8 07 03 0f 08 00 00 04 00")


async def test_cgm_session_start_time_write_subtracts_elapsed_time() -> None:
    cgm = ContinuousGlucoseMonitor(history=[CgmRecord(90, 100)])
    await cgm.write(CGM_SESSION_START_TIME, bytes.fromhex("e8 07 07 04 0c 1e 00 ec 04"), True)
    assert cgm.session_start == datetime(2024, 7, 4, 11, 0)
    assert (cgm.session_start_time.tz_offset_min, cgm.session_start_time.dst_offset_min) == (-300, 60)


async def test_cgm_backfill_by_time_offset_with_e2e_crc() -> None:
    cgm = ContinuousGlucoseMonitor(e2e_crc=True, history=[CgmRecord(m, 100 + m) for m in range(0, 61, 5)])
    link = connect(cgm, CGM_MEASUREMENT, RECORD_ACCESS_CONTROL_POINT)
    with pytest.raises(AttError) as excinfo:
        await cgm.write(RECORD_ACCESS_CONTROL_POINT, bytes.fromhex("01 03 01 1e 00"), True)
    assert excinfo.value.code == 0x81  # a CRC is required, and these two bytes are not one
    request_ = bytes.fromhex("01 03 01 1e 00")
    with_crc = request_ + crc16_mcrf4xx(request_).to_bytes(2, "little")
    assert await request(cgm, link, RECORD_ACCESS_CONTROL_POINT, with_crc) == bytes.fromhex("06 00 01 01")
    offsets = [int.from_bytes(v[4:6], "little") for v in link.values(CGM_MEASUREMENT)]
    assert offsets == [30, 35, 40, 45, 50, 55, 60]
    cgm.detach()


async def test_cgm_socp_start_stop_and_interval() -> None:
    cgm = ContinuousGlucoseMonitor(interval_s=3600)
    link = connect(cgm, CGM_SPECIFIC_OPS_CONTROL_POINT)
    socp = CGM_SPECIFIC_OPS_CONTROL_POINT
    assert await request(cgm, link, socp, bytes.fromhex("1b")) == bytes.fromhex("1c 1b 01")
    assert not cgm.session_running
    assert await request(cgm, link, socp, bytes.fromhex("1a")) == bytes.fromhex("1c 1a 01")
    assert await request(cgm, link, socp, bytes.fromhex("01 0a")) == bytes.fromhex("1c 01 01")
    assert await request(cgm, link, socp, bytes.fromhex("02")) == bytes.fromhex("03 0a")
    assert await request(cgm, link, socp, bytes.fromhex("04 00")) == bytes.fromhex("1c 04 02")
    cgm.detach()
