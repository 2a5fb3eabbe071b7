"""Virtual BLE health peripherals that speak the profiles of ``ble/HEALTH_PROFILES.md`` byte for byte.

A peripheral is a GATT table (:class:`Service`, :class:`Characteristic`, :class:`Descriptor`),
an :class:`Advertisement`, and behaviour written as ordinary asyncio code:

- :class:`HeartRateStrap`: HRS 0x180D, notifies 0x2A37 every ``interval_s`` (1 Hz by default)
  while subscribed, Body Sensor Location 0x2A38, HR Control Point 0x2A39 (``01`` resets energy);
- :class:`GlucoseMeter`: GLS 0x1808 with stored :class:`GlucoseRecord` s; the Record Access
  Control Point 0x2A52 answers ``01 01``, ``01 03 01 <seq>``, ``04 01``, ``03 00`` … by notifying
  0x2A18 (and 0x2A34) and indicating ``06 00 01 01`` / ``06 00 01 06`` (§2 "Collection flow");
  Current Time 0x2A2B tells the meter's clock (and, with ``clock_writable``, can be set);
- :class:`ContinuousGlucoseMonitor`: CGMS 0x181F, notifies 0x2AA7 periodically while a session
  runs, serves Feature/Status/Session Start Time/Run Time, backfills by time offset through RACP
  and answers the Specific Ops Control Point; E2E-CRC optional (§3, §6).

Every peripheral also has Device Information 0x180A (manufacturer, model, serial, hardware,
firmware, software) and Battery 0x180F. With ``requires_pairing=True`` the profile
characteristics need an encrypted (bonded) link: before pairing they answer ATT 0x05, which
BlueZ reports as ``org.bluez.Error.NotPermitted: Not paired``.

Payloads are built with the :mod:`edge_agent.gatt` codecs (``__bytes__``), so a simulator and the
edge agent agree on the wire format by construction; the requests a collector writes (RACP, SOCP,
HRCP, Session Start Time) are parsed here, on the device side, so that a malformed request gets
the response code a real device would send rather than a decoder exception.

The peripherals know nothing about D-Bus. A transport (:class:`simulators.bluez.EmulatedBluez`)
attaches itself as the :class:`PeripheralLink`, feeds link events in (:meth:`~VirtualPeripheral.
link_connected`, :meth:`~VirtualPeripheral.subscription_changed`, :meth:`~VirtualPeripheral.read`,
:meth:`~VirtualPeripheral.write`, …) and carries :meth:`~VirtualPeripheral.notify` out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import struct
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal, Protocol, TypeVar

from edge_agent import const
from edge_agent.errors import GattDecodeError
from edge_agent.gatt import (
    BatteryLevel,
    BodySensorLocation,
    CgmFeature,
    CgmFeatureFlags,
    CgmMeasurement,
    CgmSensorStatus,
    CgmStatus,
    CurrentTime,
    DayOfWeek,
    GlucoseFeature,
    GlucoseFeatureFlags,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseSensorStatus,
    GlucoseUnit,
    HeartRateMeasurement,
    Meal,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpOperator,
    RacpResponse,
    RacpResponseCode,
    SampleLocation,
    SampleType,
    SensorContact,
    SessionRunTime,
    SessionStartTime,
    SFloat,
    SocpCommunicationInterval,
    SocpOpCode,
    SocpResponse,
    SocpResponseCode,
    append_e2e_crc,
    crc16_mcrf4xx,
    encode_body_sensor_location,
    encode_dis_string,
)

_LOGGER = logging.getLogger(__name__)


def normalize_uuid(uuid: str) -> str:
    """``"2a37"``, ``"00002a37"`` or a full UUID → lower-case 128-bit form."""
    uuid = uuid.lower()
    if len(uuid) == 4:
        return f"0000{uuid}{const.BLUETOOTH_BASE_UUID_SUFFIX}"
    if len(uuid) == 8:
        return f"{uuid}{const.BLUETOOTH_BASE_UUID_SUFFIX}"
    return uuid


# ATT error 0x0E "unlikely error": what a peripheral answers when its own firmware fails.
ATT_UNLIKELY_ERROR: Final = 0x0E
# ATT error 0xFF "out of range" (CSS Part B 1.2): a value the peripheral cannot accept.
ATT_OUT_OF_RANGE: Final = 0xFF

Flag = Literal["read", "write", "write-without-response", "notify", "indicate"]
PairingMode = Literal["just-works", "passkey", "reject"]
ReadHandler = Callable[[], Coroutine[Any, Any, bytes]]
WriteHandler = Callable[[bytes, bool], Coroutine[Any, Any, None]]


class AttError(Exception):
    """Raised by a read/write handler: the peripheral answers with this ATT error code."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"ATT error 0x{code:02x}{': ' + reason if reason else ''}")
        self.code = code


# ---------------------------------------------------------------------------------------------
# GATT model


@dataclass(slots=True, eq=False)
class Descriptor:
    """A GATT descriptor with a static value (the CCCD is kept by the transport)."""

    uuid: str
    value: bytes = b""
    flags: tuple[str, ...] = ("read",)

    def __post_init__(self) -> None:
        self.uuid = normalize_uuid(self.uuid)


@dataclass(slots=True, eq=False)
class Characteristic:
    """A GATT characteristic; ``on_read``/``on_write`` override the stored ``value``.

    ``flags`` use BlueZ's names. ``encrypted`` characteristics need a bonded link. A CCCD is
    added for notify/indicate characteristics.
    """

    uuid: str
    flags: tuple[Flag, ...]
    value: bytes = b""
    encrypted: bool = False
    on_read: ReadHandler | None = None
    on_write: WriteHandler | None = None
    descriptors: tuple[Descriptor, ...] = ()

    def __post_init__(self) -> None:
        self.uuid = normalize_uuid(self.uuid)
        subscribable = "notify" in self.flags or "indicate" in self.flags
        if subscribable and not any(d.uuid == const.CLIENT_CHARACTERISTIC_CONFIGURATION_UUID for d in self.descriptors):
            cccd = Descriptor(const.CLIENT_CHARACTERISTIC_CONFIGURATION_UUID, b"\x00\x00", ("read", "write"))
            self.descriptors = (*self.descriptors, cccd)


