"""A device's own trouble becomes an alarm status message (issue 14, item 6; item 8 for the clock).

Emulated BlueZ (real bleak) and a real Mosquitto. Each alarm follows the contract of the lead's
watchdog (COMMON.md, "Technical alerts: the contract"): ``{"kind": "alarm", "alarm": code,
"active": true|false, "device", "severity", "message", "remedy"}`` on ``rpm/v1/p/{patient}/status``,
re-sent on every reconnection while active, ended by ``"active": false``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent import const
from edge_agent.gatt import HeartRateMeasurement, SensorContact
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry
from edge_agent.session import GlucoseMeterSession
from simulators.ble_devices import ContinuousGlucoseMonitor, GlucoseMeter, GlucoseRecord, HeartRateStrap
from simulators.bluez import EmulatedBluez

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("edge_bluez_prerequisites")]

PATIENT = "p0001"


def registry(device: Any, kind: DeviceKind) -> Registry:
    return Registry(patient=PATIENT, devices=(PairedDevice(
        address=device.address, kind=kind, name="dev", info=DeviceInfo(serial=device.info.serial), bonded=True),))


def alarms(watcher: Any, code: str) -> list[dict[str, Any]]:
    return [a for a in watcher.statuses("alarm") if a["alarm"] == code]


def check_contract(alarm: dict[str, Any], device: str) -> None:
    assert alarm["v"] == 1 and alarm["patient"] == PATIENT and alarm["kind"] == "alarm"
    assert alarm["device"] == device
    if alarm["active"]:
        assert alarm["severity"] in ("warning", "critical")
        assert alarm["message"] and alarm["remedy"]


async def test_battery_low_is_raised_worsens_and_clears(agent_in_process, watcher, wait_until) -> None:
    strap = HeartRateStrap(battery_level=60, interval_s=0.2)
    device = f"hr-{strap.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        async with agent_in_process(registry(strap, DeviceKind.HEART_RATE), battery_low_pct=25):
            await wait_until(lambda: strap.battery_level == 60 and const.BATTERY_LEVEL_UUID in strap.subscriptions,
                             what="battery notifications on")
            assert await strap.set_battery_level(24)
            await wait_until(lambda: len(alarms(watcher, "battery_low")) == 1, what="battery_low raised")
            assert await strap.set_battery_level(4)
            await wait_until(lambda: len(alarms(watcher, "battery_low")) == 2, what="battery_low critical")
            assert await strap.set_battery_level(27)  # inside the hysteresis: still low
            assert await strap.set_battery_level(90)
            await wait_until(lambda: len(alarms(watcher, "battery_low")) == 3, what="battery_low cleared")
    raised, worse, cleared = alarms(watcher, "battery_low")
    for alarm in (raised, worse, cleared):
        check_contract(alarm, device)
    assert (raised["active"], raised["severity"], raised["battery_pct"]) == (True, "warning", 24)
    assert (worse["active"], worse["severity"], worse["battery_pct"]) == (True, "critical", 4)
    assert (cleared["active"], cleared["battery_pct"]) == (False, 90)
    assert "battery" in raised["remedy"]


async def test_a_cgm_session_about_to_end_and_one_that_ended(agent_in_process, watcher, wait_until) -> None:
    now_utc = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    # local = UTC + 60 min (the sensor's time zone); 336 h sessions ending in 12 h and already ended
    ending = ContinuousGlucoseMonitor(session_start=now_utc + timedelta(hours=1) - timedelta(hours=336 - 12),
                                      run_time_hours=336, interval_s=3600)
    ended = ContinuousGlucoseMonitor(address="C0:FF:EE:00:00:04", session_start=datetime(2024, 3, 15, 8),
                                     run_time_hours=336, interval_s=3600)
    reg = Registry(patient=PATIENT, devices=tuple(
        PairedDevice(address=c.address, kind=DeviceKind.CGM, info=DeviceInfo(serial=c.info.serial), bonded=True)
        for c in (ending, ended)))
    async with EmulatedBluez() as bz:
        await bz.add_devices([ending, ended])
        async with agent_in_process(reg):
            await wait_until(lambda: len(alarms(watcher, "cgm_session_ending")) >= 2, what="both session alarms")
    by_device = {a["device"]: a for a in alarms(watcher, "cgm_session_ending")}
    soon, over = by_device[f"cgm-{ending.address}"], by_device[f"cgm-{ended.address}"]
    check_contract(soon, f"cgm-{ending.address}")
    check_contract(over, f"cgm-{ended.address}")
    assert soon["severity"] == "warning" and "ends in 1" in soon["message"]  # 11 h 59 min or 12 h
    assert over["severity"] == "critical" and "has ended" in over["message"]


async def test_a_device_silent_while_paired_and_back(agent_in_process, watcher, wait_until, quiesce,
                                                     monkeypatch) -> None:
    monkeypatch.setattr(const, "DEVICE_CHECK_INTERVAL_S", 0.2)
    strap = HeartRateStrap(samples=[HeartRateMeasurement(70, SensorContact.DETECTED)], interval_s=0.1)
    device = f"hr-{strap.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        async with agent_in_process(registry(strap, DeviceKind.HEART_RATE), silent_after_s=1.5):
            await wait_until(lambda: len(watcher.samples(device)) >= 3, what="readings")
            await quiesce(strap)  # the strap stops sending (taken off)
            await wait_until(lambda: len(alarms(watcher, "device_silent")) == 1, what="device_silent raised")
            await bz.disconnect(strap)  # put back on: the agent reconnects and readings flow again
            await wait_until(lambda: len(alarms(watcher, "device_silent")) == 2, what="device_silent cleared")
    raised, cleared = alarms(watcher, "device_silent")
    check_contract(raised, device)
    assert raised["active"] is True and "no reading" in raised["message"]
    assert cleared["active"] is False


async def test_a_lost_bond_asks_for_pairing_again(agent_in_process, watcher, wait_until) -> None:
    strap = HeartRateStrap(requires_pairing=True)  # BlueZ holds no bond for it (the strap was reset)
    device = f"hr-{strap.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        async with agent_in_process(registry(strap, DeviceKind.HEART_RATE)):
            await wait_until(lambda: bool(alarms(watcher, "bond_lost")), what="bond_lost raised")
    alarm = alarms(watcher, "bond_lost")[0]
    check_contract(alarm, device)
    assert alarm["severity"] == "critical"
    assert f"rpm edge pair --patient {PATIENT} --address {strap.address}" in alarm["remedy"]


async def test_a_meter_clock_far_off_is_reported_and_its_times_corrected(agent_in_process, watcher,
                                                                         wait_until) -> None:
    local_now = datetime.now().replace(microsecond=0)
    meter = GlucoseMeter(clock_skew=timedelta(hours=3),  # the meter's clock runs 3 h ahead
                         records=[GlucoseRecord(1, local_now + timedelta(hours=3) - timedelta(minutes=20), 110)])
    device = f"bgm-{meter.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(meter)
        async with agent_in_process(registry(meter, DeviceKind.GLUCOSE_METER)):
            await wait_until(lambda: bool(alarms(watcher, "meter_clock_off")) and bool(watcher.samples(device)),
                             what="the clock alarm and the reading")
    alarm = alarms(watcher, "meter_clock_off")[0]
    check_contract(alarm, device)
    assert "3 h ahead" in alarm["message"]
    [sample] = watcher.samples(device)
    assert sample[1] == pytest.approx((local_now - timedelta(minutes=20)).timestamp(), abs=5)  # corrected
    assert meter.clock_writes == []  # not set without the patient's consent


class GainingMeter(GlucoseMeter):
    """A meter whose clock gains a second at every read of it: what the agent sees when its reads
    of a skewed clock straddle a second boundary (one read rounds to 10800 s, the next to 10801)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock_reads = 0

    def clock(self) -> datetime:
        self.clock_reads += 1
        self.clock_skew += timedelta(seconds=1)
        return super().clock()


