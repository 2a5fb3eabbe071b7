"""The agent against emulated BlueZ (real bleak) and a real Mosquitto: heart rate, glucose meter, CGM.

Each test runs the real :class:`edge_agent.agent.Agent` on the test's event loop, next to the
virtual peripherals, and checks what reaches MQTT against what the devices sent: every reading
exactly once, in order per device. Nothing sleeps to synchronise: tests wait for conditions
(bounded by deadlines) on the devices and on the MQTT watcher.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent import const
from edge_agent.gatt import HeartRateMeasurement, Meal, SensorContact
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry
from edge_agent.session import CgmSession, HeartRateSession
from rpm_core.wire import SampleFlag
from simulators.ble_devices import CgmRecord, ContinuousGlucoseMonitor, GlucoseMeter, GlucoseRecord, HeartRateStrap
from simulators.bluez import EmulatedBluez

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("edge_bluez_prerequisites")]

PATIENT = "p0001"
T0 = datetime(2024, 3, 15, 8, 30)


def registry_of(*devices: tuple[Any, DeviceKind]) -> Registry:
    return Registry(
        patient=PATIENT,
        devices=tuple(
            PairedDevice(address=d.address, kind=kind, name=d.advertisement.local_name,
                         info=DeviceInfo(serial=d.info.serial), bonded=True)
            for d, kind in devices
        ),
    )


def expected_heart_rate(sent: list[bytes]) -> tuple[list[float], list[float], list[int]]:
    bpm, rr, flags = [], [], []
    for value in sent:
        m = HeartRateMeasurement.from_bytes(value)
        bpm.append(float(m.bpm))
        rr.extend(m.rr_intervals_s)
        flags.append(int(SampleFlag.CONTACT_LOST) if m.sensor_contact is SensorContact.NOT_DETECTED else 0)
    return bpm, rr, flags


async def test_heart_rate_streams_every_beat_exactly_once(agent_in_process, watcher, wait_until, quiesce) -> None:
    samples = [
        HeartRateMeasurement(72, SensorContact.DETECTED, None, (853,)),
        HeartRateMeasurement(75, SensorContact.DETECTED, None, (800, 780)),
        HeartRateMeasurement(74, SensorContact.NOT_DETECTED, None, (810,)),
        HeartRateMeasurement(71),
    ]
    strap = HeartRateStrap(samples=samples, interval_s=0.05, battery_level=87)
    device = f"hr-{strap.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        async with agent_in_process(registry_of((strap, DeviceKind.HEART_RATE))) as agent:
            await wait_until(lambda: len(watcher.samples(device, "heart_rate")) >= 20, what="20 heart rates in MQTT")
            # garbage from the device is counted and logged once; the session goes on
            assert await bz.notify(strap, const.HEART_RATE_MEASUREMENT_UUID, b"\x01\x48")
            await wait_until(lambda: len(watcher.samples(device, "heart_rate")) >= 30, what="streaming after garbage")
            await quiesce(strap)  # then everything the strap sent must arrive
            bpm, rr, flags = expected_heart_rate(strap.sent)
            await wait_until(lambda: len(watcher.samples(device, "heart_rate")) == len(bpm), what="every heart rate")
            await wait_until(lambda: len(watcher.samples(device, "rr_interval")) == len(rr), what="every RR interval")
            session = agent.sessions[0]
            assert isinstance(session, HeartRateSession)
            assert session.problems.counts == {"malformed heart rate measurement": 1}

    hr = watcher.samples(device, "heart_rate")
    beats = watcher.samples(device, "rr_interval")
    assert [s[2] for s in hr] == bpm
    assert [s[3] for s in hr] == flags
    assert [s[2] for s in beats] == rr
    times = [s[1] for s in hr]
    assert times == sorted(times)  # in order per device
    beat_times = [s[1] for s in beats]
    assert len(set(beat_times)) == len(beat_times)  # each beat its own timestamp
    assert watcher.duplicates() == 0
    device_status = [s for s in watcher.statuses("device") if s["device"] == device]
    assert any(s.get("battery_pct") == 87 and s["state"] == "connected" for s in device_status)
    agent_status = watcher.statuses("agent")
    assert agent_status[0]["state"] == "online"
    assert agent_status[-1]["state"] == "offline"  # graceful stop


def stored_records() -> list[GlucoseRecord]:
    return [GlucoseRecord(seq, T0 + timedelta(minutes=seq), 95 + seq, meal=Meal.FASTING if seq == 2 else None)
            for seq in (1, 2, 3)]


async def test_glucose_meter_syncs_all_then_only_the_new_record(agent_in_process, watcher, wait_until) -> None:
    meter = GlucoseMeter(records=stored_records())
    device = f"bgm-{meter.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(meter)
        async with agent_in_process(registry_of((meter, DeviceKind.GLUCOSE_METER))) as agent:
            await wait_until(lambda: len(watcher.samples(device)) == 3, what="3 stored records in MQTT")
            meter.add_record(142, T0 + timedelta(minutes=30), status=None)
            await bz.disconnect(meter)  # the meter hangs up; it will be read again on the next connection
            await wait_until(lambda: len(watcher.samples(device)) == 4, what="the new record in MQTT")
            watermark = await agent._outbox.watermark(device, "glucose_last_seq")  # type: ignore[union-attr]

    readings = watcher.samples(device)
    assert [s[2] for s in readings] == [96.0, 97.0, 98.0, 142.0]
    # the meter's clock is this host's local time (GlucoseMeter.clock): naive .timestamp() is local too
    expected_times = [(T0 + timedelta(minutes=m)).timestamp() for m in (1, 2, 3, 30)]
    assert [s[1] for s in readings] == pytest.approx(expected_times, abs=2)  # meter clock skew is measured
    assert watcher.duplicates() == 0
    assert watermark == "4"
    sent = meter.notified_values(const.GLUCOSE_MEASUREMENT_UUID)
    assert len(sent) == 4  # the second sync asked for sequence >= 4 only


async def test_cgm_streams_and_backfills_a_gap_after_a_remote_disconnect(
    agent_in_process, watcher, wait_until, quiesce
) -> None:
    history = [CgmRecord(offset, 100 + offset) for offset in range(0, 30, 5)]
    cgm = ContinuousGlucoseMonitor(history=history, e2e_crc=True, interval_s=0.1)
    device = f"cgm-{cgm.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        async with agent_in_process(registry_of((cgm, DeviceKind.CGM))) as agent:
            await wait_until(lambda: len(watcher.samples(device)) >= 10, what="history + live CGM readings")
            await bz.disconnect(cgm)
            gap = [cgm.measure() for _ in range(5)]  # measured while nobody listened
            # a record with a broken E2E-CRC is rejected and counted
            bad = bytearray(bytes(CgmRecord(60_000, 123).measurement(e2e_crc=True)))
            bad[-1] ^= 0xFF
            await wait_until(lambda: const.CGM_MEASUREMENT_UUID in cgm.subscriptions, what="reconnection")
            assert await bz.notify(cgm, const.CGM_MEASUREMENT_UUID, bytes(bad))
            after_gap = len(cgm.records)
            await wait_until(lambda: len(watcher.samples(device)) >= after_gap + 5, what="streaming after the gap")
            await quiesce(cgm)
            await wait_until(lambda: len(watcher.samples(device)) == len(cgm.records), what="every CGM record")
            session = agent.sessions[0]
            assert isinstance(session, CgmSession)
            assert session.crc_failures == 1

    readings = watcher.samples(device)
    start = datetime(2024, 3, 15, 7, 0, tzinfo=UTC)  # 08:00 local, UTC+1
    assert [s[2] for s in readings] == [float(r.mg_dl) for r in cgm.records]
    assert [s[1] for s in readings] == [(start + timedelta(minutes=r.time_offset_min)).timestamp() for r in cgm.records]
    assert {r.time_offset_min for r in gap} <= {round((s[1] - start.timestamp()) / 60) for s in readings}
    assert watcher.duplicates() == 0


async def test_readings_nobody_subscribed_to_stay_in_the_outbox_until_someone_is(
    broker, agent_in_process, wait_until, quiesce
) -> None:
    # Mosquitto answers "No matching subscribers" (0x10) and drops the message when no bridge is
    # subscribed: right after a broker restart, the bridges' shared subscription is not back yet.
    from tests.edge_agent.conftest import MqttWatcher

    strap = HeartRateStrap(samples=[HeartRateMeasurement(70 + k % 5, SensorContact.DETECTED, None, (850,))
                                    for k in range(6)], interval_s=0.05)
    device = f"hr-{strap.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        async with agent_in_process(registry_of((strap, DeviceKind.HEART_RATE))) as agent:
            await wait_until(lambda: agent.publisher is not None and agent.publisher.unrouted >= 3,
                             what="readings refused for want of a subscriber")
            late = MqttWatcher(broker)
            late.start()
            try:
                await quiesce(strap)
                bpm, rr, _ = expected_heart_rate(strap.sent)
                await wait_until(lambda: len(late.samples(device, "heart_rate")) == len(bpm), what="every heart rate")
                await wait_until(lambda: len(late.samples(device, "rr_interval")) == len(rr), what="every RR interval")
                assert [s[2] for s in late.samples(device, "heart_rate")] == bpm
                assert late.duplicates() == 0
            finally:
                late.stop()


async def test_a_1000_record_meter_syncs_in_one_connection(agent_in_process, watcher, wait_until, monkeypatch) -> None:
    """Issue 14, item 3: the sync times out on silence, not on its total length.

    The meter paces its records (10 ms each, so the transfer lasts well over the shortened 4 s
    limit); a timeout on the whole transfer would abort it and start again on a new connection.
    """
    monkeypatch.setattr(const, "GLUCOSE_RACP_IDLE_TIMEOUT_S", 4.0)
    records = [GlucoseRecord(seq, T0 + timedelta(minutes=seq), 80 + seq % 100) for seq in range(1, 1001)]
    meter = GlucoseMeter(records=records, record_interval_s=0.01)
    device = f"bgm-{meter.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(meter)
        async with agent_in_process(registry_of((meter, DeviceKind.GLUCOSE_METER))) as agent:
            await wait_until(lambda: len(watcher.samples(device)) == 1000, timeout=300, what="1,000 records in MQTT")
            session = agent.sessions[0]
            assert session.connections == 1
            assert not session.problems.counts
    assert [s[2] for s in watcher.samples(device)] == [float(r.mg_dl or 0) for r in records]
    assert watcher.duplicates() == 0