@dataclass(slots=True, eq=False)
class Service:
    """A primary GATT service."""

    uuid: str
    characteristics: tuple[Characteristic, ...]

    def __post_init__(self) -> None:
        self.uuid = normalize_uuid(self.uuid)


@dataclass(frozen=True, slots=True)
class Advertisement:
    """What a scanner sees: local name, service UUIDs, manufacturer/service data, RSSI, TX power."""

    local_name: str | None
    service_uuids: tuple[str, ...] = ()
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    rssi: int = -60
    tx_power: int | None = None
    appearance: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceInformation:
    """Device Information Service strings (§5)."""

    manufacturer: str = "Acme Medical"
    model: str = "RPM-1"
    serial: str = "SN0001"
    hardware: str = "1.0"
    firmware: str = "1.2.0"
    software: str = "1.2.0"


class PeripheralLink(Protocol):
    """What a peripheral needs from its transport."""

    async def notify(self, peripheral: VirtualPeripheral, uuid: str, value: bytes) -> bool:
        """Send a notification/indication; ``False`` when nobody is subscribed or the link is down."""
        ...

    async def disconnect(self, peripheral: VirtualPeripheral) -> None:
        """Drop the link from the peripheral's side."""
        ...


# ---------------------------------------------------------------------------------------------
# the peripheral base class


