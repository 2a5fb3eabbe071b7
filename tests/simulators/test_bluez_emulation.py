"""bleak's real BlueZ backend against the emulation: scanning, connecting, pairing, GATT I/O.

Each test starts its own private ``dbus-daemon`` and fake ``bluetoothd`` (``EmulatedBluez``) and
stops both by PID when it ends. No test sleeps to synchronise: they wait for callbacks, queues or
peripheral state, each bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakGATTProtocolError
from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from edge_agent import const
from edge_agent.gatt import (
    CgmMeasurement,
    GlucoseMeasurement,
    HeartRateMeasurement,
    Meal,
    SensorContact,
    racp_report_all,
    racp_report_number_of_records,
    racp_report_seq_at_least,
    racp_report_time_offset_at_least,
)
from simulators.ble_devices import (
    CgmRecord,
    ContinuousGlucoseMonitor,
    GlucoseMeter,
    GlucoseRecord,
    HeartRateStrap,
    VirtualPeripheral,
)
from simulators.bluez import EmulatedBluez, EmulationError

pytestmark = pytest.mark.usefixtures("bluez_prerequisites")

TEST_TIMEOUT_S = 30
SCAN_TIMEOUT_S = 10
T0 = datetime(2024, 3, 15, 8, 30)


@contextlib.asynccontextmanager
async def emulation(*devices: VirtualPeripheral) -> AsyncIterator[EmulatedBluez]:
    """An emulation with ``devices`` on the air; the body is bounded by ``TEST_TIMEOUT_S``."""
    async with EmulatedBluez() as bz:
        for device in devices:
            await bz.add_device(device)
        async with asyncio.timeout(TEST_TIMEOUT_S):
            yield bz


async def discover(device: VirtualPeripheral) -> BLEDevice:
    found = await BleakScanner.find_device_by_address(device.address, timeout=SCAN_TIMEOUT_S)
    assert found is not None, f"{device!r} not found"
    return found


class Collector:
    """bleak notify callbacks → per-characteristic queues (the callback does one thing)."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[bytes]] = {}

    def __call__(self, uuid: str) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
        queue = self.queues.setdefault(uuid, asyncio.Queue())
        return lambda _char, data: queue.put_nowait(bytes(data))

    async def get(self, uuid: str) -> bytes:
        return await self.queues[uuid].get()

    def drain(self, uuid: str) -> list[bytes]:
        queue = self.queues[uuid]
        return [queue.get_nowait() for _ in range(queue.qsize())]


async def subscribe(client: BleakClient, collector: Collector, *uuids: str) -> None:
    for uuid in uuids:
        await client.start_notify(uuid, collector(uuid))


# -- scanning


async def test_scan_reports_names_rssi_uuids_and_advertisement_data() -> None:
    strap, meter, cgm = HeartRateStrap(), GlucoseMeter(), ContinuousGlucoseMonitor()
    async with emulation(strap, meter, cgm) as bz:
        seen: dict[str, AdvertisementData] = {}
        changed = asyncio.Event()

        def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
            seen[device.address] = adv
            changed.set()

        async def wait_until(predicate: Callable[[], bool]) -> None:
            while not predicate():
                changed.clear()
                await changed.wait()

        async with BleakScanner(on_advertisement):
            await wait_until(lambda: len(seen) == 3)
            await bz.set_rssi(strap, -40)
            await wait_until(lambda: seen[strap.address].rssi == -40)

    assert seen[strap.address].local_name == "RPM HR Strap"
    assert seen[strap.address].service_uuids == [const.HEART_RATE_SERVICE_UUID]
    assert seen[strap.address].manufacturer_data == {0x0059: b"\x01\x02"}
    assert seen[meter.address].local_name == "RPM Glucose"
    assert seen[meter.address].rssi == -66
    assert seen[meter.address].service_uuids == [const.GLUCOSE_SERVICE_UUID]
    assert seen[cgm.address].service_uuids == [const.CGM_SERVICE_UUID]
    assert seen[cgm.address].service_data == {const.CGM_SERVICE_UUID: b"\x01"}


