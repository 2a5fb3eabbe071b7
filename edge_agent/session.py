"""Device sessions: one supervised task per paired device, connecting, reading and reconnecting forever.

Every session runs the same loop (:meth:`DeviceSession.run`): find the device, connect
(:mod:`edge_agent.link`), serve it until the link drops or something fails, publish the state, wait
(:func:`~edge_agent.link.reconnect_delay_s`, chosen by what went wrong), again. Nothing a device does
can end the loop: malformed payloads are counted and logged once (:class:`~edge_agent.samples.Problems`),
an unexpected exception is logged with its traceback and treated like a failed connection.

- :class:`HeartRateSession`: notifications → heart rate + each RR interval (the callback decodes
  and ``put_nowait`` s the samples on the outbox writer's bounded queue, nothing else);
- :class:`GlucoseMeterSession`: on every connection, RACP "report records with sequence ≥ last + 1"
  (everything on the first), context records joined by sequence number, the watermark stored in the
  same transaction as the record, de-duplication on (serial, sequence, base time), abort ``03 00``
  when the final indication does not come;
- :class:`CgmSession`: session start time + time offset → UTC, RACP backfill of everything after the
  last stored offset on every (re)connection, E2E-CRC checked (failures rejected and counted),
  annunciations → ``DEVICE_WARNING``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from edge_agent import const, link
from edge_agent.advice import bluetooth_unavailable
from edge_agent.errors import (
    DeviceConnectionError,
    DeviceNotFoundError,
    DeviceProtocolError,
    EdgeAgentError,
    GattDecodeError,
    LinkLostError,
    RacpError,
    RacpTimeoutError,
)
from edge_agent.gatt import (
    AdjustReason,
    BytesLike,
    CgmMeasurement,
    CgmSensorStatus,
    CurrentTime,
    DayOfWeek,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    HeartRateMeasurement,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpResponse,
    RacpResponseCode,
    decode_padded,
    parse_battery_level,
    parse_cgm_feature,
    parse_cgm_measurements,
    parse_cgm_status,
    parse_current_time,
    parse_glucose_context,
    parse_glucose_measurement,
    parse_racp_response,
    parse_session_run_time,
    parse_session_start_time,
    racp_abort,
    racp_report_after,
    racp_report_all,
    racp_report_time_offset_at_least,
)
from edge_agent.outbox import AsyncOutbox, Entry, OutboxWriter
from edge_agent.pairing import DeviceKind, PairedDevice
from edge_agent.samples import (
    Problems,
    cgm_reading_time,
    cgm_sample,
    glucose_sample,
    heart_rate_samples,
    meter_time_to_utc,
    unwrap_offset,
    valid_samples,
)
from edge_agent.status import AlarmSeverity, StatusBoard

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.characteristic import BleakGATTCharacteristic

_LOGGER = logging.getLogger(__name__)

GLUCOSE_WATERMARK: Final = "glucose_last_seq"
# Alarm codes on the status topic (the watchdog makes them technical alerts "tech.device.<code>").
CGM_GAP_ALARM: Final = "cgm_gap"
BATTERY_LOW_ALARM: Final = "battery_low"
BOND_LOST_ALARM: Final = "bond_lost"
DEVICE_SILENT_ALARM: Final = "device_silent"
CGM_SESSION_ENDING_ALARM: Final = "cgm_session_ending"
METER_CLOCK_ALARM: Final = "meter_clock_off"
BLUETOOTH_ALARM: Final = "bluetooth_unavailable"  # about the hub itself: no device
_DEVICE_WORDS: Final = {
    DeviceKind.HEART_RATE: "heart-rate strap",
    DeviceKind.GLUCOSE_METER: "glucose meter",
    DeviceKind.CGM: "glucose sensor (CGM)",
}
# ATT "insufficient authentication/encryption" and BlueZ's "Not paired": the bond is gone.
_BOND_ATT_CODES: Final = frozenset(
    {const.ATT_ERROR_INSUFFICIENT_AUTHENTICATION, const.ATT_ERROR_INSUFFICIENT_ENCRYPTION}
)


def is_bond_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the device refuses us for want of a bond (pair again to fix it)."""
    if not isinstance(exc, DeviceProtocolError):
        return False
    return exc.att_code in _BOND_ATT_CODES or "Not paired" in exc.reason or "NotPaired" in exc.reason
