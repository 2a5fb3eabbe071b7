"""A CGM record damaged in transit is fetched again; a hole the sensor cannot fill is reported (issue 14, item 1).

The emulated BlueZ (real bleak) and a real Mosquitto; the virtual CGM keeps every record it
measured, as a real sensor does, and answers RACP by time offset. A notification with a flipped
E2E-CRC byte stands for a record damaged on the air.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent import const
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry
from edge_agent.session import CgmSession
from simulators.ble_devices import CgmRecord, ContinuousGlucoseMonitor
from simulators.bluez import EmulatedBluez

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("edge_bluez_prerequisites")]

PATIENT = "p0001"
START = datetime(2024, 3, 15, 7, 0, tzinfo=UTC)  # the CGM's default session start, 08:00 at UTC+1


def registry(cgm: ContinuousGlucoseMonitor) -> Registry:
    device = PairedDevice(address=cgm.address, kind=DeviceKind.CGM, name="cgm", info=DeviceInfo(serial="CG-1"),
                          bonded=True)
    return Registry(patient=PATIENT, devices=(device,))


def damaged(record: CgmRecord) -> bytes:
    value = bytearray(bytes(record.measurement(e2e_crc=True)))
    value[-1] ^= 0xFF
    return bytes(value)


def offsets(samples: list[list[Any]]) -> list[int]:
    return [round((s[1] - START.timestamp()) / 60) for s in samples]


async def stream_one_damaged_record(bz: EmulatedBluez, cgm: ContinuousGlucoseMonitor, *, sensor_keeps_it: bool
                                    ) -> CgmRecord:
    """The sensor measures twice; the first record reaches us damaged, the second intact."""
    lost = cgm.measure()
    after = cgm.measure()
    if not sensor_keeps_it:
        cgm.records.remove(lost)
    assert await bz.notify(cgm, const.CGM_MEASUREMENT_UUID, damaged(lost))
    assert await bz.notify(cgm, const.CGM_MEASUREMENT_UUID, bytes(after.measurement(e2e_crc=True)))
    return lost


async def test_a_damaged_record_the_sensor_still_holds_ends_with_no_gap(
    agent_in_process, watcher, wait_until
) -> None:
    cgm = ContinuousGlucoseMonitor(history=[CgmRecord(o, 100 + o) for o in range(0, 30, 5)], e2e_crc=True,
                                   interval_s=3600)  # measures only when the test says so
    device = f"cgm-{cgm.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        async with agent_in_process(registry(cgm)) as agent:
            await wait_until(lambda: len(watcher.samples(device)) == 6, what="the history")
            await stream_one_damaged_record(bz, cgm, sensor_keeps_it=True)
            await wait_until(lambda: len(watcher.samples(device)) == 8, what="the damaged record fetched again")
            # the sequel: after a disconnect the backfill starts after the last record, hole filled
            await bz.disconnect(cgm)
            cgm.measure()
            await wait_until(lambda: len(watcher.samples(device)) == 9, what="the record measured while away")
            session = agent.sessions[0]
            assert isinstance(session, CgmSession)
            assert session.crc_failures == 1 and session.refetches >= 1
            assert session.gaps == [] and session.resume_from is None

    assert sorted(offsets(watcher.samples(device))) == [r.time_offset_min for r in cgm.records]
    assert watcher.duplicates() == 0
    assert not [a for a in watcher.statuses("alarm") if a["alarm"] == "cgm_gap"]


async def test_a_hole_the_sensor_cannot_fill_is_reported_as_a_gap(agent_in_process, watcher, wait_until) -> None:
    cgm = ContinuousGlucoseMonitor(history=[CgmRecord(o, 100 + o) for o in range(0, 30, 5)], e2e_crc=True,
                                   interval_s=3600)
    device = f"cgm-{cgm.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        async with agent_in_process(registry(cgm)) as agent:
            await wait_until(lambda: len(watcher.samples(device)) == 6, what="the history")
            lost = await stream_one_damaged_record(bz, cgm, sensor_keeps_it=False)

            def gap_alarms() -> list[dict[str, Any]]:
                return [a for a in watcher.statuses("alarm") if a["alarm"] == "cgm_gap"]

            await wait_until(lambda: bool(gap_alarms()), what="a cgm_gap alarm")
            session = agent.sessions[0]
            assert isinstance(session, CgmSession)
            assert session.resume_from is None  # given up: no endless refetching

    (alarm,) = gap_alarms()
    assert alarm["active"] is True and alarm["device"] == device and alarm["severity"] == "warning"
    assert alarm["remedy"] and "missing" in alarm["message"]
    before, after = lost.time_offset_min - 5, lost.time_offset_min + 5
    assert alarm["gap"] == {"from": (START + timedelta(minutes=before)).timestamp(),
                            "to": (START + timedelta(minutes=after)).timestamp()}
    assert offsets(watcher.samples(device)) == [0, 5, 10, 15, 20, 25, 35]


async def test_a_record_lost_on_the_air_is_fetched_again(agent_in_process, watcher, wait_until) -> None:
    """No damaged copy at all: the next record shows the one before it never arrived."""
    cgm = ContinuousGlucoseMonitor(history=[CgmRecord(o, 100 + o) for o in range(0, 30, 5)], e2e_crc=True,
                                   interval_s=3600)
    device = f"cgm-{cgm.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        async with agent_in_process(registry(cgm)) as agent:
            await wait_until(lambda: len(watcher.samples(device)) == 6, what="the history")
            cgm.measure()  # stored by the sensor, its notification lost
            after = cgm.measure()
            assert await bz.notify(cgm, const.CGM_MEASUREMENT_UUID, bytes(after.measurement(e2e_crc=True)))
            await wait_until(lambda: len(watcher.samples(device)) == 8, what="the lost record fetched again")
            session = agent.sessions[0]
            assert isinstance(session, CgmSession)
            assert session.refetches == 1 and session.gaps == []
    assert sorted(offsets(watcher.samples(device))) == [r.time_offset_min for r in cgm.records]
    assert watcher.duplicates() == 0


async def test_records_the_sensor_lost_while_we_were_away_are_reported(agent_in_process, watcher,
                                                                      wait_until) -> None:
    cgm = ContinuousGlucoseMonitor(history=[CgmRecord(o, 100 + o) for o in range(0, 30, 5)], interval_s=3600)
    device = f"cgm-{cgm.address}"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        async with agent_in_process(registry(cgm)):
            await wait_until(lambda: len(watcher.samples(device)) == 6, what="the history")
            await bz.set_in_range(cgm, False)
            await bz.disconnect(cgm)
            away = [cgm.measure() for _ in range(3)]
            cgm.records.remove(away[1])  # the sensor's memory lost one (e.g. it overflowed)
            await bz.set_in_range(cgm, True)
            await wait_until(lambda: bool([a for a in watcher.statuses("alarm") if a["alarm"] == "cgm_gap"]),
                             what="the gap reported")
            await wait_until(lambda: len(watcher.samples(device)) == 8, what="what the sensor still had")
    (alarm,) = [a for a in watcher.statuses("alarm") if a["alarm"] == "cgm_gap"]
    assert alarm["gap"] == {"from": (START + timedelta(minutes=30)).timestamp(),
                            "to": (START + timedelta(minutes=40)).timestamp()}
