"""Agent credentials at pairing time: ``rpm edge pair --provision-credentials DIR`` (emulated BlueZ)
creates the patient's agent user in the broker's ``rpm mqtt-auth`` directory and leaves its
password in a 0600 file, with which the agent may publish its own readings and nothing else.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from rpm_app.services import ServiceProcess, start_mosquitto, start_tansu
from rpm_core import mqtt_users
from rpm_core.audit import decode_entry, read_log, verify_log
from rpm_core.settings import MqttSettings, read_secret_file
from rpm_core.signing import KeyRing
from rpm_core.wire import encode_readings, readings_topic
from simulators.ble_devices import HeartRateStrap
from simulators.bluez import EmulatedBluez
from tests.security.mqttclient import NOT_AUTHORIZED, Client

pytestmark = pytest.mark.services


@pytest.fixture(autouse=True)
def _bluez_prerequisites() -> None:
    if sys.platform != "linux":
        pytest.skip("bleak uses BlueZ only on Linux")
    if shutil.which("dbus-daemon") is None:
        pytest.fail("dbus-daemon not found; install it with: apt-get install dbus-daemon python3-dbusmock")


async def rpm_edge(bz: EmulatedBluez, state: Path, *args: str, **extra: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update(DBUS_SYSTEM_BUS_ADDRESS=bz.bus_address, RPM_EDGE_STATE=str(state), PYTHONUNBUFFERED="1", **extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rpm_app.cli", "edge", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_pairing_provisions_the_agents_mqtt_user(tmp_path: Path) -> None:
    auth_dir, state = tmp_path / "broker-auth", tmp_path / "edge-state"
    mqtt_users.init_auth(auth_dir)
    strap, second = HeartRateStrap(), HeartRateStrap(address="C0:FF:EE:00:00:77")
    kafka = start_tansu(tmp_path / "tansu")
    try:
        await _pair_twice(tmp_path, auth_dir, state, strap, second, kafka)
    finally:
        kafka.stop()


async def _pair_twice(tmp_path: Path, auth_dir: Path, state: Path, strap: HeartRateStrap, second: HeartRateStrap,
                      kafka: ServiceProcess) -> None:
    keys = str(KeyRing.generate().write(tmp_path / "signing-keys"))
    audited = {"RPM_KAFKA_URL": f"kafka://{kafka.host}:{kafka.port}", "RPM_SIGNING_KEYS_FILE": keys}
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        await bz.add_device(second)
        code, out, err = await rpm_edge(bz, state, "pair", "--patient", "p0001", "--address", strap.address,
                                        "--timeout", "5", "--provision-credentials", str(auth_dir), **audited)
        assert code == 0, err
        again = await rpm_edge(bz, state, "pair", "--patient", "p0001", "--address", second.address,
                               "--timeout", "5", "--provision-credentials", str(auth_dir))
    password_file = state / "mqtt-password"
    assert "MQTT user agent-p0001 created" in out and str(password_file) in out
    assert again[0] == 0 and "exists already" in again[1], again
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = read_secret_file(password_file, what="test").get()
    assert password not in out + err, "the password is in the file, not on the terminal"
    await asyncio.to_thread(check_agent_can_publish_only_its_own, tmp_path, auth_dir, password)
    # the new credential is in the audit trail, signed, naming who provisioned it
    records = await read_log(f"{kafka.host}:{kafka.port}")
    assert verify_log(records, KeyRing.load(keys)).ok
    (entry,) = [decode_entry(r.value) for r in records]
    assert (entry["action"], entry["target"], entry["patient"], entry["actor"], entry["via"]) == \
        ("credential.add", "agent-p0001", "p0001", getpass.getuser(), "rpm edge pair")


def check_agent_can_publish_only_its_own(tmp_path: Path, auth_dir: Path, password: str) -> None:
    auth = mqtt_users.AuthDir(auth_dir)
    svc = start_mosquitto(tmp_path / "mosquitto", password_file=auth.passwd_path, acl_file=auth.acl_path)
    try:
        settings = MqttSettings.from_url(f"mqtt://127.0.0.1:{svc.port}").with_user("agent-p0001", password)
        sample = ["heart_rate", time.time(), 70]
        payload = encode_readings(patient="p0001", device="hr-1", source="ble", samples=[sample])
        with Client(settings) as c:
            c.connect()
            assert not c.publish(readings_topic("p0001"), payload).is_failure
            assert c.publish(readings_topic("p0002"), payload).value == NOT_AUTHORIZED
    finally:
        svc.stop()


async def test_a_bad_auth_directory_fails_before_pairing(tmp_path: Path) -> None:
    strap = HeartRateStrap()
    async with EmulatedBluez() as bz:
        await bz.add_device(strap)
        code, _out, err = await rpm_edge(bz, tmp_path / "state", "pair", "--patient", "p0001", "--address",
                                         strap.address, "--timeout", "5", "--provision-credentials",
                                         str(tmp_path / "nowhere"))
    assert code == 2 and "rpm mqtt-auth init" in err
    assert not strap.paired