async def test_service_uuid_filter_hides_other_devices() -> None:
    meter, strap = GlucoseMeter(), HeartRateStrap()
    # The meter advertises first in every interval, so it would be seen before the strap if the
    # filter let it through.
    async with emulation(meter, strap):
        seen: list[str] = []

        def is_strap(device: BLEDevice, _adv: AdvertisementData) -> bool:
            seen.append(device.address)
            return device.address == strap.address

        found = await BleakScanner.find_device_by_filter(
            is_strap, timeout=SCAN_TIMEOUT_S, service_uuids=[const.HEART_RATE_SERVICE_UUID]
        )
        assert found is not None
        assert meter.address not in seen
        by_address = await BleakScanner.find_device_by_address(
            meter.address, timeout=SCAN_TIMEOUT_S, service_uuids=[const.GLUCOSE_SERVICE_UUID]
        )
        assert by_address is not None
        assert by_address.name == "RPM Glucose"


# -- heart rate


async def test_heart_rate_notifications_carry_the_bytes_the_strap_sent() -> None:
    samples = [
        HeartRateMeasurement(72),  # §1 "00 48"
        HeartRateMeasurement(72, SensorContact.DETECTED, None, (1024, 770)),  # "16 48 00 04 02 03"
        HeartRateMeasurement(60, rr_intervals=()),  # "10 3c"
    ]
    strap = HeartRateStrap(samples=samples, interval_s=0.05, battery_level=87)
    async with emulation(strap):
        collector = Collector()
        async with BleakClient(await discover(strap)) as client:
            await subscribe(client, collector, const.HEART_RATE_MEASUREMENT_UUID)
            received = [await collector.get(const.HEART_RATE_MEASUREMENT_UUID) for _ in range(4)]
            await strap.wait_for(lambda _: len(strap.sent) >= 4)
            assert await client.read_gatt_char(const.BODY_SENSOR_LOCATION_UUID) == b"\x01"
            assert await client.read_gatt_char(const.MANUFACTURER_NAME_UUID) == b"Acme Medical"
            assert await client.read_gatt_char(const.BATTERY_LEVEL_UUID) == bytes([87])
            await client.write_gatt_char(const.HEART_RATE_CONTROL_POINT_UUID, b"\x01", response=True)
            with pytest.raises(BleakGATTProtocolError) as excinfo:
                await client.write_gatt_char(const.HEART_RATE_CONTROL_POINT_UUID, b"\x02", response=True)
            assert excinfo.value.code == const.ATT_ERROR_HRCP_VALUE_NOT_SUPPORTED

    assert received == [bytes.fromhex(v) for v in ("00 48", "16 48 00 04 02 03", "10 3c", "00 48")]
    assert received == strap.sent[:4]
    assert [HeartRateMeasurement.from_bytes(v).bpm for v in received] == [72, 72, 60, 72]


async def test_reading_a_subscribed_characteristic_also_notifies() -> None:
    """bluetoothd publishes a read value as ``PropertiesChanged`` too (bleak documents the duplicate)."""
    strap = HeartRateStrap(battery_level=55)
    async with emulation(strap):
        collector = Collector()
        async with BleakClient(await discover(strap)) as client:
            await subscribe(client, collector, const.BATTERY_LEVEL_UUID)
            assert await client.read_gatt_char(const.BATTERY_LEVEL_UUID) == bytes([55])
            assert await collector.get(const.BATTERY_LEVEL_UUID) == bytes([55])
            assert await strap.set_battery_level(54)
            assert await collector.get(const.BATTERY_LEVEL_UUID) == bytes([54])


# -- glucose meter


def stored_records() -> list[GlucoseRecord]:
    return [GlucoseRecord(seq, T0, 95 + seq, meal=Meal.FASTING if seq == 2 else None) for seq in (1, 2, 3)]


async def collect_until_racp_response(collector: Collector) -> bytes:
    """RACP runs as indications on 0x2A52; the job ends with its response."""
    while True:
        response = await collector.get(const.RECORD_ACCESS_CONTROL_POINT_UUID)
        if response[0] in (0x05, 0x06):
            return response