class VirtualPeripheral:
    """A BLE peripheral: GATT table, advertisement, pairing policy and link state.

    Subclasses add services in :meth:`profile_services` and react in :meth:`on_connect`,
    :meth:`on_disconnect` and :meth:`on_subscribe`; long-running behaviour goes into
    :meth:`start_task`, which the link's end cancels.
    """

    def __init__(
        self,
        *,
        address: str,
        advertisement: Advertisement,
        info: DeviceInformation | None = None,
        battery_level: int = 100,
        requires_pairing: bool = False,
        pairing: PairingMode = "just-works",
        passkey: int | None = None,
        mtu: int = 23,
        address_type: Literal["public", "random"] = "public",
    ) -> None:
        if pairing == "passkey" and passkey is None:
            raise ValueError("pairing='passkey' needs a passkey")
        self.address = address.upper()
        self.advertisement = advertisement
        self.info = info or DeviceInformation()
        self.battery_level = battery_level
        self.requires_pairing = requires_pairing
        self.pairing: PairingMode = pairing
        self.passkey = passkey
        self.mtu = mtu
        self.address_type = address_type
        self.connected = False
        self.paired = False
        self.subscriptions: set[str] = set()
        self.notified: list[tuple[str, bytes]] = []
        self.errors: list[BaseException] = []
        self._link: PeripheralLink | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self.services: tuple[Service, ...] = (
            *self.profile_services(),
            self._device_information_service(),
            self._battery_service(),
        )
        self._characteristics = {c.uuid: c for s in self.services for c in s.characteristics}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} {self.advertisement.local_name!r}>"

    # -- GATT table

    def profile_services(self) -> Sequence[Service]:
        """The profile's services (HRS, GLS, CGMS …); DIS and BAS are added by the base class."""
        return ()

    def characteristic(self, uuid: str) -> Characteristic:
        """The characteristic with ``uuid`` (16-bit or full form)."""
        return self._characteristics[normalize_uuid(uuid)]

    def _device_information_service(self) -> Service:
        info = self.info
        strings = (
            (const.MANUFACTURER_NAME_UUID, info.manufacturer),
            (const.MODEL_NUMBER_UUID, info.model),
            (const.SERIAL_NUMBER_UUID, info.serial),
            (const.HARDWARE_REVISION_UUID, info.hardware),
            (const.FIRMWARE_REVISION_UUID, info.firmware),
            (const.SOFTWARE_REVISION_UUID, info.software),
        )
        chars = tuple(Characteristic(uuid, ("read",), encode_dis_string(text)) for uuid, text in strings)
        return Service(const.DEVICE_INFORMATION_SERVICE_UUID, chars)

    def _battery_service(self) -> Service:
        level = Characteristic(const.BATTERY_LEVEL_UUID, ("read", "notify"), on_read=self._read_battery)
        return Service(const.BATTERY_SERVICE_UUID, (level,))

    async def _read_battery(self) -> bytes:
        return bytes(BatteryLevel(self.battery_level))

    async def set_battery_level(self, percent: int) -> bool:
        """Change the battery level and notify subscribers; ``True`` if someone got it."""
        self.battery_level = percent
        return await self.notify(const.BATTERY_LEVEL_UUID, bytes(BatteryLevel(percent)))

    # -- transport-facing events (called by the link)

    def attach(self, link: PeripheralLink) -> None:
        """Bind the peripheral to its transport."""
        if self._link is not None and self._link is not link:
            raise RuntimeError(f"{self!r} is attached to another link")
        self._link = link

    def detach(self) -> None:
        """Unbind from the transport and stop all behaviour."""
        self._cancel_tasks()
        self._link = None
        self.connected = False
        self.subscriptions.clear()
        self._state_changed()

    def link_connected(self) -> None:
        """A central connected."""
        self.connected = True
        self.on_connect()
        self._state_changed()

    def link_lost(self, reason: str) -> None:
        """The link dropped (``reason``: ``local``, ``remote`` or ``removed``)."""
        self.connected = False
        self.subscriptions.clear()
        self._cancel_tasks()
        self.on_disconnect(reason)
        self._state_changed()

    def link_paired(self) -> None:
        """The central bonded with us."""
        self.paired = True
        self._state_changed()

    def subscription_changed(self, uuid: str, enabled: bool) -> None:
        """The central wrote the CCCD of ``uuid``."""
        uuid = normalize_uuid(uuid)
        if enabled:
            self.subscriptions.add(uuid)
        else:
            self.subscriptions.discard(uuid)
        self.on_subscribe(uuid, enabled)
        self._state_changed()

    async def read(self, uuid: str) -> bytes:
        """Serve a read request; raises :class:`AttError`."""
        char = self.characteristic(uuid)
        if char.on_read is not None:
            char.value = await char.on_read()
        return char.value

    async def write(self, uuid: str, data: bytes, with_response: bool) -> None:
        """Serve a write request/command; raises :class:`AttError`."""
        char = self.characteristic(uuid)
        if char.on_write is None:
            char.value = data
            return
        await char.on_write(data, with_response)

    # -- hooks for subclasses

    def on_connect(self) -> None:
        """A central connected."""

    def on_disconnect(self, reason: str) -> None:
        """The link dropped; tasks are already cancelled."""

    def on_subscribe(self, uuid: str, enabled: bool) -> None:
        """Notifications/indications of ``uuid`` were enabled or disabled."""

    # -- behaviour helpers

    async def notify(self, uuid: str, value: bytes) -> bool:
        """Notify/indicate ``value`` on ``uuid``; ``False`` if it reached nobody."""
        char = self.characteristic(uuid)
        char.value = value
        if self._link is None or not self.connected or char.uuid not in self.subscriptions:
            return False
        delivered = await self._link.notify(self, char.uuid, value)
        if delivered:
            self.notified.append((char.uuid, value))
            self._state_changed()
        return delivered

    def notified_values(self, uuid: str) -> list[bytes]:
        """Every value of ``uuid`` that reached a subscriber, oldest first."""
        uuid = normalize_uuid(uuid)
        return [value for notified_uuid, value in self.notified if notified_uuid == uuid]

    async def disconnect(self) -> None:
        """Drop the link from the peripheral's side (e.g. a meter done with its transfer)."""
        if self._link is not None and self.connected:
            await self._link.disconnect(self)

    def start_task(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as the peripheral's task ``name`` (replacing a running one of that name)."""
        self.stop_task(name)
        task = asyncio.create_task(coro, name=f"{self.address} {name}")
        task.add_done_callback(self._task_done)
        self._tasks[name] = task

    def stop_task(self, name: str) -> None:
        """Cancel the task ``name`` if it runs."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def task_running(self, name: str) -> bool:
        """Whether task ``name`` is running."""
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        for name, current in list(self._tasks.items()):
            if current is task:
                del self._tasks[name]
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        _LOGGER.error("%r: task %s failed", self, task.get_name(), exc_info=exc)
        self.errors.append(exc)

    def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, {}
        for task in tasks.values():
            task.cancel()

    async def wait_for(self, predicate: Callable[[VirtualPeripheral], bool]) -> None:
        """Wait until ``predicate(self)`` holds; re-checked on every link event and delivered
        notification. Bound it with a timeout."""
        loop = asyncio.get_running_loop()
        while not predicate(self):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    def _state_changed(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


# ---------------------------------------------------------------------------------------------
# number formatting shared by the profiles


def scaled_sfloat(value: float, exponent: int = 0) -> SFloat:
    """``value`` × 10^``exponent`` as SFLOAT, with as few extra decimals as make it exact (≤ 3).

    This is how devices scale a display unit: 100 mg/dL sent as kg/L is 100e-5 (``64 b0``),
    95.5 mg/dL on a CGM is 955e-1 (``bb f3``). NaN and ±inf map to the special codes.
    """
    if not math.isfinite(value):
        return SFloat.from_value(value)
    decimals = 0
    while (
        decimals < 3
        and not math.isclose(value * 10**decimals, round(value * 10**decimals), abs_tol=1e-6)
        and abs(round(value * 10 ** (decimals + 1))) <= 2047
    ):
        decimals += 1
    return SFloat.from_value(value * 10.0**exponent, exponent=exponent - decimals)


def check_e2e_crc(data: bytes) -> bytes:
    """Strip the E2E-CRC of a collector's write (§6); ATT 0x80 when missing, 0x81 when wrong."""
    if len(data) < 3:
        raise AttError(const.ATT_ERROR_CGMS_MISSING_CRC, "missing E2E-CRC")
    body, crc = data[:-2], int.from_bytes(data[-2:], "little")
    if crc16_mcrf4xx(body) != crc:
        raise AttError(const.ATT_ERROR_CGMS_INVALID_CRC, "invalid E2E-CRC")
    return body


# ---------------------------------------------------------------------------------------------
# Heart Rate (§1)


class HeartRateStrap(VirtualPeripheral):
    """A chest strap: notifies 0x2A37 every ``interval_s`` while subscribed, cycling ``samples``.

    :attr:`sent` lists every measurement that reached a subscriber. With ``energy=True`` it reports
    Energy Expended (overriding the samples'), which grows by ``energy_step_kj`` per notification
    and which the HR Control Point's ``01`` resets; any other control point value gets ATT 0x80.
    """

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:00:00:01",
        name: str = "RPM HR Strap",
        samples: Iterable[HeartRateMeasurement] = (HeartRateMeasurement(72, SensorContact.DETECTED, None, (853,)),),
        interval_s: float = 1.0,
        location: BodySensorLocation = BodySensorLocation.CHEST,
        energy: bool = False,
        energy_step_kj: int = 1,
        rssi: int = -58,
        **kwargs: Any,
    ) -> None:
        self.interval_s = interval_s
        self.location = location
        self.energy_kj: int | None = 0 if energy else None
        self.energy_step_kj = energy_step_kj
        self._samples: Iterator[HeartRateMeasurement] = itertools.cycle(tuple(samples))
        advertisement = Advertisement(
            name,
            (const.HEART_RATE_SERVICE_UUID,),
            manufacturer_data={0x0059: b"\x01\x02"},
            rssi=rssi,
            appearance=0x0341,  # Heart Rate Sensor: Heart Rate Belt
        )
        kwargs.setdefault("info", DeviceInformation(model="HRS-1", serial=f"HR-{address[-5:]}"))
        super().__init__(address=address, advertisement=advertisement, **kwargs)

    def profile_services(self) -> Sequence[Service]:
        secure = self.requires_pairing
        chars = (
            Characteristic(const.HEART_RATE_MEASUREMENT_UUID, ("notify",), encrypted=secure),
            Characteristic(const.BODY_SENSOR_LOCATION_UUID, ("read",), encrypted=secure, on_read=self._read_location),
            Characteristic(
                const.HEART_RATE_CONTROL_POINT_UUID, ("write",), encrypted=secure, on_write=self._write_control
            ),
        )
        return (Service(const.HEART_RATE_SERVICE_UUID, chars),)

    @property
    def sent(self) -> list[bytes]:
        """The 0x2A37 values that reached a subscriber."""
        return self.notified_values(const.HEART_RATE_MEASUREMENT_UUID)

    def next_measurement(self) -> HeartRateMeasurement:
        """The next sample, with this strap's Energy Expended."""
        sample = next(self._samples)
        if self.energy_kj is None:
            return sample
        return dataclasses.replace(sample, energy_expended_kj=min(self.energy_kj, 0xFFFF))

    async def _read_location(self) -> bytes:
        return encode_body_sensor_location(self.location)

    async def _write_control(self, data: bytes, with_response: bool) -> None:
        if data != b"\x01":
            raise AttError(const.ATT_ERROR_HRCP_VALUE_NOT_SUPPORTED, "control point value not supported")
        if self.energy_kj is not None:
            self.energy_kj = 0

    def on_subscribe(self, uuid: str, enabled: bool) -> None:
        if uuid != const.HEART_RATE_MEASUREMENT_UUID:
            return
        if enabled:
            self.start_task("measure", self._measure())
        else:
            self.stop_task("measure")

    async def _measure(self) -> None:
        while True:
            value = bytes(self.next_measurement())
            if await self.notify(const.HEART_RATE_MEASUREMENT_UUID, value):
                if self.energy_kj is not None:
                    self.energy_kj += self.energy_step_kj
            await asyncio.sleep(self.interval_s)  # the strap's own measurement clock


