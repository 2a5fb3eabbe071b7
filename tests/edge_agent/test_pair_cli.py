"""``rpm edge pair`` / ``devices`` / ``forget`` as real child processes against emulated BlueZ.

The virtual peripherals live in this test's event loop, so the child runs under
``asyncio.create_subprocess_exec`` (the loop keeps serving the devices while it works); it reaches
the fake bluetoothd through ``DBUS_SYSTEM_BUS_ADDRESS``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from simulators.ble_devices import ContinuousGlucoseMonitor, GlucoseMeter, HeartRateStrap
from simulators.bluez import EmulatedBluez

pytestmark = pytest.mark.usefixtures("edge_bluez_prerequisites")

RUN_TIMEOUT_S = 60


def child_env(bz: EmulatedBluez, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update(DBUS_SYSTEM_BUS_ADDRESS=bz.bus_address, RPM_EDGE_STATE=str(state), PYTHONUNBUFFERED="1")
    return env


async def rpm(bz: EmulatedBluez, state: Path, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rpm_core.cli", "edge", *args,
        env=child_env(bz, state), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(RUN_TIMEOUT_S):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def registry(state: Path) -> dict:
    return json.loads((state / "pairings.json").read_text())


async def test_scriptable_pair_stores_device_information(tmp_path: Path) -> None:
    strap = HeartRateStrap(battery_level=83)
    state = tmp_path / "state"
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        code, out, err = await rpm(bz, state, "pair", "--patient", "p0001", "--address", strap.address.lower(),
                                   "--timeout", "5")
        assert code == 0, err
        assert strap.paired
        code, listing, err = await rpm(bz, state, "devices")
        assert code == 0, err

    assert f"paired heart_rate {strap.address}" in out
    doc = registry(state)
    assert doc["patient"] == "p0001"
    [device] = doc["devices"]
    assert device["address"] == strap.address
    assert device["kind"] == "heart_rate"
    assert device["name"] == "RPM HR Strap"
    assert device["info"] == {
        "manufacturer": "Acme Medical", "model": "HRS-1", "serial": "HR-00:01", "firmware": "1.2.0"
    }
    assert device["battery_pct"] == 83
    assert device["bonded"] is True
    assert device["paired_at"].endswith("+00:00")
    assert stat.S_IMODE((state / "pairings.json").stat().st_mode) == 0o600
    assert "patient p0001" in listing
    assert strap.address in listing


async def test_interactive_pair_lists_health_devices_and_pairs_the_chosen_one(tmp_path: Path) -> None:
    strap, meter = HeartRateStrap(), GlucoseMeter()
    cgm = ContinuousGlucoseMonitor(requires_pairing=True, pairing="passkey", passkey=123456, interval_s=3600)
    state = tmp_path / "state"
    async with EmulatedBluez() as bz:
        for device in (strap, meter, cgm):
            await bz.add_device(device)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rpm_core.cli", "edge", "pair", "--patient", "p0001", "--timeout", "2",
            env=child_env(bz, state), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        async with asyncio.timeout(RUN_TIMEOUT_S):
            table = b""
            while b"pair which device?" not in table:
                chunk = await proc.stdout.read(4096)
                assert chunk, f"pair exited early: {(await proc.communicate())[1].decode()}"
                table += chunk
            lines = table.decode().splitlines()
            number = next(line.split()[0] for line in lines if cgm.address in line)
            proc.stdin.write(b"9\n")  # out of range: asked again
            proc.stdin.write(f"{number}\n".encode())
            proc.stdin.write(b"123456\n")  # the passkey the CGM shows
            await proc.stdin.drain()
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert cgm.paired

    text = table.decode() + out.decode()
    for device, kind in ((strap, "heart_rate"), (meter, "glucose_meter"), (cgm, "cgm")):
        row = next(line for line in lines if device.address in line)
        assert kind in row
        assert str(device.advertisement.rssi) in row
    assert "please type a number from 1 to 3" in text
    [device] = registry(state)["devices"]
    assert (device["address"], device["kind"], device["info"]["serial"]) == (cgm.address, "cgm", "CG-00:03")


async def test_wrong_passkey_fails_and_pairs_nothing(tmp_path: Path) -> None:
    cgm = ContinuousGlucoseMonitor(requires_pairing=True, pairing="passkey", passkey=123456, interval_s=3600)
    state = tmp_path / "state"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        code, _out, err = await rpm(bz, state, "pair", "--patient", "p0001", "--address", cgm.address,
                                    "--passkey", "111111", "--timeout", "5")
    assert code == 2
    assert "pairing with" in err and "failed" in err
    assert not (state / "pairings.json").exists()
    assert not cgm.paired


async def test_another_patient_is_refused_and_forget_removes_the_pairing(tmp_path: Path) -> None:
    strap = HeartRateStrap()
    state = tmp_path / "state"
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        code, _out, err = await rpm(bz, state, "pair", "--patient", "p0001", "--address", strap.address)
        assert code == 0, err
        code, _out, err = await rpm(bz, state, "pair", "--patient", "p0002", "--address", strap.address)
        assert code == 2
        assert "provisioned for patient p0001" in err
        code, out, err = await rpm(bz, state, "forget", strap.address)
        assert code == 0, err
        assert "BlueZ bond removed" in out
        assert (await bz.device_state(strap))["paired"] is False
        code, _out, err = await rpm(bz, state, "forget", strap.address)
        assert code == 2
        assert "not paired" in err
    assert registry(state)["devices"] == []