async def test_a_meter_clock_alarm_is_not_announced_again_for_a_second_of_difference(agent_in_process, watcher,
                                                                                     wait_until) -> None:
    """The clock is read at connection and after each sync; an offset a second or two from the one
    announced says nothing new to the nurse, so it must not be announced again (the alarm would
    arrive twice, and its clearing third)."""
    local_now = datetime.now().replace(microsecond=0)
    meter = GainingMeter(clock_skew=timedelta(hours=3),
                         records=[GlucoseRecord(1, local_now + timedelta(hours=3) - timedelta(minutes=20), 110)])
    device = f"bgm-{meter.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(meter)
        async with agent_in_process(registry(meter, DeviceKind.GLUCOSE_METER)):
            await wait_until(lambda: meter.clock_reads >= 2 and bool(watcher.samples(device)),
                             what="the clock read at connection and after the sync, and the reading")
    assert [a["active"] for a in alarms(watcher, "meter_clock_off")] == [True]


async def test_with_consent_the_meter_clock_is_set_through_current_time(agent_in_process, watcher,
                                                                        wait_until) -> None:
    local_now = datetime.now().replace(microsecond=0)
    meter = GlucoseMeter(clock_skew=timedelta(hours=3), clock_writable=True,
                         records=[GlucoseRecord(1, local_now + timedelta(hours=3) - timedelta(minutes=20), 110)])
    device = f"bgm-{meter.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(meter)
        async with agent_in_process(registry(meter, DeviceKind.GLUCOSE_METER), set_device_clock=True) as agent:
            await wait_until(lambda: bool(agent.sessions), what="the session")
            session = agent.sessions[0]
            assert isinstance(session, GlucoseMeterSession)
            await wait_until(lambda: session.clock_set and [a["active"] for a in alarms(watcher, "meter_clock_off")]
                             == [True, False], what="the clock set, and the alarm it raised before cleared")
            meter.add_record(120, datetime.now().replace(microsecond=0))
            await bz.disconnect(meter)
            await wait_until(lambda: len(watcher.samples(device)) == 2, what="a record measured after the set")
    assert len(meter.clock_writes) == 1
    assert abs(meter.clock_skew.total_seconds()) < 5
    raised, cleared = alarms(watcher, "meter_clock_off")
    assert (raised["active"], cleared["active"]) == (True, False)
    # the stored record was stamped by the old clock and corrected with the skew measured before the
    # set; the new one by the set clock: both on true time
    first, second = watcher.samples(device)
    assert first[1] == pytest.approx((local_now - timedelta(minutes=20)).timestamp(), abs=5)
    assert second[1] == pytest.approx(datetime.now().timestamp(), abs=120)