# ---------------------------------------------------------------------------------------------
# Record Access Control Point (§2, shared by GLS and CGMS)


class RacpRejected(Exception):
    """A RACP request that is answered with a response code other than success."""

    def __init__(self, code: RacpResponseCode) -> None:
        super().__init__(code.name)
        self.code = code


# Filter type 01 is the sequence number (GLS) or the time offset (CGMS), u16 either way.
RACP_FILTER_SEQUENCE_OR_OFFSET: Final = 0x01

_Record = TypeVar("_Record")


def racp_select(
    records: Sequence[_Record], key: Callable[[_Record], int], operator: int, operand: bytes
) -> list[_Record]:
    """The records a RACP ``operator`` + ``operand`` (filter ``01``, u16 keys) selects, oldest first.

    Raises :class:`RacpRejected` with the response code for malformed or unsupported requests.
    """
    ordered = sorted(records, key=key)
    if operator == RacpOperator.ALL_RECORDS:
        return _no_operand(operand, ordered)
    if operator == RacpOperator.FIRST_RECORD:
        return _no_operand(operand, ordered[:1])
    if operator == RacpOperator.LAST_RECORD:
        return _no_operand(operand, ordered[-1:])
    if operator in _RACP_FILTERING_OPERATORS:
        low, high = _bounds(operator, operand)
        return [r for r in ordered if low <= key(r) <= high]
    if operator == RacpOperator.NULL:
        raise RacpRejected(RacpResponseCode.INVALID_OPERATOR)
    raise RacpRejected(RacpResponseCode.OPERATOR_NOT_SUPPORTED)


_RACP_FILTERING_OPERATORS: Final = (
    RacpOperator.LESS_THAN_OR_EQUAL_TO,
    RacpOperator.GREATER_THAN_OR_EQUAL_TO,
    RacpOperator.WITHIN_RANGE_OF,
)


def _no_operand(operand: bytes, selected: list[_Record]) -> list[_Record]:
    if operand:
        raise RacpRejected(RacpResponseCode.INVALID_OPERAND)
    return selected


def _bounds(operator: int, operand: bytes) -> tuple[int, int]:
    if not operand:
        raise RacpRejected(RacpResponseCode.INVALID_OPERAND)
    if operand[0] != RACP_FILTER_SEQUENCE_OR_OFFSET:
        raise RacpRejected(RacpResponseCode.OPERAND_NOT_SUPPORTED)
    values = operand[1:]
    if operator == RacpOperator.WITHIN_RANGE_OF:
        if len(values) != 4:
            raise RacpRejected(RacpResponseCode.INVALID_OPERAND)
        low, high = struct.unpack("<HH", values)
        if low > high:
            raise RacpRejected(RacpResponseCode.INVALID_OPERAND)
        return low, high
    if len(values) != 2:
        raise RacpRejected(RacpResponseCode.INVALID_OPERAND)
    (value,) = struct.unpack("<H", values)
    return (0, value) if operator == RacpOperator.LESS_THAN_OR_EQUAL_TO else (value, 0xFFFF)