async def test_glucose_meter_reports_all_then_only_newer_records() -> None:
    meter = GlucoseMeter(records=stored_records())
    async with emulation(meter):
        collector = Collector()
        async with BleakClient(await discover(meter)) as client:
            await subscribe(
                client,
                collector,
                const.GLUCOSE_MEASUREMENT_UUID,
                const.GLUCOSE_MEASUREMENT_CONTEXT_UUID,
                const.RECORD_ACCESS_CONTROL_POINT_UUID,
            )
            racp = const.RECORD_ACCESS_CONTROL_POINT_UUID
            await client.write_gatt_char(racp, racp_report_number_of_records(), response=True)
            assert await collect_until_racp_response(collector) == bytes.fromhex("05 00 03 00")

            await client.write_gatt_char(racp, racp_report_all(), response=True)
            assert await collect_until_racp_response(collector) == bytes.fromhex("06 00 01 01")
            first = collector.drain(const.GLUCOSE_MEASUREMENT_UUID)
            contexts = collector.drain(const.GLUCOSE_MEASUREMENT_CONTEXT_UUID)

            await client.write_gatt_char(racp, racp_report_seq_at_least(2), response=True)
            assert await collect_until_racp_response(collector) == bytes.fromhex("06 00 01 01")
            newer = collector.drain(const.GLUCOSE_MEASUREMENT_UUID)

            await client.write_gatt_char(racp, racp_report_seq_at_least(4), response=True)
            assert await collect_until_racp_response(collector) == bytes.fromhex("06 00 01 06")
            assert collector.drain(const.GLUCOSE_MEASUREMENT_UUID) == []

    assert first == [bytes(r.measurement()) for r in meter.records]
    assert [GlucoseMeasurement.from_bytes(v).sequence_number for v in first] == [1, 2, 3]
    assert [GlucoseMeasurement.from_bytes(v).glucose_mg_dl for v in first] == [96, 97, 98]
    assert contexts == [bytes.fromhex("02 02 00 03")]
    assert [GlucoseMeasurement.from_bytes(v).sequence_number for v in newer] == [2, 3]


async def test_racp_without_indications_is_an_att_error() -> None:
    meter = GlucoseMeter(records=stored_records())
    async with emulation(meter):
        async with BleakClient(await discover(meter)) as client:
            racp = const.RECORD_ACCESS_CONTROL_POINT_UUID
            with pytest.raises(BleakGATTProtocolError) as excinfo:
                await client.write_gatt_char(racp, racp_report_all(), response=True)
    assert excinfo.value.code == const.ATT_ERROR_GLS_CCCD_IMPROPERLY_CONFIGURED


# -- CGM


async def test_cgm_notifies_live_measurements_while_subscribed() -> None:
    cgm = ContinuousGlucoseMonitor(interval_s=0.05, history=[CgmRecord(0, 110)])
    async with emulation(cgm):
        collector = Collector()
        async with BleakClient(await discover(cgm)) as client:
            await subscribe(client, collector, const.CGM_MEASUREMENT_UUID)
            live = [await collector.get(const.CGM_MEASUREMENT_UUID) for _ in range(3)]
            await cgm.wait_for(lambda _: len(cgm.sent) >= 3)

    records = [CgmMeasurement.from_bytes(v, e2e_crc=False) for v in live]
    assert [r.time_offset_min for r in records] == [5, 10, 15]
    assert live == cgm.sent[:3]


async def test_cgm_backfills_by_time_offset_with_e2e_crc() -> None:
    history = [CgmRecord(minutes, 100 + minutes) for minutes in range(0, 61, 5)]
    cgm = ContinuousGlucoseMonitor(e2e_crc=True, history=history, interval_s=3600)
    async with emulation(cgm):
        collector = Collector()
        async with BleakClient(await discover(cgm)) as client:
            session_start = await client.read_gatt_char(const.CGM_SESSION_START_TIME_UUID)
            feature = await client.read_gatt_char(const.CGM_FEATURE_UUID)
            await subscribe(client, collector, const.CGM_MEASUREMENT_UUID, const.RECORD_ACCESS_CONTROL_POINT_UUID)
            racp = const.RECORD_ACCESS_CONTROL_POINT_UUID
            with pytest.raises(BleakGATTProtocolError) as excinfo:
                await client.write_gatt_char(racp, b"\x01", response=True)
            assert excinfo.value.code == const.ATT_ERROR_CGMS_MISSING_CRC
            await client.write_gatt_char(racp, racp_report_time_offset_at_least(30, e2e_crc=True), response=True)
            assert await collect_until_racp_response(collector) == bytes.fromhex("06 00 01 01")
            backfill = collector.drain(const.CGM_MEASUREMENT_UUID)

    assert session_start == bytes.fromhex("e8 07 03 0f 08 00 00 04 00") + session_start[-2:]
    assert feature == bytes.fromhex("00 90 01 59 c4 5c")
    records = [CgmMeasurement.from_bytes(v, e2e_crc=True) for v in backfill]
    assert [r.time_offset_min for r in records] == [30, 35, 40, 45, 50, 55, 60]
    assert all(r.crc_ok for r in records)
    assert [r.glucose_mg_dl for r in records] == [130, 135, 140, 145, 150, 155, 160]


