"""The real ``rpm bridge`` and ``rpm simulate`` over ``mqtts://`` with the test CA (``RPM_MQTT_CA``),
their passwords in 0600 files (``RPM_MQTT_PASSWORD_FILE``), through to Kafka ``rpm.readings``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from rpm_app.services import ServiceProcess, Stack, http_ok, start_tansu
from rpm_core import mqtt_users
from rpm_core.host import free_port
from rpm_core.mqtt_users import BRIDGE_USER, SIMULATOR_USER
from rpm_core.settings import Settings
from tests.security.conftest import SecureBroker
from tests.support.kafka import read_all
from tests.support.procs import eventually, rpm_argv, rpm_env, running, spawn, spawn_bridge

pytestmark = pytest.mark.services


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[ServiceProcess]:
    svc = start_tansu(tmp_path / "tansu")
    try:
        yield svc
    finally:
        svc.stop()


def tls_env(broker: SecureBroker, user: str, *, ca: Path | None = None) -> dict[str, str]:
    """Environment for a child: a URL without password, the password file, the CA."""
    return {
        "RPM_MQTT_URL": broker.url(user),
        "RPM_MQTT_PASSWORD_FILE": str(mqtt_users.AuthDir(broker.auth.path).credential_path(user)),
        "RPM_MQTT_CA": str(ca or broker.pki.ca_file),
    }


def stack_for(tansu: ServiceProcess) -> Stack:
    return Stack(settings=Settings(kafka_url=f"kafka://127.0.0.1:{tansu.port}", mqtt_url="mqtt://unused"))


async def test_simulated_readings_cross_tls_to_kafka(broker: SecureBroker, tansu: ServiceProcess,
                                                     tmp_path: Path) -> None:
    stack = stack_for(tansu)
    bridge = await asyncio.to_thread(spawn_bridge, stack, tmp_path, **tls_env(broker, BRIDGE_USER))
    with running(bridge):
        summary = tmp_path / "summary.json"
        env = rpm_env(stack, mqtt_user=None, **tls_env(broker, SIMULATOR_USER))
        result = await asyncio.to_thread(
            subprocess.run, rpm_argv("simulate", "--patients", "3", "--duration", "1", "--history", "120",
                                     "--summary-json", str(summary)),
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        sent = json.loads(summary.read_text())["readings_sent"]
        assert sent > 100
        forwarded = 0
        async with asyncio.timeout(60):
            while forwarded < sent:
                assert bridge.alive(), bridge.log_tail()
                records = await read_all(stack.settings.kafka_bootstrap(), "rpm.readings", idle_ms=500)
                forwarded = sum(len(g["t"]) for v in records for g in orjson.loads(v)["groups"])
        assert forwarded == sent
    assert "Traceback" not in bridge.log_path.read_text()


def test_bridge_with_the_wrong_ca_never_connects(broker: SecureBroker, tansu: ServiceProcess, tmp_path: Path) -> None:
    stack = stack_for(tansu)
    port = free_port()
    env = rpm_env(stack, mqtt_user=None, **tls_env(broker, BRIDGE_USER, ca=broker.pki.rogue_ca_file))
    bridge = spawn("bridge", ["bridge", "--health-port", str(port)], env, tmp_path)
    with running(bridge):
        eventually(lambda: "certificate verify failed" in bridge.log_path.read_text(), bool, timeout=30,
                   what="the bridge to report the refused certificate", watch=(bridge,))
        assert not http_ok(f"http://127.0.0.1:{port}/healthz")
    assert f"u'{BRIDGE_USER}'" not in broker.svc.log_tail(200), "the broker never saw the bridge log in"