class RacpServer:
    """The RACP procedure state machine shared by the glucose meter and the CGM.

    The owner supplies the stored records, how to send one record, and how to delete; one
    procedure runs at a time (as the peripheral's task ``racp``), ``03 00`` aborts it.
    """

    def __init__(
        self,
        peripheral: VirtualPeripheral,
        *,
        records: Callable[[], list[Any]],
        key: Callable[[Any], int],
        send_record: Callable[[Any], Coroutine[Any, Any, bool]],
        delete: Callable[[list[Any]], None],
        pace_s: float = 0.0,
    ) -> None:
        self._peripheral = peripheral
        self._records = records
        self._key = key
        self._send_record = send_record
        self._delete = delete
        self.pace_s = pace_s

    @property
    def busy(self) -> bool:
        """Whether a procedure is running."""
        return self._peripheral.task_running("racp")

    def start(self, request: bytes) -> None:
        """Run the request in the background (after the write response goes out)."""
        self._peripheral.start_task("racp", self._run(request))

    def abort(self) -> None:
        """Stop the running procedure and confirm the abort."""
        self._peripheral.stop_task("racp")
        self._peripheral.start_task("racp-abort", self._respond(RacpOpCode.ABORT_OPERATION, RacpResponseCode.SUCCESS))

    async def _respond(self, opcode: int, code: RacpResponseCode) -> None:
        await self._peripheral.notify(const.RECORD_ACCESS_CONTROL_POINT_UUID, bytes(RacpResponse(opcode, code)))

    async def _run(self, request: bytes) -> None:
        opcode = request[0] if request else 0
        try:
            if len(request) < 2:
                raise RacpRejected(RacpResponseCode.INVALID_OPERATOR)
            await self._dispatch(opcode, request[1], request[2:])
        except RacpRejected as rejected:
            await self._respond(opcode, rejected.code)

    async def _dispatch(self, opcode: int, operator: int, operand: bytes) -> None:
        if opcode == RacpOpCode.REPORT_STORED_RECORDS:
            await self._report(racp_select(self._records(), self._key, operator, operand))
        elif opcode == RacpOpCode.REPORT_NUMBER_OF_RECORDS:
            count = len(racp_select(self._records(), self._key, operator, operand))
            response = bytes(RacpNumberOfRecords(count))
            await self._peripheral.notify(const.RECORD_ACCESS_CONTROL_POINT_UUID, response)
        elif opcode == RacpOpCode.DELETE_STORED_RECORDS:
            selected = racp_select(self._records(), self._key, operator, operand)
            self._delete(selected)
            found = RacpResponseCode.SUCCESS if selected else RacpResponseCode.NO_RECORDS_FOUND
            await self._respond(opcode, found)
        elif opcode == RacpOpCode.ABORT_OPERATION:
            # nothing to abort: an abort outside a procedure still succeeds (GLS 1.0 §4.10.2.6)
            await self._respond(opcode, RacpResponseCode.SUCCESS)
        else:
            raise RacpRejected(RacpResponseCode.OP_CODE_NOT_SUPPORTED)

    async def _report(self, selected: list[Any]) -> None:
        if not selected:
            await self._respond(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.NO_RECORDS_FOUND)
            return
        for record in selected:
            if not await self._send_record(record):
                await self._respond(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.PROCEDURE_NOT_COMPLETED)
                return
            if self.pace_s:
                await asyncio.sleep(self.pace_s)  # the device's own transfer pace
        await self._respond(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.SUCCESS)


# ---------------------------------------------------------------------------------------------
# Glucose (§2)


@dataclass(frozen=True, slots=True)
class GlucoseRecord:
    """A stored glucose measurement (meter-local ``base_time``), optionally with a meal context.

    ``mg_dl=None`` omits the concentration; ``math.inf`` encodes +INF (set
    ``GlucoseSensorStatus`` bit 5 with it). mol/L records carry mmol/L with one decimal, as
    meters display them.
    """

    sequence_number: int
    base_time: datetime
    mg_dl: float | None = 100.0
    unit: GlucoseUnit = GlucoseUnit.KG_PER_L
    time_offset_min: int | None = None
    sample_type: SampleType = SampleType.CAPILLARY_WHOLE_BLOOD
    sample_location: SampleLocation = SampleLocation.FINGER
    status: GlucoseSensorStatus | None = None
    meal: Meal | None = None  # None: no 0x2A34 context record

    def measurement(self) -> GlucoseMeasurement:
        """The 0x2A18 payload."""
        has_value = self.mg_dl is not None
        return GlucoseMeasurement(
            self.sequence_number,
            self.base_time,
            self.time_offset_min,
            self._concentration(),
            self.unit,
            self.sample_type if has_value else None,
            self.sample_location if has_value else None,
            self.status,
            context_follows=self.meal is not None,
        )

    def _concentration(self) -> SFloat | None:
        if self.mg_dl is None:
            return None
        if self.unit is GlucoseUnit.KG_PER_L:
            return scaled_sfloat(self.mg_dl, -5)  # mg/dL × 10⁻⁵ = kg/L
        mmol_l = self.mg_dl if math.isinf(self.mg_dl) else round(self.mg_dl / float(const.GLUCOSE_MG_DL_PER_MMOL_L), 1)
        return scaled_sfloat(mmol_l, -3)  # mmol/L × 10⁻³ = mol/L

    def context(self) -> GlucoseMeasurementContext | None:
        """The 0x2A34 payload (meal only), or ``None``."""
        return None if self.meal is None else GlucoseMeasurementContext(self.sequence_number, meal=self.meal)


