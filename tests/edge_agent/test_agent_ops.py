"""Running the agent at home: a newly paired device is read without a restart, ``rpm edge status``
tells what is going on, and the status messages say the truth (issue 14, items 5 and 7).

Emulated BlueZ (real bleak), a real Mosquitto, and ``rpm edge`` commands as real child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent import const
from edge_agent.gatt import HeartRateMeasurement, SensorContact
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry, RegistryStore
from simulators.ble_devices import ContinuousGlucoseMonitor, GlucoseMeter, GlucoseRecord, HeartRateStrap
from simulators.bluez import EmulatedBluez

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("edge_bluez_prerequisites")]

PATIENT = "p0001"


def paired(device: Any, kind: DeviceKind) -> PairedDevice:
    return PairedDevice(address=device.address, kind=kind, name=device.advertisement.local_name,
                        info=DeviceInfo(serial=device.info.serial), bonded=True, battery_pct=device.battery_level)


async def rpm_edge(bz: EmulatedBluez, state: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update(DBUS_SYSTEM_BUS_ADDRESS=bz.bus_address, RPM_EDGE_STATE=str(state), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rpm_app.cli", "edge", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_newly_paired_device_is_read_without_a_restart_and_status_shows_it(
    agent_in_process, watcher, wait_until, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(const, "DEVICE_CHECK_INTERVAL_S", 0.2)
    strap = HeartRateStrap(samples=[HeartRateMeasurement(72, SensorContact.DETECTED)], interval_s=0.2,
                           battery_level=87)
    meter = GlucoseMeter(records=[GlucoseRecord(1, _local_now_minus(30), 104)])
    state = tmp_path / "state"  # the agent_in_process fixture's state directory
    store = RegistryStore(state / "pairings.json")
    store.save(Registry(patient=PATIENT, devices=(paired(strap, DeviceKind.HEART_RATE),)))
    async with EmulatedBluez() as bz:
        await bz.add_devices([strap, meter])
        async with agent_in_process(store.load()) as agent:
            await wait_until(lambda: bool(watcher.samples(f"hr-{strap.address}")), what="strap readings")
            # `rpm edge pair` (or a clinic's script) adds the meter while the agent runs
            store.save(store.load().with_device(PATIENT, paired(meter, DeviceKind.GLUCOSE_METER)))
            await wait_until(lambda: bool(watcher.samples(f"bgm-{meter.address}")), what="the new meter's record")
            await wait_until(lambda: (state / "status.json").exists() and "bgm-" in (state / "status.json").read_text(),
                             what="the status file naming the meter")
            code, out, err = await rpm_edge(bz, state, "status")
            # and forgetting it stops reading it, again without a restart
            code_forget, _out, err_forget = await rpm_edge(bz, state, "forget", meter.address, "--keep-bond")
            assert code_forget == 0, err_forget
            await wait_until(lambda: len(agent.sessions) == 1, what="the meter's session stopped")
    assert code == 0, err
    assert "agent: running, connected to the server" in out
    strap_line = next(line for line in out.splitlines() if strap.address in line)
    assert "connected" in strap_line and "battery  87%" in strap_line and "last reading" in strap_line
    assert "never" not in strap_line
    meter_line = next(line for line in out.splitlines() if meter.address in line)
    assert "glucose_meter" in meter_line and "outbox" in meter_line


def _local_now_minus(minutes: int) -> Any:
    from datetime import datetime, timedelta

    return datetime.now().replace(microsecond=0) - timedelta(minutes=minutes)


async def test_status_without_a_running_agent_says_so(tmp_path: Path) -> None:
    strap = HeartRateStrap()
    state = tmp_path / "state"
    RegistryStore(state / "pairings.json").save(
        Registry(patient=PATIENT, devices=(paired(strap, DeviceKind.HEART_RATE),)))
    async with EmulatedBluez() as bz:
        code, out, err = await rpm_edge(bz, state, "status")
    assert code == 0, err
    assert "agent: NOT running" in out and "sudo systemctl start rpm-edge" in out


async def test_status_truth_unreachable_then_connecting_without_the_old_error(
    agent_in_process, watcher, wait_until
) -> None:
    """A device not found in a scan is "unreachable"; the next "connecting" carries no stale error."""
    strap = HeartRateStrap(interval_s=0.2)
    device = f"hr-{strap.address}"
    async with EmulatedBluez() as bz:
        async with agent_in_process(Registry(patient=PATIENT, devices=(paired(strap, DeviceKind.HEART_RATE),)),
                                    ble_backoff_max_s=0.5):
            def states() -> list[dict[str, Any]]:
                return [s for s in watcher.statuses("device") if s["device"] == device]

            await wait_until(lambda: any(s["state"] == "unreachable" for s in states()), timeout=60,
                             what="unreachable while the strap is away")
            await bz.add_device(strap)  # back in range
            await wait_until(lambda: any(s["state"] == "connected" for s in states()), timeout=60,
                             what="connected once it is back")
    seen = states()
    assert not [s for s in seen if s["state"] == "error"]
    unreachable = next(s for s in seen if s["state"] == "unreachable")
    assert "not found" in unreachable["error"]
    after = seen[seen.index(unreachable) + 1:]
    assert after[0]["state"] == "connecting" and "error" not in after[0]


async def test_devices_starting_together_report_no_transient_scan_error(agent_in_process, watcher,
                                                                        wait_until) -> None:
    strap, meter = HeartRateStrap(interval_s=0.5), GlucoseMeter()
    cgm = ContinuousGlucoseMonitor(interval_s=3600)
    reg = Registry(patient=PATIENT, devices=(paired(strap, DeviceKind.HEART_RATE),
                                             paired(meter, DeviceKind.GLUCOSE_METER), paired(cgm, DeviceKind.CGM)))
    ids = [f"hr-{strap.address}", f"bgm-{meter.address}", f"cgm-{cgm.address}"]
    async with EmulatedBluez() as bz:
        await bz.add_devices([strap, meter, cgm])
        async with agent_in_process(reg):
            await wait_until(lambda: all(any(s["device"] == d and s["state"] == "connected"
                                             for s in watcher.statuses("device")) for d in ids),
                             timeout=60, what="all three connected")
    bad = [s for s in watcher.statuses("device") if s["state"] in ("error", "unreachable")]
    assert bad == []


async def test_the_last_will_carries_no_stale_time(broker, watcher, wait_until, tmp_path: Path) -> None:
    """Killed agent: the broker's "offline" last will says it is one and carries no connect-time stamp."""
    strap = HeartRateStrap(interval_s=0.5)
    state = tmp_path / "state"
    RegistryStore(state / "pairings.json").save(
        Registry(patient=PATIENT, devices=(paired(strap, DeviceKind.HEART_RATE),)))
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
        env.update(DBUS_SYSTEM_BUS_ADDRESS=bz.bus_address, RPM_EDGE_STATE=str(state), RPM_MQTT_URL=broker.url(),
                   PYTHONUNBUFFERED="1")
        with (tmp_path / "agent.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rpm_app.cli", "edge", "run", env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT)
        try:
            await wait_until(lambda: any(s["state"] == "online" for s in watcher.statuses("agent")), timeout=60,
                             what="the agent online")
            proc.send_signal(signal.SIGKILL)
            await wait_until(lambda: any(s["state"] == "offline" for s in watcher.statuses("agent")), timeout=60,
                             what="the last will")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            async with asyncio.timeout(30):
                await proc.wait()
    online = next(s for s in watcher.statuses("agent") if s["state"] == "online")
    will = next(s for s in watcher.statuses("agent") if s["state"] == "offline")
    assert isinstance(online["t"], float)
    assert will["t"] is None and will["last_will"] is True
