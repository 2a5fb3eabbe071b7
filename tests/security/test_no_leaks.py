"""No credentials, readings or payload contents in the logs at the default level (info).

The whole pipeline runs as real processes (``rpm bridge``, ``rpm worker``, ``rpm simulate``) at
``RPM_LOG_LEVEL=info`` while canary traffic flows: good readings with values, times and a device id
that appear nowhere else, and malformed messages that carry canary strings where the wire schema
echoes input into its reasons (metric names, schema versions, unknown fields, times, topics). Every
log (the three commands', Mosquitto's) is then searched for every MQTT password, in clear and
URL-quoted, and for every canary.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.parse
from pathlib import Path

import orjson
import pytest

from rpm_app.services import Stack
from rpm_core import topics
from rpm_core.mqtt_users import SIMULATOR_USER
from rpm_core.wire import encode_readings, readings_topic
from tests.security.driving import publish_all, until
from tests.security.hostile import malformed
from tests.support.influx import series
from tests.support.kafka import read_all
from tests.support.procs import rpm_argv, rpm_env, running, spawn, spawn_bridge

pytestmark = [pytest.mark.services, pytest.mark.slow]

CANARY = "QZXCANARY"
DEVICE = f"dev-{CANARY.lower()}"
VALUES = {"heart_rate": "123.456789", "glucose": "87.654321", "rr_interval": "0.987654"}
TIME_FRACTION = ".246813"


def canary_messages(now: float) -> tuple[list[tuple[str, bytes]], int, int]:
    """Good and malformed messages carrying canaries; (messages, good readings, malformed count)."""
    t0 = int(now) - 600
    good = [
        (readings_topic("p0100"), encode_readings(
            patient="p0100", device=DEVICE, source="sim",
            samples=[[metric, float(f"{t0 + k}{TIME_FRACTION}"), float(value)] for k in range(5)],
        ))
        for metric, value in VALUES.items()
    ]
    doc = {"v": 1, "patient": "p0100", "device": "d", "source": "sim", "samples": [["heart_rate", now - 5, 70]]}
    bad_docs = [
        {**doc, "v": f"{CANARY}-version"},
        {**doc, f"{CANARY}-field": 1},
        {**doc, "samples": [[f"{CANARY}-metric", now - 5, 70]]},
        {**doc, "samples": [[[f"{CANARY}-metric-list"], now - 5, 70]]},
        {**doc, "samples": [["heart_rate", 946_000_000.135792, 70]]},
        {**doc, "samples": [["heart_rate", now - 5, float(VALUES["heart_rate"]) * 10]]},
        {**doc, "patient": f"{CANARY}-patient"},
        {**doc, "device": f"{CANARY} device"},
    ]
    bad = [(readings_topic("p0100"), orjson.dumps(d)) for d in bad_docs]
    bad.append((readings_topic(f"{CANARY} topic"), orjson.dumps(doc)))  # Mosquitto refuses control characters
    bad += [(h.topic, h.payload) for h in (malformed(i, now) for i in range(0, 310, 1))]
    return good + bad, 5 * len(VALUES), len(bad)


def read_logs(log_dir: Path, *more: Path) -> dict[str, str]:
    """Every ``*.log`` of ``log_dir`` and ``more``, by file name."""
    return {p.name: p.read_text(errors="replace") for p in [*log_dir.glob("*.log"), *more]}


def secrets_of(stack: Stack) -> list[str]:
    """Every MQTT password, as written and as quoted in a URL."""
    assert stack.mqtt_creds is not None
    out = []
    for secret in stack.mqtt_creds.passwords.values():
        out += [secret.get(), urllib.parse.quote(secret.get(), safe="")]
    return out


async def test_logs_at_info_hold_no_passwords_readings_or_payloads(stack: Stack, tmp_path: Path) -> None:
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    env = rpm_env(stack, RPM_LOG_LEVEL="info")
    worker = spawn("worker", ["worker", "--data-dir", str(tmp_path / "worker")], env, tmp_path)
    with running(worker):
        bridge = await asyncio.to_thread(spawn_bridge, stack, tmp_path, RPM_LOG_LEVEL="info")
        with running(bridge):
            sim = await asyncio.to_thread(
                subprocess.run, rpm_argv("simulate", "--patients", "3", "--duration", "2", "--history", "300"),
                env=rpm_env(stack, mqtt_user=SIMULATOR_USER, RPM_LOG_LEVEL="info"), capture_output=True,
                text=True, timeout=120, check=False,
            )
            assert sim.returncode == 0, sim.stderr[-2000:]
            (tmp_path / "simulate.log").write_text(sim.stdout + sim.stderr)
            messages, good, bad = canary_messages(time.time())
            await asyncio.to_thread(publish_all, stack, messages)
            q = f"SELECT count(value) FROM vitals WHERE device = '{DEVICE}'"
            await until(lambda: (series(url, db, q) or [{"values": [[0, 0]]}])[0]["values"][0][1],
                        lambda n: n >= good, deadline_s=120, what="the canary readings in InfluxDB",
                        watch=(bridge, worker))
            deadletters = await read_all(stack.settings.kafka_bootstrap(), topics.DEADLETTER, idle_ms=1500)
    assert len(deadletters) == bad
    assert CANARY in b"".join(deadletters).decode(), "the canaries went through (and are kept in rpm.deadletter)"
    logs = read_logs(tmp_path, stack.processes["mosquitto"].log_path)
    assert set(logs) >= {"bridge.log", "worker.log", "simulate.log", "mosquitto.log"}
    assert "dead-lettered input" in logs["bridge.log"], "bad input is logged (with a redacted reason)"
    forbidden = [*secrets_of(stack), CANARY, CANARY.lower(), *VALUES.values(), TIME_FRACTION, "135792",
 '"samples"', '[["heart_rate"', "1234.56789"]
    leaks = [(name, needle) for name, text in logs.items() for needle in forbidden if needle in text]
    assert not leaks, leaks