class GlucoseMeter(VirtualPeripheral):
    """A blood glucose meter with stored records and the GLS Record Access Control Point.

    RACP needs indications on 0x2A52, and a report needs notifications on 0x2A18 (else ATT 0x81);
    a second request while one runs gets ATT 0x80. Supported: report / report number / delete
    with operators all, ≤, ≥, range, first, last over sequence numbers (filter ``01``), and
    abort; filtering by user-facing time (filter ``02``) answers "operand not supported".
    ``record_interval_s`` paces the transfer so that an abort can land in the middle.
    """

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:00:00:02",
        name: str = "RPM Glucose",
        records: Iterable[GlucoseRecord] = (),
        features: GlucoseFeatureFlags = (
            GlucoseFeatureFlags.LOW_BATTERY_DETECTION
            | GlucoseFeatureFlags.SENSOR_MALFUNCTION_DETECTION
            | GlucoseFeatureFlags.MULTIPLE_BOND
        ),
        record_interval_s: float = 0.0,
        clock_skew: timedelta = timedelta(0),
        clock_writable: bool = False,
        rssi: int = -66,
        **kwargs: Any,
    ) -> None:
        self.records: list[GlucoseRecord] = sorted(records, key=lambda r: r.sequence_number)
        self.features = features
        self.clock_skew = clock_skew
        self.clock_writable = clock_writable
        self.clock_writes: list[CurrentTime] = []
        self.racp = RacpServer(
            self,
            records=lambda: self.records,
            key=lambda r: r.sequence_number,
            send_record=self._send_record,
            delete=self._delete,
            pace_s=record_interval_s,
        )
        advertisement = Advertisement(name, (const.GLUCOSE_SERVICE_UUID,), rssi=rssi, appearance=0x0400)
        kwargs.setdefault("info", DeviceInformation(model="GLM-1", serial=f"GL-{address[-5:]}"))
        super().__init__(address=address, advertisement=advertisement, **kwargs)

    def profile_services(self) -> Sequence[Service]:
        def char(uuid: str, flags: tuple[Flag, ...], **handlers: Any) -> Characteristic:
            return Characteristic(uuid, flags, encrypted=self.requires_pairing, **handlers)

        glucose = (
            char(const.GLUCOSE_MEASUREMENT_UUID, ("notify",)),
            char(const.GLUCOSE_MEASUREMENT_CONTEXT_UUID, ("notify",)),
            char(const.GLUCOSE_FEATURE_UUID, ("read",), on_read=self._read_features),
            char(const.RECORD_ACCESS_CONTROL_POINT_UUID, ("write", "indicate"), on_write=self._racp),
        )
        flags: tuple[Flag, ...] = ("read", "write") if self.clock_writable else ("read",)
        clock = Characteristic(const.CURRENT_TIME_UUID, flags, on_read=self._read_current_time,
                               on_write=self._write_current_time if self.clock_writable else None)
        return (Service(const.GLUCOSE_SERVICE_UUID, glucose), Service(const.CURRENT_TIME_SERVICE_UUID, (clock,)))

    def add_record(self, mg_dl: float, base_time: datetime, **fields: Any) -> GlucoseRecord:
        """Store a new measurement with the next sequence number."""
        last = self.records[-1].sequence_number if self.records else 0
        record = GlucoseRecord((last + 1) & 0xFFFF, base_time, mg_dl, **fields)
        self.records.append(record)
        return record

    def clock(self) -> datetime:
        """The meter's own (naive, local, possibly skewed) clock."""
        return datetime.now() + self.clock_skew  # noqa: DTZ005 - the meter's clock is local time

    async def _read_features(self) -> bytes:
        return bytes(GlucoseFeature(self.features))

    async def _read_current_time(self) -> bytes:
        now = self.clock()
        fractions = now.microsecond * 256 // 1_000_000
        return bytes(CurrentTime(now.replace(microsecond=0), DayOfWeek(now.isoweekday()), fractions))

    async def _write_current_time(self, data: bytes, with_response: bool) -> None:
        """CTS write (§5): the collector sets the meter's clock; it keeps running from there."""
        try:
            written = CurrentTime.from_bytes(data)
        except GattDecodeError as exc:
            raise AttError(ATT_OUT_OF_RANGE, str(exc)) from exc
        if written.time is None:
            raise AttError(ATT_OUT_OF_RANGE, "the time must be known")
        exact = written.time + timedelta(seconds=written.sub_s)
        self.clock_skew = exact - datetime.now()  # noqa: DTZ005 - the meter's clock is local time
        self.clock_writes.append(written)

    async def _racp(self, data: bytes, with_response: bool) -> None:
        racp = const.RECORD_ACCESS_CONTROL_POINT_UUID
        if data[:1] == bytes([RacpOpCode.ABORT_OPERATION]) and self.racp.busy:
            self.racp.abort()
            return
        if racp not in self.subscriptions:
            raise AttError(const.ATT_ERROR_GLS_CCCD_IMPROPERLY_CONFIGURED, "RACP indications are off")
        if self.racp.busy:
            raise AttError(const.ATT_ERROR_GLS_PROCEDURE_ALREADY_IN_PROGRESS, "procedure already in progress")
        reporting = data[:1] == bytes([RacpOpCode.REPORT_STORED_RECORDS])
        if reporting and const.GLUCOSE_MEASUREMENT_UUID not in self.subscriptions:
            raise AttError(const.ATT_ERROR_GLS_CCCD_IMPROPERLY_CONFIGURED, "measurement notifications are off")
        self.racp.start(data)

    async def _send_record(self, record: GlucoseRecord) -> bool:
        if not await self.notify(const.GLUCOSE_MEASUREMENT_UUID, bytes(record.measurement())):
            return False
        context = record.context()
        if context is not None:
            await self.notify(const.GLUCOSE_MEASUREMENT_CONTEXT_UUID, bytes(context))
        return True

    def _delete(self, selected: list[GlucoseRecord]) -> None:
        doomed = {r.sequence_number for r in selected}
        self.records = [r for r in self.records if r.sequence_number not in doomed]