# -- links and pairing


async def test_remote_disconnect_fires_disconnected_callback() -> None:
    strap = HeartRateStrap()
    async with emulation(strap) as bz:
        disconnected = asyncio.Event()
        client = BleakClient(await discover(strap), disconnected_callback=lambda _c: disconnected.set())
        async with client:
            await strap.wait_for(lambda d: d.connected)
            await bz.disconnect(strap)
            await disconnected.wait()
            assert not client.is_connected
        assert not strap.connected
        assert (await bz.device_state(strap))["connected"] is False


async def test_peripheral_can_drop_the_link_itself() -> None:
    meter = GlucoseMeter()
    async with emulation(meter):
        disconnected = asyncio.Event()
        async with BleakClient(await discover(meter), disconnected_callback=lambda _c: disconnected.set()) as client:
            await meter.disconnect()  # meters hang up after a transfer
            await asyncio.wait_for(disconnected.wait(), timeout=30)
            assert not client.is_connected, "bleak saw the peripheral hang up"


async def test_protected_characteristic_needs_pairing() -> None:
    meter = GlucoseMeter(requires_pairing=True)
    async with emulation(meter) as bz:
        async with BleakClient(await discover(meter)) as client:
            with pytest.raises(BleakDBusError) as excinfo:
                await client.read_gatt_char(const.GLUCOSE_FEATURE_UUID)
            assert excinfo.value.dbus_error == "org.bluez.Error.NotPermitted"
            assert excinfo.value.dbus_error_details == "Not paired"
            # unprotected services stay readable
            assert await client.read_gatt_char(const.MODEL_NUMBER_UUID) == b"GLM-1"
            await client.pair()
            assert await client.read_gatt_char(const.GLUCOSE_FEATURE_UUID) == bytes.fromhex("03 04")
        assert meter.paired
        state = await bz.device_state(meter)
        assert state["paired"]
        assert state["trusted"]


async def test_connect_with_pair_true_bonds_before_use() -> None:
    cgm = ContinuousGlucoseMonitor(requires_pairing=True, interval_s=3600)
    async with emulation(cgm):
        async with BleakClient(await discover(cgm), pair=True) as client:
            assert await client.read_gatt_char(const.CGM_SESSION_RUN_TIME_UUID) == (336).to_bytes(2, "little")
        assert cgm.paired


async def test_bonded_device_is_known_without_scanning() -> None:
    meter = GlucoseMeter(requires_pairing=True)
    async with EmulatedBluez() as bz, asyncio.timeout(TEST_TIMEOUT_S):
        await bz.add_device(meter, bonded=True)
        async with BleakClient(meter.address) as client:  # bleak scans by itself
            assert await client.read_gatt_char(const.GLUCOSE_FEATURE_UUID) == bytes.fromhex("03 04")


async def test_unpair_removes_the_device_until_it_is_heard_again() -> None:
    meter = GlucoseMeter(requires_pairing=True)
    async with emulation(meter) as bz:
        client = BleakClient(await discover(meter), pair=True)
        async with client:
            assert (await bz.device_state(meter))["paired"]
        await client.unpair()
        state = await bz.device_state(meter)
        assert not state["exported"]
        assert not state["paired"]
        await discover(meter)  # the peripheral still advertises
        assert (await bz.device_state(meter))["exported"]