async def test_a_meter_clock_changed_during_a_sync_is_reported(agent_in_process, watcher, wait_until) -> None:
    now = datetime.now().replace(microsecond=0)
    records = [GlucoseRecord(seq, now - timedelta(minutes=100 - seq), 100) for seq in range(1, 61)]
    meter = GlucoseMeter(records=records, record_interval_s=0.05)
    device = f"bgm-{meter.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(meter)
        async with agent_in_process(registry(meter, DeviceKind.GLUCOSE_METER)):
            await wait_until(lambda: len(meter.notified_values(const.GLUCOSE_MEASUREMENT_UUID)) >= 1,
                             what="the transfer under way")
            meter.clock_skew = timedelta(hours=1)  # someone sets the meter's clock meanwhile
            await wait_until(lambda: bool(alarms(watcher, "meter_clock_off")), what="the clock alarm")
            assert len(watcher.samples(device)) <= 60
    alarm = alarms(watcher, "meter_clock_off")[0]
    check_contract(alarm, device)
    assert "changed by 1 h during a transfer" in alarm["message"]


async def test_bluetooth_switched_off_on_the_hub_is_one_alarm_for_the_patient(agent_in_process, watcher,
                                                                             wait_until) -> None:
    """With the hub's Bluetooth off no device can be read: one critical alarm saying how to turn it on."""
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus

    async def set_powered(bz: EmulatedBluez, on: bool) -> None:
        bus = await MessageBus(bus_address=bz.bus_address, bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(Message(
                destination="org.bluez", path=bz.adapter_path, interface="org.freedesktop.DBus.Properties",
                member="Set", signature="ssv", body=["org.bluez.Adapter1", "Powered", Variant("b", on)]))
            assert reply is not None and reply.message_type != MessageType.ERROR, reply
        finally:
            bus.disconnect()

    strap = HeartRateStrap(interval_s=0.5)
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        await set_powered(bz, False)
        async with agent_in_process(registry(strap, DeviceKind.HEART_RATE), ble_backoff_max_s=0.5):
            await wait_until(lambda: bool(alarms(watcher, "bluetooth_unavailable")), timeout=60,
                             what="the Bluetooth alarm")
            await set_powered(bz, True)
            await wait_until(lambda: len(alarms(watcher, "bluetooth_unavailable")) == 2, timeout=60,
                             what="the Bluetooth alarm cleared")
            await wait_until(lambda: bool(watcher.samples(f"hr-{strap.address}")), what="readings again")
    raised, cleared = alarms(watcher, "bluetooth_unavailable")
    assert raised["active"] is True and raised["severity"] == "critical" and "device" not in raised
    assert "bluetoothctl power on" in raised["remedy"]
    assert cleared["active"] is False