# ---------------------------------------------------------------------------------------------
# Continuous Glucose Monitoring (§3, §6)


@dataclass(frozen=True, slots=True)
class CgmRecord:
    """A CGM measurement: minutes since session start, mg/dL, optional trend and quality.

    ``status`` is the 24-bit annunciation; the octets (Status, Cal/Temp, Warning) that have a
    bit set are sent.
    """

    time_offset_min: int
    mg_dl: float
    trend: float | None = None
    quality: float | None = None
    status: CgmSensorStatus = CgmSensorStatus(0)  # noqa: RUF009 - an immutable flag value

    def measurement(self, *, e2e_crc: bool) -> CgmMeasurement:
        """The 0x2AA7 record, with its CRC when E2E-CRC is on."""

        def octet(shift: int) -> CgmSensorStatus | None:
            return CgmSensorStatus(self.status & (0xFF << shift)) or None

        record = CgmMeasurement(
            scaled_sfloat(self.mg_dl),
            self.time_offset_min,
            octet(0),  # Status
            octet(8),  # Cal/Temp
            octet(16),  # Warning
            trend=None if self.trend is None else scaled_sfloat(self.trend),
            quality=None if self.quality is None else scaled_sfloat(self.quality),
        )
        return record.with_crc() if e2e_crc else record


def _default_glucose(offset_min: int) -> float:
    """A gentle 3-hour wave around 110 mg/dL, whole numbers like a sensor's output."""
    return float(round(110 + 30 * math.sin(2 * math.pi * offset_min / 180)))


