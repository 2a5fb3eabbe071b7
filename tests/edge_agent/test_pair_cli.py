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
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.advice import parse_passkey
from edge_agent.cli import ask_passkey
from simulators.ble_devices import ContinuousGlucoseMonitor, GlucoseMeter, HeartRateStrap
from simulators.bluez import EmulatedBluez, PrivateSystemBus

pytestmark = pytest.mark.usefixtures("edge_bluez_prerequisites")

RUN_TIMEOUT_S = 60


def child_env(bz: EmulatedBluez, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update(DBUS_SYSTEM_BUS_ADDRESS=bz.bus_address, RPM_EDGE_STATE=str(state), PYTHONUNBUFFERED="1")
    return env


async def rpm(bz: EmulatedBluez, state: Path, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rpm_app.cli", "edge", *args,
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
            sys.executable, "-m", "rpm_app.cli", "edge", "pair", "--patient", "p0001", "--timeout", "2",
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
    assert "the passkey was wrong" in err and "Traceback" not in err
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


# --- patient-facing: plain language, no tracebacks (issue 14, item 5) ---------------------------------


@given(st.text(max_size=40))
def test_parse_passkey_never_raises_and_accepts_only_six_digit_codes(text: str) -> None:
    passkey = parse_passkey(text)
    assert passkey is None or 0 <= passkey <= 999_999


@pytest.mark.parametrize(("text", "passkey"), [("123456", 123456), ("123 456", 123456), (" 123-456\n", 123456),
                                               ("000042", 42), ("abc", None), ("1234567", None), ("", None),
                                               ("١٢٣٤٥٦", None), ("12e3", None), ("-1", None)])
def test_parse_passkey(text: str, passkey: int | None) -> None:
    assert parse_passkey(text) == passkey


def test_the_passkey_prompt_asks_again_until_it_gets_a_passkey(capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter(["abc", "123 45x", "", "99999999", "123 456"])
    assert ask_passkey(lambda _prompt: next(answers)) == 123456
    assert capsys.readouterr().out.count("that is not a passkey") == 4
    assert ask_passkey(lambda _prompt: "q") is None

    def ended(_prompt: str) -> str:
        raise EOFError

    assert ask_passkey(ended) is None


async def test_interactive_pairing_survives_fuzzed_passkey_input(tmp_path: Path) -> None:
    cgm = ContinuousGlucoseMonitor(requires_pairing=True, pairing="passkey", passkey=123456, interval_s=3600)
    state = tmp_path / "state"
    typed = "abc\n123 45x\n\n99999999\n\x00\xff\n" + "9" * 5000 + "\n123 456\n"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        code, out, err = await rpm(bz, state, "pair", "--patient", "p0001", "--address", cgm.address,
                                   "--timeout", "5", stdin=typed.encode("utf-8", "surrogateescape"))
        assert cgm.paired
    assert code == 0, err
    assert "Traceback" not in out + err
    assert out.count("that is not a passkey") == 6
    assert registry(state)["devices"][0]["address"] == cgm.address


async def test_passkey_entry_cancelled_at_end_of_input_is_a_plain_message(tmp_path: Path) -> None:
    cgm = ContinuousGlucoseMonitor(requires_pairing=True, pairing="passkey", passkey=123456, interval_s=3600)
    state = tmp_path / "state"
    async with EmulatedBluez() as bz:
        await bz.add_device(cgm)
        code, out, err = await rpm(bz, state, "pair", "--patient", "p0001", "--address", cgm.address,
                                   "--timeout", "5", stdin=b"abc\n")
    assert code == 2
    assert "Traceback" not in out + err
    assert "pairing mode again" in err
    assert not cgm.paired


async def test_a_device_that_does_not_answer_gets_pairing_mode_advice(tmp_path: Path) -> None:
    async with EmulatedBluez() as bz:
        code, out, err = await rpm(bz, tmp_path / "state", "pair", "--patient", "p0001", "--address",
                                   "C0:FF:EE:00:00:99", "--timeout", "1")
    assert code == 2
    assert "Traceback" not in out + err
    assert "No device with address C0:FF:EE:00:00:99 answered within 1 s" in err
    assert "pairing mode" in err and "--timeout 30" in err


async def set_powered(bz: EmulatedBluez, on: bool) -> None:
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=bz.bus_address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(
            destination="org.bluez", path=bz.adapter_path, interface="org.freedesktop.DBus.Properties",
            member="Set", signature="ssv", body=["org.bluez.Adapter1", "Powered", Variant("b", on)]))
        assert reply is not None and reply.message_type != MessageType.ERROR, reply
    finally:
        bus.disconnect()


async def test_bluetooth_switched_off_says_how_to_turn_it_on(tmp_path: Path) -> None:
    async with EmulatedBluez() as bz:
        await bz.add_device(HeartRateStrap())
        await set_powered(bz, False)
        code, out, err = await rpm(bz, tmp_path / "state", "pair", "--patient", "p0001", "--timeout", "1")
    assert code == 2
    assert "Traceback" not in out + err
    assert "Bluetooth is switched off" in err and "bluetoothctl power on" in err


async def test_bluez_not_running_names_the_service_to_start(tmp_path: Path) -> None:
    async with PrivateSystemBus() as bus:  # a system bus without bluetoothd on it
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
        env.update(DBUS_SYSTEM_BUS_ADDRESS=bus.address, RPM_EDGE_STATE=str(tmp_path / "state"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rpm_app.cli", "edge", "pair", "--patient", "p0001", "--address",
            "C0:FF:EE:00:00:01", "--timeout", "1", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(RUN_TIMEOUT_S):
            out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    assert "sudo systemctl start bluetooth" in text