CGM_WATERMARK: Final = "cgm"
_T = TypeVar("_T")
_LINK_LOST: Final = object()  # queued by the disconnect callback: the link is gone


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session shares: the outbox (and its writer), the status board, the policy knobs."""

    writer: OutboxWriter
    outbox: AsyncOutbox
    board: StatusBoard
    backoff_max_s: float = const.DEFAULT_BLE_BACKOFF_MAX_S
    scan_timeout_s: float = const.BLE_SCAN_TIMEOUT_S
    # One scan at a time: BlueZ answers a second StartDiscovery of the same client "InProgress",
    # which every session starting at once used to report as an error (issue 14, item 7).
    scan_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    battery_low_pct: int = const.DEFAULT_BATTERY_LOW_PCT
    # Whether the patient agreed that the agent sets their devices' clocks (Current Time Service).
    set_device_clock: bool = False


class DeviceSession:
    """The supervised connect → serve → back off loop of one device; subclasses implement :meth:`serve`."""

    def __init__(self, device: PairedDevice, ctx: SessionContext) -> None:
        self.device = device
        self.ctx = ctx
        self.device_id = device.device_id
        self.problems = Problems(self.device_id)
        self.problems.on_first = self._publish_problems
        self.connections = 0
        self.started_t = time.time()
        self.last_connected_t: float | None = None
        self.last_reading_t: float | None = None  # device time of the newest reading stored
        self.last_contact_t: float | None = None  # when the newest reading arrived, our clock
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(const.SESSION_QUEUE_MAX_ITEMS)
        ctx.board.register(self.device_id, device.kind.value)

    # -- the supervised loop

    async def run(self) -> None:
        """Serve the device until cancelled, reconnecting with backoff."""
        attempt = 0
        while True:
            connections = self.connections
            error: BaseException | None = None
            try:
                await self._connect_and_serve()
            except LinkLostError:
                pass  # reconnect promptly
            except EdgeAgentError as exc:
                error = exc
                self._failed(exc)
            except Exception as exc:  # a bug: never let it take the other devices down
                _LOGGER.exception("%s: session failed", self.device_id)
                error = exc
                self._status("error", error=repr(exc))
            if self.connections > connections:
                attempt = 0  # it connected: whatever happened next, start the backoff from the bottom
            delay = link.reconnect_delay_s(error, attempt, cap_s=self.ctx.backoff_max_s)
            attempt += 1
            _LOGGER.info("%s: reconnecting in %.1f s (%s)", self.device_id, delay, error or "link lost")
            await asyncio.sleep(delay)

    def _failed(self, exc: EdgeAgentError) -> None:
        """Publish why the session stopped; a lost bond is an alarm (only pairing again fixes it), and
        so is Bluetooth being unusable on this computer (no device can be reached then)."""
        unreachable = isinstance(exc, DeviceConnectionError | DeviceNotFoundError)
        self._status("unreachable" if unreachable else "error", error=str(exc))
        advice = bluetooth_unavailable(exc)
        if advice is not None:
            self.ctx.board.alarm(
                BLUETOOTH_ALARM, active=True, severity="critical", remedy=advice,
                message="the home hub's Bluetooth cannot be used, so none of the patient's devices can be read",
            )
        elif isinstance(exc, DeviceNotFoundError):
            self._bluetooth_works()  # the scan ran: Bluetooth is fine, the device is away
        if is_bond_lost(exc):
            self.ctx.board.alarm(
                BOND_LOST_ALARM, active=True, device=self.device_id, severity="critical",
                message=f"the {self._what} no longer accepts this home hub: its pairing was lost (the device was "
                        "reset or paired elsewhere), so no readings arrive from it",
                remedy=f"pair it again at home: rpm edge pair --patient {self.ctx.board.patient} "
                       f"--address {self.device.address}",
            )

    def _bluetooth_works(self) -> None:
        if self.ctx.board.alarm_active(BLUETOOTH_ALARM):
            self.ctx.board.alarm(BLUETOOTH_ALARM, active=False, message="the home hub's Bluetooth works again")

    @property
    def _what(self) -> str:
        return _DEVICE_WORDS[self.device.kind]

    async def _connect_and_serve(self) -> None:
        self._status("connecting", error=None)
        async with self.ctx.scan_lock:
            ble_device = await link.find_device(self.device.address, scan_timeout_s=self.ctx.scan_timeout_s)
        self._bluetooth_works()
        self._drain_inbox()
        client = await link.connect(
            ble_device, name=self.device.name or self.device_id, on_disconnect=self._on_link_lost
        )
        self.connections += 1
        self.last_connected_t = time.time()
        _LOGGER.info("%s: connected", self.device_id)
        try:
            self._status("connected", error=None)
            await self._read_battery(client)
            await self.serve(client)
        finally:
            await link.disconnect(client)
            self._status("disconnected")

    def _on_link_lost(self) -> None:
        _LOGGER.info("%s: link lost", self.device_id)
        self._put(_LINK_LOST)

    def _put(self, item: object) -> None:
        try:
            self._inbox.put_nowait(item)
        except asyncio.QueueFull:
            self.problems.add("notification queue full, dropped")

    def _drain_inbox(self) -> None:
        while not self._inbox.empty():
            self._inbox.get_nowait()

    async def _next(self) -> Any:
        """The next decoded notification; :class:`DeviceConnectionError` when the link dropped."""
        item = await self._inbox.get()
        if item is _LINK_LOST:
            raise LinkLostError(self.device.address)
        return item

    async def _wait_for_link_loss(self) -> None:
        while True:
            await self._next()

    async def serve(self, client: BleakClient) -> None:
        """Read the device until the link drops (raise :class:`DeviceConnectionError`) or fails."""
        raise NotImplementedError

    # -- status

    def _status(self, state: str, **changes: Any) -> None:
        self.ctx.board.update(self.device_id, state=state, problems=dict(self.problems.counts), **changes)

    def _publish_problems(self) -> None:
        self.ctx.board.update(self.device_id, problems=dict(self.problems.counts))

    async def _read_battery(self, client: BleakClient) -> None:
        data = await link.read_optional(client, const.BATTERY_LEVEL_UUID)
        if data is not None:
            self._on_battery(None, bytearray(data))
        if link.has_characteristic(client, const.BATTERY_LEVEL_UUID, "notify"):
            await link.subscribe(client, const.BATTERY_LEVEL_UUID, self._on_battery)

    def _on_battery(self, _char: BleakGATTCharacteristic | None, data: bytearray) -> None:
        try:
            percent = self._padded(parse_battery_level, data)
        except GattDecodeError as exc:
            self.problems.add("malformed battery level", exc)
            return
        known = self.ctx.board.devices.get(self.device_id)
        if known is not None and known.battery_pct != percent:
            self.ctx.board.update(self.device_id, battery_pct=percent)
        self._check_battery(percent)

    def _check_battery(self, percent: int) -> None:
        """``battery_low`` alarm at or below the configured level; cleared a few % above it (hysteresis)."""
        board, low = self.ctx.board, self.ctx.battery_low_pct
        if percent <= low:
            critical = percent <= const.BATTERY_CRITICAL_PCT
            board.alarm(
                BATTERY_LOW_ALARM, active=True, device=self.device_id, severity="critical" if critical else "warning",
                message=f"the {self._what}'s battery is at {percent} %", battery_pct=percent,
                remedy=f"replace or charge the {self._what}'s battery soon"
                       + (" (it may stop any moment)" if critical else ""),
            )
        elif percent >= low + const.BATTERY_LOW_HYSTERESIS_PCT and board.alarm_active(
            BATTERY_LOW_ALARM, self.device_id
        ):
            board.alarm(BATTERY_LOW_ALARM, active=False, device=self.device_id, battery_pct=percent,
                        message=f"the {self._what}'s battery is at {percent} % again")

    def _note_readings(self, samples: tuple[Any, ...]) -> None:
        """Remember when the device last gave a reading; a reading proves the bond works."""
        if not samples:
            return
        self.last_contact_t = time.time()
        newest = max(s[1] for s in samples)
        self.last_reading_t = newest if self.last_reading_t is None else max(newest, self.last_reading_t)
        if self.ctx.board.alarm_active(BOND_LOST_ALARM, self.device_id):
            self.ctx.board.alarm(BOND_LOST_ALARM, active=False, device=self.device_id,
                                 message=f"the {self._what} is paired again and sends readings")

    def _padded(self, decode: Callable[[BytesLike], _T], data: bytearray) -> _T:
        """``decode(data)``, ignoring and counting trailing bytes the flags do not announce (issue 14)."""
        value, trailing = decode_padded(decode, data)
        if trailing:
            self.problems.add("padded notification (trailing bytes ignored)", f"{trailing} byte(s)")
        return value

    def _submit(self, samples: list[Any], **entry: Any) -> None:
        valid = valid_samples(samples, self.problems)
        self.ctx.writer.submit_nowait(Entry(self.device_id, valid, **entry))
        self._note_readings(valid)


class HeartRateSession(DeviceSession):
    """A heart-rate strap or watch: HRS notifications become heart rate and RR-interval readings."""

    async def serve(self, client: BleakClient) -> None:
        """Subscribe to 0x2A37 and stay until the link drops."""
        await link.subscribe(client, const.HEART_RATE_MEASUREMENT_UUID, self._on_measurement)
        await self._wait_for_link_loss()

    def _on_measurement(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        received = time.time()
        try:
            measurement = self._padded(HeartRateMeasurement.from_bytes, data)
        except GattDecodeError as exc:
            self.problems.add("malformed heart rate measurement", exc)
            return
        samples = valid_samples(heart_rate_samples(measurement, received), self.problems, received)
        if samples:
            self.ctx.writer.submit_nowait(Entry(self.device_id, samples))
            self._note_readings(samples)


class GlucoseMeterSession(DeviceSession):
    """A blood glucose meter: stored records fetched through the Record Access Control Point."""

    def __init__(self, device: PairedDevice, ctx: SessionContext) -> None:
        super().__init__(device, ctx)
        self.last_seq: int | None = None
        self.clock_set = False
        self._clock_alarm_offset_s: float | None = None  # the offset the active clock alarm announced
        self._clock_skew = timedelta(0)

    async def serve(self, client: BleakClient) -> None:
        """Sync on connection, and again every few minutes while the meter stays connected."""
        stored = await self.ctx.outbox.watermark(self.device_id, GLUCOSE_WATERMARK)
        self.last_seq = None if stored is None else int(stored)
        self._clock_skew = await self._meter_clock(client)
        await link.subscribe(client, const.GLUCOSE_MEASUREMENT_UUID, self._on_measurement)
        if link.has_characteristic(client, const.GLUCOSE_MEASUREMENT_CONTEXT_UUID, "notify"):
            await link.subscribe(client, const.GLUCOSE_MEASUREMENT_CONTEXT_UUID, self._on_context)
        await link.subscribe(client, const.RECORD_ACCESS_CONTROL_POINT_UUID, self._on_racp)
        while True:
            if await self.sync(client):
                await self._check_clock_after_sync(client)
            await self._maybe_set_clock(client)
            try:
                async with asyncio.timeout(const.GLUCOSE_RESYNC_INTERVAL_S):
                    await self._wait_for_link_loss()
            except TimeoutError:
                continue

    async def _meter_clock(self, client: BleakClient) -> timedelta:
        """The meter's clock skew (issue 14, item 8); an alarm when it is far off.

        Base times come from the meter's own clock, so the records it stored are corrected by the
        skew measured here, before anything changes its clock.
        """
        skew = await self._read_clock_skew(client)
        self._check_clock(skew)
        return skew

    async def _maybe_set_clock(self, client: BleakClient) -> None:
        """With the patient's consent (``RPM_EDGE_SET_DEVICE_CLOCK``), set a wrong meter clock through
        Current Time once the records stamped by it are stored (their correction needs the old skew)."""
        if not self.ctx.set_device_clock or abs(self._clock_skew.total_seconds()) <= const.METER_CLOCK_SET_THRESHOLD_S:
            return
        if await self._set_clock(client):
            self._clock_skew = await self._read_clock_skew(client)
            self._check_clock(self._clock_skew)

    async def _set_clock(self, client: BleakClient) -> bool:
        if not link.has_characteristic(client, const.CURRENT_TIME_UUID, "write"):
            return False
        now = datetime.now(UTC).astimezone().replace(tzinfo=None)
        value = CurrentTime(now.replace(microsecond=0), DayOfWeek(now.isoweekday()), now.microsecond * 256 // 10**6,
                            AdjustReason.EXTERNAL_REFERENCE_TIME_UPDATE)
        try:
            await link.write(client, const.CURRENT_TIME_UUID, bytes(value))
        except EdgeAgentError as exc:
            self.problems.add("the meter refused to have its clock set", exc)
            return False
        _LOGGER.info("%s: meter clock set (it was %.0f s off)", self.device_id, self._clock_skew.total_seconds())
        self.clock_set = True
        return True

    def _check_clock(self, skew: timedelta) -> None:
        off_s = skew.total_seconds()
        board = self.ctx.board
        if abs(off_s) > const.METER_CLOCK_TOLERANCE_S:
            announced = self._clock_alarm_offset_s
            if (announced is not None and board.alarm_active(METER_CLOCK_ALARM, self.device_id)
                    and abs(off_s - announced) <= const.METER_CLOCK_JUMP_S):
                return  # the alarm already says so: a read a second later differs by one, which is not news
            self._clock_alarm_offset_s = off_s
            direction = "ahead" if off_s > 0 else "behind"
            board.alarm(
                METER_CLOCK_ALARM, active=True, device=self.device_id, severity="warning", clock_offset_s=off_s,
                message=f"the glucose meter's clock is {_span(abs(off_s))} {direction}; reading times are corrected "
                        "for it, but a clock that far off was probably reset (battery change?)",
                remedy="set the meter's date and time (its manual says how), or allow the home hub to set it "
                       "(RPM_EDGE_SET_DEVICE_CLOCK=1)",
            )
        elif board.alarm_active(METER_CLOCK_ALARM, self.device_id):
            board.alarm(METER_CLOCK_ALARM, active=False, device=self.device_id, clock_offset_s=off_s,
                        message="the glucose meter's clock is right again")

    async def _check_clock_after_sync(self, client: BleakClient) -> None:
        """A clock that moved during the sync makes that sync's times uncertain: say so."""
        skew = await self._read_clock_skew(client)
        jump = abs((skew - self._clock_skew).total_seconds())
        if jump > const.METER_CLOCK_JUMP_S:
            self.problems.add("meter clock changed during a sync", f"{jump:.0f} s")
            self._clock_alarm_offset_s = skew.total_seconds()
            self.ctx.board.alarm(
                METER_CLOCK_ALARM, active=True, device=self.device_id, severity="warning",
                clock_offset_s=skew.total_seconds(),
                message=f"the glucose meter's clock changed by {_span(jump)} during a transfer: the times of the "
                        "readings just sent may be off by that much",
                remedy="check the meter's date and time",
            )
        else:
            self._check_clock(skew)
        self._clock_skew = skew

    async def _read_clock_skew(self, client: BleakClient) -> timedelta:
        """The meter's clock minus ours (Current Time 0x2A2B), to put its local times on UTC."""
        data = await link.read_optional(client, const.CURRENT_TIME_UUID)
        if data is None:
            return timedelta(0)
        try:
            meter_now = parse_current_time(data).time
        except GattDecodeError as exc:
            self.problems.add("malformed current time", exc)
            return timedelta(0)
        if meter_now is None:
            return timedelta(0)
        ours = datetime.now(UTC).astimezone().replace(tzinfo=None)
        return timedelta(seconds=round((meter_now - ours).total_seconds()))

    def _on_measurement(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        try:
            self._put(self._padded(parse_glucose_measurement, data))
        except GattDecodeError as exc:
            self.problems.add("malformed glucose measurement", exc)

    def _on_context(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        try:
            self._put(self._padded(parse_glucose_context, data))
        except GattDecodeError as exc:
            self.problems.add("malformed glucose context", exc)

    def _on_racp(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        try:
            self._put(parse_racp_response(data))
        except GattDecodeError as exc:
            self.problems.add("malformed RACP response", exc)

    async def sync(self, client: BleakClient) -> int:
        """One RACP transfer of the records after :attr:`last_seq`; the number of records received."""
        await link.write(client, const.RECORD_ACCESS_CONTROL_POINT_UUID, racp_report_after(self.last_seq))
        idle_s = const.GLUCOSE_RACP_IDLE_TIMEOUT_S
        try:
            async with asyncio.timeout(idle_s) as silence:
                futures = await self._receive_records(silence, idle_s)
        except TimeoutError:
            await self._abort(client)
            raise RacpTimeoutError(self.device.address, idle_s) from None
        if futures:
            await asyncio.gather(*futures)  # committed, watermark included, before we call it synced
            _LOGGER.info(
                "%s: %d record(s) synced, last sequence number %s", self.device_id, len(futures), self.last_seq
            )
        return len(futures)

    async def _abort(self, client: BleakClient) -> None:
        try:
            await link.write(client, const.RECORD_ACCESS_CONTROL_POINT_UUID, racp_abort())
        except EdgeAgentError as exc:
            _LOGGER.debug("%s: abort: %s", self.device_id, exc)

    async def _receive_records(self, silence: asyncio.Timeout, idle_s: float) -> list[asyncio.Future[Any]]:
        """Records until the final indication; ``silence`` expires only after ``idle_s`` without any."""
        futures: list[asyncio.Future[Any]] = []
        pending: GlucoseMeasurement | None = None
        loop = asyncio.get_running_loop()
        while True:
            item = await self._next()
            silence.reschedule(loop.time() + idle_s)  # a meter still sending is not hung (issue 14)
            if pending is not None and not _is_context_of(item, pending):
                futures.append(await self._store(pending, None))
                pending = None
            if isinstance(item, GlucoseMeasurement):
                if item.context_follows:
                    pending = item
                else:
                    futures.append(await self._store(item, None))
            elif isinstance(item, GlucoseMeasurementContext):
                if pending is None:
                    self.problems.add("context record without its measurement", item.sequence_number)
                else:
                    futures.append(await self._store(pending, item))
                    pending = None
            elif self._finished(item):
                return futures

    def _finished(self, item: object) -> bool:
        if isinstance(item, RacpNumberOfRecords):
            return False
        if not isinstance(item, RacpResponse) or item.request_opcode != RacpOpCode.REPORT_STORED_RECORDS:
            self.problems.add("unexpected RACP indication", item)
            return False
        if item.response_code in (RacpResponseCode.SUCCESS, RacpResponseCode.NO_RECORDS_FOUND):
            return True
        raise RacpError(self.device.address, item.response_code.name)

    async def _store(
        self, measurement: GlucoseMeasurement, context: GlucoseMeasurementContext | None
    ) -> asyncio.Future[Any]:
        seq = measurement.sequence_number
        samples: tuple[Any, ...] = ()
        local = measurement.user_facing_time
        if local is None:
            self.problems.add("glucose record with an unknown time", seq)
        else:
            sample = glucose_sample(measurement, meter_time_to_utc(local, self._clock_skew), self.problems)
            samples = valid_samples([sample], self.problems) if sample is not None else ()
        if context is not None:
            _LOGGER.debug("%s: record %d context meal=%s", self.device_id, seq, context.meal)
        base = measurement.base_time.isoformat() if measurement.base_time else "-"
        entry = Entry(
            self.device_id,
            samples,
            dedupe_key=f"gls|{self.device.identity}|{seq}|{base}",
            watermark=(GLUCOSE_WATERMARK, str(seq)),
        )
        self.last_seq = seq
        self._note_readings(samples)
        return await self.ctx.writer.enqueue(entry)


def _span(seconds: float) -> str:
    """``3 h 5 min``, ``12 min``, ``40 s``: a duration for a nurse."""
    minutes = round(seconds / 60)
    if minutes >= 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    if minutes >= 1 and seconds >= 60:
        return f"{minutes} min"
    return f"{seconds:.0f} s"


def _is_context_of(item: object, measurement: GlucoseMeasurement) -> bool:
    return isinstance(item, GlucoseMeasurementContext) and item.sequence_number == measurement.sequence_number


@dataclass(frozen=True, slots=True)
class _CgmSession:
    """The sensor session being read: its start in UTC and whether values carry an E2E-CRC."""

    key: str
    start_utc: datetime
    e2e_crc: bool


class CgmSession(DeviceSession):
    """A continuous glucose monitor: live notifications, and a RACP backfill after every (re)connection.

    No record the sensor still holds is lost (issue 14, item 1). A record that fails its E2E-CRC,
    or a record newer than the next one expected (the ones between never arrived), opens a
    *hole*: :attr:`resume_from` (persisted with the watermark) stays at the offset after the last
    record stored before it, and the records from there are asked for again at once
    through RACP (and on every reconnection while the hole is open); records already stored come
    back as duplicates and are dropped by their de-duplication key. A hole the sensor cannot fill
    (the record fails again :data:`~edge_agent.const.CGM_REFETCH_ATTEMPTS` times, or the sensor no
    longer holds it) is reported as a ``cgm_gap`` alarm naming the missing span.
    """

    def __init__(self, device: PairedDevice, ctx: SessionContext) -> None:
        super().__init__(device, ctx)
        self.last_offset: int | None = None  # unwrapped minutes since session start
        self.resume_from: int | None = None  # first offset of an open hole (a record failed its CRC)
        self.crc_failures = 0
        self.refetches = 0
        self.gaps: list[tuple[int, int]] = []  # unfillable holes reported: (last before, first after)
        self.session_end: datetime | None = None
        self.session_stopped = False
        self._session_alarm: tuple[str, str] | None = None
        self._min_step: int | None = None  # the sensor's measurement interval, as seen so far
        self._refetch_attempts = 0
        self._refetch_due = False
        # Offsets stored lately, to find what a refetch could not fill.
        self._stored: collections.deque[int] = collections.deque(maxlen=const.CGM_OFFSETS_REMEMBERED)
        self._session: _CgmSession | None = None

    async def serve(self, client: BleakClient) -> None:
        """Read the session, subscribe, backfill what was missed, then stream."""
        session = await self._read_session(client)
        self._session = session
        await self._load_watermark(session)
        await link.subscribe(client, const.CGM_MEASUREMENT_UUID, self._on_measurement)
        await link.subscribe(client, const.RECORD_ACCESS_CONTROL_POINT_UUID, self._on_racp)
        if self.resume_from is not None:
            await self._refetch(client, session)  # a hole is open (persisted): fill it first
        else:
            await self._backfill(client, session, self._backfill_start())
        while True:
            if self._refetch_due:
                await self._refetch(client, session)
            self._accept(await self._next(), session)

    async def _read_session(self, client: BleakClient) -> _CgmSession:
        feature_bytes = await link.read_optional(client, const.CGM_FEATURE_UUID)
        e2e = False
        if feature_bytes is not None:
            try:
                e2e = parse_cgm_feature(feature_bytes).e2e_crc
            except GattDecodeError as exc:
                self.problems.add("malformed CGM feature", exc)
        sst = parse_session_start_time(await link.read(client, const.CGM_SESSION_START_TIME_UUID))
        if e2e and not sst.crc_ok:
            raise DeviceProtocolError(client.address, "session start time failed its E2E-CRC")
        start = sst.utc
        if start is None and sst.local_time is not None:  # time zone unknown: assume ours
            start = sst.local_time.astimezone(UTC)
        if start is None:
            raise DeviceProtocolError(client.address, "the sensor has no session start time")
        await self._read_session_end(client, start, e2e)
        return _CgmSession(key=start.isoformat(), start_utc=start, e2e_crc=e2e)

    async def _read_session_end(self, client: BleakClient, start: datetime, e2e: bool) -> None:
        """When the sensor session ends (start + Session Run Time), and whether it stopped already."""
        run_time = await link.read_optional(client, const.CGM_SESSION_RUN_TIME_UUID)
        status = await link.read_optional(client, const.CGM_STATUS_UUID)
        try:
            if run_time is not None:
                hours = parse_session_run_time(run_time).run_time_hours
                self.session_end = start + timedelta(hours=hours) if hours else None
            if status is not None:
                flags = parse_cgm_status(status).status_flags
                self.session_stopped = CgmSensorStatus.SESSION_STOPPED in flags
        except GattDecodeError as exc:
            self.problems.add("malformed CGM session run time or status", exc)
        self._check_session_end(time.time())

    def _check_session_end(self, now: float) -> None:
        """``cgm_session_ending`` a day before the session ends (critical once it has ended)."""
        board = self.ctx.board
        end = self.session_end
        remaining = None if end is None else end.timestamp() - now
        ended = self.session_stopped or (remaining is not None and remaining <= 0)
        if ended:
            severity: AlarmSeverity = "critical"
            message = "the CGM sensor session has ended: no new glucose readings will come from this sensor"
        elif remaining is not None and remaining < const.CGM_SESSION_ENDING_WARN_S:
            severity, message = "warning", f"the CGM sensor session ends in {_span(remaining)}"
        else:
            if board.alarm_active(CGM_SESSION_ENDING_ALARM, self.device_id):
                board.alarm(CGM_SESSION_ENDING_ALARM, active=False, device=self.device_id,
                            message="a new CGM sensor session is running")
            return
        if board.alarm_active(CGM_SESSION_ENDING_ALARM, self.device_id) and self._session_alarm == (severity, message):
            return
        self._session_alarm = (severity, message)
        board.alarm(CGM_SESSION_ENDING_ALARM, active=True, device=self.device_id, severity=severity, message=message,
                    session_end=None if end is None else end.timestamp(),
                    remedy="have the patient insert a new sensor and start a new session (its app or manual)")

    async def _load_watermark(self, session: _CgmSession) -> None:
        stored = await self.ctx.outbox.watermark(self.device_id, CGM_WATERMARK)
        doc = json.loads(stored) if stored else {}
        same = doc.get("session") == session.key
        self.last_offset = doc.get("offset") if same else None
        self.resume_from = doc.get("resume") if same else None
        self._refetch_due = False
        if self.last_offset is not None and self.last_offset not in self._stored:
            self._stored.append(self.last_offset)  # stored before a restart: where a gap would start

    def _backfill_start(self) -> int | None:
        """The first offset to ask for: the open hole, else after the last stored (None: everything)."""
        if self.resume_from is not None:
            return self.resume_from
        return None if self.last_offset is None else self.last_offset + 1

    def _on_measurement(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        session = self._session
        try:
            records = parse_cgm_measurements(data, e2e_crc=bool(session and session.e2e_crc))
        except GattDecodeError as exc:
            self.problems.add("malformed CGM measurement", exc)
            return
        for record in records:
            self._put(record)

    def _on_racp(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        # With E2E-CRC our RACP *writes* must carry the CRC (§6); sensors differ on whether their
        # indications do, so accept a response with a valid CRC, or a plain one.
        e2e = bool(self._session and self._session.e2e_crc)
        try:
            self._put(parse_racp_response(data, e2e_crc=e2e))
            return
        except GattDecodeError as exc:
            error = exc
        if e2e:
            try:
                self._put(parse_racp_response(data))
                return
            except GattDecodeError:
                pass
        self.problems.add("malformed RACP response", error)

    async def _backfill(self, client: BleakClient, session: _CgmSession, start: int | None) -> bool:
        """Ask for every record from ``start`` (None: all); live records arriving meanwhile wait, so
        that everything is stored in time-offset order. True if the sensor said it sent them all."""
        if start is None:
            request = racp_report_all(e2e_crc=session.e2e_crc)
        else:
            raw = start % const.CGM_TIME_OFFSET_WRAP_MIN
            request = racp_report_time_offset_at_least(raw, e2e_crc=session.e2e_crc)
        await link.write(client, const.RECORD_ACCESS_CONTROL_POINT_UUID, request)
        held: list[CgmMeasurement] = []
        complete = False
        idle_s = const.CGM_RACP_IDLE_TIMEOUT_S
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(idle_s) as silence:
                while not self._backfill_done(item := await self._next()):
                    silence.reschedule(loop.time() + idle_s)  # times out on silence, not on length
                    if isinstance(item, CgmMeasurement):
                        held.append(item)
            complete = True
        except TimeoutError:
            self.problems.add("CGM backfill timed out (aborted)")
            await self._abort(client, session)
        except RacpError as exc:
            self.problems.add("CGM backfill refused", exc.response)
        base = self.last_offset if start is None else start - 1
        for record in sorted(held, key=lambda r: unwrap_offset(r.time_offset_min, base)):
            self._accept(record, session)
        if held:
            _LOGGER.info(
                "%s: backfill delivered %d record(s), last offset %s", self.device_id, len(held), self.last_offset
            )
        return complete

    async def _refetch(self, client: BleakClient, session: _CgmSession) -> None:
        """Ask again for the records of the open hole; report it as a gap once it cannot be filled."""
        self._refetch_due = False
        if self.resume_from is None:
            return
        self._refetch_attempts += 1
        self.refetches += 1
        failures = self.crc_failures
        _LOGGER.info("%s: asking the sensor again for the records from offset %d (attempt %d)",
                     self.device_id, self.resume_from, self._refetch_attempts)
        complete = await self._backfill(client, session, self.resume_from)
        if complete and self.crc_failures == failures:
            self._close_hole(session)  # all it holds from there arrived intact; what is missing is gone
        elif self._refetch_attempts >= const.CGM_REFETCH_ATTEMPTS:
            self._close_hole(session)  # it keeps failing: give up, report the gap
        else:
            self._refetch_due = True

    def _close_hole(self, session: _CgmSession) -> None:
        assert self.resume_from is not None
        for before, after in self._missing_since(self.resume_from):
            self._report_gap(session, before, after)
        self.resume_from = None
        self._refetch_attempts = 0
        self._submit([], watermark=(CGM_WATERMARK, self._watermark(session)))

    def _missing_since(self, start: int) -> list[tuple[int, int]]:
        """Spans (last stored before, first stored after) from ``start - 1`` on with records missing.

        The sensor's measurement interval is the smallest step between stored records; a step of
        more than 1.5 intervals skipped at least one record.
        """
        stored = sorted(set(self._stored))
        steps = [b - a for a, b in itertools.pairwise(stored) if b > a]
        interval = min(steps) if steps else const.CGM_DEFAULT_INTERVAL_MIN
        window = [o for o in stored if o >= start - interval]
        return [(a, b) for a, b in itertools.pairwise(window) if b - a > 1.5 * interval and b >= start]

    def _report_gap(self, session: _CgmSession, before: int, after: int) -> None:
        self.gaps.append((before, after))
        first = cgm_reading_time(session.start_utc, before)
        last = cgm_reading_time(session.start_utc, after)
        message = (f"CGM readings between {first:%Y-%m-%d %H:%M} and {last:%H:%M} UTC are missing: they were lost "
                   "or damaged on the way and the sensor can no longer send them again")
        _LOGGER.warning("%s: %s", self.device_id, message)
        self.ctx.board.alarm(
            CGM_GAP_ALARM, active=True, device=self.device_id, severity="warning", message=message,
            remedy="no action needed for the sensor; check the patient with a fingerstick if a reading in that "
                   "span matters",
            gap={"from": first.timestamp(), "to": last.timestamp()},
        )

    def _backfill_done(self, item: object) -> bool:
        if not isinstance(item, RacpResponse):
            return False
        if item.response_code in (RacpResponseCode.SUCCESS, RacpResponseCode.NO_RECORDS_FOUND):
            return True
        raise RacpError(self.device.address, item.response_code.name)

    async def _abort(self, client: BleakClient, session: _CgmSession) -> None:
        try:
            await link.write(client, const.RECORD_ACCESS_CONTROL_POINT_UUID, racp_abort(e2e_crc=session.e2e_crc))
        except EdgeAgentError as exc:
            _LOGGER.debug("%s: abort: %s", self.device_id, exc)

    def _accept(self, item: object, session: _CgmSession) -> None:
        if not isinstance(item, CgmMeasurement):
            return  # a late RACP indication
        if not item.crc_ok:
            self._crc_failed(session, item)
            return
        if CgmSensorStatus.SESSION_STOPPED in item.status_flags and not self.session_stopped:
            self.session_stopped = True
            self._check_session_end(time.time())
        offset = unwrap_offset(item.time_offset_min, self.last_offset)
        in_hole = self.resume_from is not None and offset >= self.resume_from
        if self.last_offset is not None and offset <= self.last_offset and not in_hole:
            return  # already stored (live and backfilled copies of the same record)
        self._note_skip(offset)
        sample = cgm_sample(item, cgm_reading_time(session.start_utc, offset), self.problems)
        if self.last_offset is not None and offset > self.last_offset:
            step = offset - self.last_offset
            self._min_step = step if self._min_step is None else min(step, self._min_step)
        self.last_offset = offset if self.last_offset is None else max(offset, self.last_offset)
        self._stored.append(offset)
        self._submit(
            [sample] if sample else [],
            watermark=(CGM_WATERMARK, self._watermark(session)),
            dedupe_key=f"cgm|{self.device.identity}|{session.key}|{offset}",
        )

    def _note_skip(self, offset: int) -> None:
        """A record newer than the next expected one: the ones between never arrived (lost on the air,
        or taken while we were away and not in the backfill). Ask the sensor for them again."""
        if self.resume_from is not None or self.last_offset is None:
            return
        interval = self._min_step or const.CGM_DEFAULT_INTERVAL_MIN
        if offset - self.last_offset > 1.5 * interval:
            _LOGGER.info("%s: records between offsets %d and %d missing; asking for them again",
                         self.device_id, self.last_offset, offset)
            self.resume_from = self.last_offset + 1
            self._refetch_due = True

    def _crc_failed(self, session: _CgmSession, item: CgmMeasurement) -> None:
        """A damaged record: its offset cannot be trusted, so the hole starts after the last stored one."""
        self.crc_failures += 1
        self.problems.add("CGM record failed its E2E-CRC (asked for again)", item.time_offset_min)
        if self.resume_from is None:
            self.resume_from = 0 if self.last_offset is None else self.last_offset + 1
            self._submit([], watermark=(CGM_WATERMARK, self._watermark(session)))
        self._refetch_due = True

    def _watermark(self, session: _CgmSession) -> str:
        return json.dumps({"session": session.key, "offset": self.last_offset, "resume": self.resume_from})


SESSION_CLASSES: Final = {
    DeviceKind.HEART_RATE: HeartRateSession,
    DeviceKind.GLUCOSE_METER: GlucoseMeterSession,
    DeviceKind.CGM: CgmSession,
}


def make_session(device: PairedDevice, ctx: SessionContext) -> DeviceSession:
    """The session class for the device's kind."""
    cls: type[DeviceSession] = SESSION_CLASSES[device.kind]
    return cls(device, ctx)