class ContinuousGlucoseMonitor(VirtualPeripheral):
    """A CGM sensor in a running session.

    While 0x2AA7 is subscribed and the session runs it measures every ``interval_s`` seconds of
    real time, each measurement ``measurement_interval_min`` minutes of session time after the
    previous one (``glucose(offset)`` gives the value), stores it in ``records`` and notifies
    it. ``history`` pre-fills ``records``; RACP reports them by time offset (filter ``01``), which
    is how a collector backfills gaps. With ``e2e_crc`` every CGM value carries the CRC and
    every SOCP/RACP/SST write must too (ATT 0x80 missing, 0x81 invalid).
    """

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:00:00:03",
        name: str = "RPM CGM",
        session_start: datetime = datetime(2024, 3, 15, 8, 0, 0),  # noqa: DTZ001 - device-local time
        tz_offset_min: int = 60,
        dst_offset_min: int = 0,
        history: Iterable[CgmRecord] = (),
        e2e_crc: bool = False,
        interval_s: float = 1.0,
        measurement_interval_min: int = 5,
        glucose: Callable[[int], float] = _default_glucose,
        session_running: bool = True,
        run_time_hours: int = 336,
        rssi: int = -71,
        **kwargs: Any,
    ) -> None:
        self.session_start_time = SessionStartTime(session_start, tz_offset_min, dst_offset_min)
        self.records: list[CgmRecord] = sorted(history, key=lambda r: r.time_offset_min)
        self.e2e_crc = e2e_crc
        self.interval_s = interval_s
        self.measurement_interval_min = measurement_interval_min
        self.communication_interval_min = measurement_interval_min
        self.glucose = glucose
        self.session_running = session_running
        self.run_time_hours = run_time_hours
        self.racp = RacpServer(
            self,
            records=lambda: self.records,
            key=lambda r: r.time_offset_min,
            send_record=self._send_record,
            delete=self._delete,
        )
        advertisement = Advertisement(
            name,
            (const.CGM_SERVICE_UUID,),
            service_data={const.CGM_SERVICE_UUID: b"\x01"},
            rssi=rssi,
            appearance=0x0D40,  # Continuous Glucose Monitor
        )
        kwargs.setdefault("info", DeviceInformation(model="CGM-1", serial=f"CG-{address[-5:]}"))
        super().__init__(address=address, advertisement=advertisement, **kwargs)

    # -- GATT table

    def profile_services(self) -> Sequence[Service]:
        def char(uuid: str, flags: tuple[Flag, ...], **handlers: Any) -> Characteristic:
            return Characteristic(uuid, flags, encrypted=self.requires_pairing, **handlers)

        chars = (
            char(const.CGM_MEASUREMENT_UUID, ("notify",)),
            char(const.CGM_FEATURE_UUID, ("read",), on_read=self._read_feature),
            char(const.CGM_STATUS_UUID, ("read",), on_read=self._read_status),
            char(
                const.CGM_SESSION_START_TIME_UUID, ("read", "write"), on_read=self._read_sst, on_write=self._write_sst
            ),
            char(const.CGM_SESSION_RUN_TIME_UUID, ("read",), on_read=self._read_run_time),
            char(const.RECORD_ACCESS_CONTROL_POINT_UUID, ("write", "indicate"), on_write=self._racp),
            char(const.CGM_SPECIFIC_OPS_CONTROL_POINT_UUID, ("write", "indicate"), on_write=self._socp),
        )
        return (Service(const.CGM_SERVICE_UUID, chars),)

    @property
    def session_start(self) -> datetime:
        """Session start, device-local time."""
        assert self.session_start_time.local_time is not None
        return self.session_start_time.local_time

    @property
    def features(self) -> CgmFeatureFlags:
        """The CGM Feature bits this sensor reports."""
        features = CgmFeatureFlags.TREND_INFORMATION | CgmFeatureFlags.QUALITY
        return features | CgmFeatureFlags.E2E_CRC if self.e2e_crc else features

    @property
    def sent(self) -> list[bytes]:
        """The 0x2AA7 values that reached a subscriber (live and backfilled)."""
        return self.notified_values(const.CGM_MEASUREMENT_UUID)

    @property
    def current_offset_min(self) -> int:
        """Minutes since the session start of the newest measurement."""
        return self.records[-1].time_offset_min if self.records else 0

    def _protect(self, value: Any) -> bytes:
        """``bytes(value)``, with the E2E-CRC filled in when the sensor supports it."""
        return bytes(value.with_crc() if self.e2e_crc else value)

    async def _read_feature(self) -> bytes:
        feature = CgmFeature(self.features, SampleType.INTERSTITIAL_FLUID, SampleLocation.SUBCUTANEOUS_TISSUE)
        return bytes(feature.with_crc())  # 0xFFFF placeholder when E2E is unsupported

    async def _read_status(self) -> bytes:
        status = self.records[-1].status if self.records else CgmSensorStatus(0)
        if not self.session_running:
            status |= CgmSensorStatus.SESSION_STOPPED
        return self._protect(CgmStatus(self.current_offset_min, status))

    async def _read_sst(self) -> bytes:
        return self._protect(self.session_start_time)

    async def _write_sst(self, data: bytes, with_response: bool) -> None:
        value = check_e2e_crc(data) if self.e2e_crc else data
        try:
            written = SessionStartTime.from_bytes(value)
        except GattDecodeError as exc:
            raise AttError(ATT_OUT_OF_RANGE, str(exc)) from exc
        if written.local_time is None or written.crc is not None:
            raise AttError(ATT_OUT_OF_RANGE, "session start time must be known and carry no extra bytes")
        # The collector writes its current local time; the sensor stores the real session start
        # by subtracting the elapsed session time (nRF Connect SDK cal_sst_offset()).
        start = written.local_time - timedelta(minutes=self.current_offset_min)
        self.session_start_time = dataclasses.replace(written, local_time=start)

    async def _read_run_time(self) -> bytes:
        return self._protect(SessionRunTime(self.run_time_hours))

    # -- measuring

    def on_subscribe(self, uuid: str, enabled: bool) -> None:
        if uuid == const.CGM_MEASUREMENT_UUID:
            self._schedule_measurements()

    def _schedule_measurements(self) -> None:
        subscribed = const.CGM_MEASUREMENT_UUID in self.subscriptions
        if self.session_running and self.communication_interval_min and subscribed:
            if not self.task_running("measure"):
                self.start_task("measure", self._measure())
        else:
            self.stop_task("measure")

    def measure(self) -> CgmRecord:
        """Take the next measurement and store it."""
        offset = (self.current_offset_min + self.measurement_interval_min) if self.records else 0
        record = CgmRecord(offset & 0xFFFF, self.glucose(offset))
        self.records.append(record)
        return record

    async def _measure(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # the sensor's own measurement clock
            await self._send_record(self.measure())

    async def _send_record(self, record: CgmRecord) -> bool:
        return await self.notify(const.CGM_MEASUREMENT_UUID, bytes(record.measurement(e2e_crc=self.e2e_crc)))

    # -- control points

    async def _racp(self, data: bytes, with_response: bool) -> None:
        request = check_e2e_crc(data) if self.e2e_crc else data
        if request[:1] == bytes([RacpOpCode.ABORT_OPERATION]) and self.racp.busy:
            self.racp.abort()
            return
        if const.RECORD_ACCESS_CONTROL_POINT_UUID not in self.subscriptions:
            raise AttError(const.ATT_ERROR_CGMS_CCCD_IMPROPERLY_CONFIGURED, "RACP indications are off")
        if self.racp.busy:
            raise AttError(const.ATT_ERROR_CGMS_PROCEDURE_ALREADY_IN_PROGRESS, "procedure already in progress")
        self.racp.start(request)

    def _delete(self, selected: list[CgmRecord]) -> None:
        doomed = {r.time_offset_min for r in selected}
        self.records = [r for r in self.records if r.time_offset_min not in doomed]

    async def _socp(self, data: bytes, with_response: bool) -> None:
        request = check_e2e_crc(data) if self.e2e_crc else data
        if const.CGM_SPECIFIC_OPS_CONTROL_POINT_UUID not in self.subscriptions:
            raise AttError(const.ATT_ERROR_CGMS_CCCD_IMPROPERLY_CONFIGURED, "SOCP indications are off")
        if not request:
            raise AttError(ATT_OUT_OF_RANGE, "empty SOCP write")
        self.start_task("socp", self._socp_answer(request[0], request[1:]))

    async def _socp_answer(self, opcode: int, operand: bytes) -> None:
        response: SocpCommunicationInterval | SocpResponse
        if opcode == SocpOpCode.GET_COMMUNICATION_INTERVAL:
            response = SocpCommunicationInterval(self.communication_interval_min)
        else:
            response = SocpResponse(opcode, self._socp_execute(opcode, operand))
        value = bytes(response)
        await self.notify(const.CGM_SPECIFIC_OPS_CONTROL_POINT_UUID, append_e2e_crc(value) if self.e2e_crc else value)

    def _socp_execute(self, opcode: int, operand: bytes) -> SocpResponseCode:
        if opcode == SocpOpCode.SET_COMMUNICATION_INTERVAL:
            if len(operand) != 1:
                return SocpResponseCode.INVALID_OPERAND
            # 0xFF asks for the fastest interval the sensor supports: every measurement.
            self.communication_interval_min = self.measurement_interval_min if operand[0] == 0xFF else operand[0]
        elif opcode in (SocpOpCode.START_SESSION, SocpOpCode.STOP_SESSION):
            if operand:
                return SocpResponseCode.INVALID_OPERAND
            self.session_running = opcode == SocpOpCode.START_SESSION
        else:
            return SocpResponseCode.OP_CODE_NOT_SUPPORTED
        self._schedule_measurements()
        return SocpResponseCode.SUCCESS