async def test_out_of_range_connect_times_out_then_succeeds_back_in_range() -> None:
    strap = HeartRateStrap()
    async with emulation(strap) as bz:
        device = await discover(strap)
        await bz.set_in_range(strap, False)
        with pytest.raises(TimeoutError):
            await BleakClient(device, timeout=0.5).connect()
        await bz.set_in_range(strap, True)
        async with BleakClient(device, timeout=SCAN_TIMEOUT_S) as client:
            assert client.is_connected


async def test_pending_connect_completes_when_the_device_comes_back() -> None:
    strap = HeartRateStrap()
    async with emulation(strap) as bz:
        device = await discover(strap)
        await bz.set_in_range(strap, False)
        client = BleakClient(device, timeout=SCAN_TIMEOUT_S)
        connecting = asyncio.create_task(client.connect())
        await bz.set_in_range(strap, True)
        await connecting
        assert client.is_connected
        await client.disconnect()


async def test_bleak_retries_le_connection_abort_by_local() -> None:
    strap = HeartRateStrap()
    async with emulation(strap) as bz:
        device = await discover(strap)
        await bz.fail_next_connects(strap, 2)
        async with BleakClient(device) as client:
            assert client.is_connected


class PasskeyAgent(ServiceInterface):
    """An ``org.bluez.Agent1`` that types ``passkey`` (what ``rpm edge pair`` would ask the user)."""

    def __init__(self, passkey: int) -> None:
        super().__init__("org.bluez.Agent1")
        self.passkey = passkey
        self.asked: list[str] = []

    @dbus_method()
    def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        self.asked.append(device)
        return self.passkey


async def register_agent(agent: PasskeyAgent) -> MessageBus:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.export("/rpm/agent", agent)
    introspection = await bus.introspect("org.bluez", "/org/bluez")
    manager = bus.get_proxy_object("org.bluez", "/org/bluez", introspection).get_interface("org.bluez.AgentManager1")
    await manager.call_register_agent("/rpm/agent", "KeyboardOnly")  # type: ignore[attr-defined]
    await manager.call_request_default_agent("/rpm/agent")  # type: ignore[attr-defined]
    return bus


@pytest.mark.parametrize(("typed", "paired"), [(123456, True), (111111, False)])
async def test_passkey_pairing_asks_the_registered_agent(typed: int, paired: bool) -> None:
    cgm = ContinuousGlucoseMonitor(requires_pairing=True, pairing="passkey", passkey=123456, interval_s=3600)
    async with emulation(cgm) as bz:
        agent = PasskeyAgent(typed)
        agent_bus = await register_agent(agent)
        try:
            async with BleakClient(await discover(cgm)) as client:
                if paired:
                    await client.pair()
                else:
                    with pytest.raises(BleakDBusError) as excinfo:
                        await client.pair()
                    assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationFailed"
        finally:
            agent_bus.disconnect()
            await agent_bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    assert agent.asked == [bz.device_path(cgm)]
    assert cgm.paired is paired


async def test_passkey_pairing_without_agent_fails() -> None:
    cgm = ContinuousGlucoseMonitor(pairing="passkey", passkey=123456, interval_s=3600)
    async with emulation(cgm):
        async with BleakClient(await discover(cgm)) as client:
            with pytest.raises(BleakDBusError) as excinfo:
                await client.pair()
    assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationFailed"


# -- the emulation itself


async def test_two_emulations_in_one_event_loop() -> None:
    """bleak keeps one BlueZ connection per loop; the second emulation must get a fresh one."""
    for address in ("C0:FF:EE:00:01:01", "C0:FF:EE:00:01:02"):
        strap = HeartRateStrap(address=address)
        async with emulation(strap):
            assert (await discover(strap)).address == address


async def test_behaviour_errors_fail_the_emulation() -> None:
    class Broken(HeartRateStrap):
        async def read(self, uuid: str) -> bytes:
            raise RuntimeError("firmware bug")

    async def read_broken_characteristic() -> None:
        async with emulation(strap), BleakClient(await discover(strap)) as client:
            with pytest.raises(BleakGATTProtocolError) as att:
                await client.read_gatt_char(const.BODY_SENSOR_LOCATION_UUID)
            assert att.value.code == 0x0E  # unlikely error

    strap = Broken()
    with pytest.raises(EmulationError, match="virtual peripherals") as excinfo:
        await read_broken_characteristic()
    assert isinstance(excinfo.value.__cause__, RuntimeError)
