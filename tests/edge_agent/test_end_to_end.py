"""From the emulated BlueZ to the people (issue 14): a meter's "HI" to InfluxDB and the nurse station
(item 2); a low battery and an ending CGM session to technical alerts on ``rpm.alerts`` (item 6).

Real everything but the radio: a virtual glucose meter on BlueZ emulated on a private D-Bus (bleak's
real code), the real agent, Mosquitto, ``rpm bridge``, Tansu, ``rpm worker`` with the default
rules, InfluxDB and ``rpm nurse-station``. Every wait is a deadline for a condition.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from edge_agent import const
from edge_agent.agent import Agent
from edge_agent.config import AgentSettings
from edge_agent.gatt import GlucoseSensorStatus
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry
from rpm_app.services import ServiceProcess, Stack, http_ok
from rpm_core.host import free_port
from rpm_core.mqtt_users import ADMIN_USER, WATCHDOG_USER
from rpm_core.roster import hash_password
from simulators.ble_devices import ContinuousGlucoseMonitor, GlucoseMeter, GlucoseRecord, HeartRateStrap
from simulators.bluez import EmulatedBluez
from tests.support.influx import rows
from tests.support.procs import eventually, rpm_env, running, spawn, spawn_bridge

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.usefixtures("edge_bluez_prerequisites")]

PATIENT = "p0001"
PASSWORD = "hi-lo-night-shift"


@pytest.fixture
def pipeline(stack: Stack, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A worker (default rules), a bridge and a nurse station on ``stack``."""
    port = free_port()
    worker = spawn("worker", ["worker", "--partitions", "8", "--data-dir", str(tmp_path / "worker"),
                              "--web-port", str(port)], rpm_env(stack), tmp_path)
    with running(worker):
        eventually(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), bool, timeout=180,
                   what="worker /healthz 200", watch=(worker,))
        bridge = spawn_bridge(stack, tmp_path)
        station_port = free_port()
        env = rpm_env(stack, mqtt_user=None, RPM_NURSE_CREDENTIALS=f"desk={hash_password(PASSWORD, n=2)}")
        station = spawn("nurse-station", ["nurse-station", "--port", str(station_port)], env, tmp_path)
        with running(bridge, station):
            eventually(lambda: http_ok(f"http://127.0.0.1:{station_port}/healthz"), bool, timeout=60,
                       what="nurse station up", watch=(station,))
            yield {"station": f"http://127.0.0.1:{station_port}", "watch": (worker, bridge, station)}


async def station_alerts(url: str) -> list[dict[str, Any]]:
    """The nurse station's active alerts, logged in as the desk."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
        login = await http.post(f"{url}/login", data={"station": "desk", "password": PASSWORD},
                                headers={"Origin": url}, allow_redirects=False)
        assert login.status == 303, await login.text()
        async with http.get(f"{url}/api/alerts") as resp:
            assert resp.status == 200
            doc = orjson.loads(await resp.read())
    return list(doc["active"])


async def poll(probe: Any, done: Any, *, deadline_s: float, what: str, watch: tuple[ServiceProcess, ...]) -> Any:
    """``eventually`` on a thread, so the agent and the emulated BlueZ keep running on this loop."""
    return await asyncio.to_thread(eventually, probe, done, timeout=deadline_s, what=what, watch=watch)


async def test_a_meter_hi_result_becomes_a_critical_alert_in_influxdb_and_on_the_nurse_station(
    stack: Stack, pipeline: dict[str, Any], tmp_path: Path
) -> None:
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    now = datetime.now().replace(microsecond=0)  # the meter's clock is local time
    meter = GlucoseMeter(records=[
        GlucoseRecord(1, now - timedelta(minutes=40), 45.0),  # the meter rule (device prefix bgm-) fires too
        GlucoseRecord(2, now - timedelta(minutes=30), 180.0),
        GlucoseRecord(3, now - timedelta(minutes=10), math.inf, status=GlucoseSensorStatus.RESULT_TOO_HIGH),
    ])
    device = f"bgm-{meter.address}"
    registry = Registry(patient=PATIENT, devices=(
        PairedDevice(address=meter.address, kind=DeviceKind.GLUCOSE_METER, name="meter",
                     info=DeviceInfo(serial=meter.info.serial), bonded=True),))
    settings = AgentSettings(state_dir=tmp_path / "edge", mqtt_url=stack.mqtt_url(ADMIN_USER),
                             mqtt_backoff_max_s=1.0, ble_backoff_max_s=1.0)
    watch = pipeline["watch"]
    async with EmulatedBluez() as bz:
        await bz.add_device(meter)
        agent = Agent(settings, registry)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            vitals = await poll(lambda: rows(url, db, f"SELECT * FROM vitals WHERE device = '{device}'"),
                                lambda r: len(r) == 3, deadline_s=180, what="the meter readings in InfluxDB",
                                watch=watch)
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task
    assert [(r["value"], r.get("beyond")) for r in vitals] == [(45.0, None), (180.0, None), (600.0, "above")]

    def hi_alerts() -> list[dict[str, Any]]:
        return rows(url, db, "SELECT * FROM alerts WHERE rule = 'glucose_above_measuring_range'")

    alerts = await poll(hi_alerts, bool, deadline_s=120, what="the HI alert in InfluxDB", watch=watch)
    assert [(a["patient"], a["severity"], a["state"]) for a in alerts] == [(PATIENT, "critical", "raised")]
    assert "HI, above the device's measuring range" in alerts[0]["message"]
    meter_low = await poll(lambda: rows(url, db, "SELECT * FROM alerts WHERE rule = 'glucose_meter_low'"),
                           lambda r: len(r) == 2, deadline_s=60, what="the meter low raised and cleared", watch=watch)
    assert [(a["severity"], a["state"]) for a in meter_low] == [("critical", "raised"), ("critical", "cleared")]

    def on_station() -> list[dict[str, Any]]:
        return [a for a in asyncio.run(station_alerts(pipeline["station"]))
                if a.get("rule") == "glucose_above_measuring_range"]

    shown = await poll(on_station, bool, deadline_s=60, what="the HI alert on the nurse station", watch=watch)
    assert shown[0]["patient"] == PATIENT and shown[0]["severity"] == "critical"


async def read_alerts(bootstrap: str) -> list[dict[str, Any]]:
    """Every record of ``rpm.alerts`` so far."""
    from tests.support.kafka import read_all

    return [orjson.loads(v) for v in await read_all(bootstrap, "rpm.alerts", idle_ms=500, deadline_s=60)]


async def test_battery_low_and_session_end_become_technical_alerts_end_to_end(
    stack: Stack, pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, item 6: the agent's alarm status messages → ``rpm watchdog`` → ``rpm.alerts``
    (technical alerts with the device's remedy, what nurse stations and the notifier consume).

    The agent may raise its alarms before the watchdog has subscribed; the agent's periodic
    re-announcement (shortened here) is what makes them reach it anyway."""
    monkeypatch.setattr(const, "DEVICE_CHECK_INTERVAL_S", 0.5)
    monkeypatch.setattr(const, "ALARM_REFRESH_INTERVAL_S", 3.0)
    watchdog = spawn("watchdog", ["watchdog", "--startup-grace", "5", "--confirm", "1"],
                     rpm_env(stack, mqtt_user=WATCHDOG_USER), tmp_path)
    now_utc = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    strap = HeartRateStrap(battery_level=12, interval_s=1.0)
    cgm = ContinuousGlucoseMonitor(session_start=now_utc + timedelta(hours=1) - timedelta(hours=336 - 6),
                                   run_time_hours=336, interval_s=3600)
    registry = Registry(patient=PATIENT, devices=tuple(
        PairedDevice(address=d.address, kind=k, info=DeviceInfo(serial=d.info.serial), bonded=True)
        for d, k in ((strap, DeviceKind.HEART_RATE), (cgm, DeviceKind.CGM))))
    settings = AgentSettings(state_dir=tmp_path / "edge", mqtt_url=stack.mqtt_url(ADMIN_USER),
                             mqtt_backoff_max_s=1.0, ble_backoff_max_s=1.0)
    bootstrap = (stack.settings.kafka_url or "").removeprefix("kafka://")
    watch = (*pipeline["watch"], watchdog)

    def device_alerts(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {r["rule"]: r for r in records if str(r.get("rule", "")).startswith("tech.device.")}

    with running(watchdog):
        async with EmulatedBluez() as bz:
            await bz.add_devices([strap, cgm])
            agent = Agent(settings, registry)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                deadline = asyncio.get_running_loop().time() + 180
                found: dict[str, dict[str, Any]] = {}
                while {"tech.device.battery_low", "tech.device.cgm_session_ending"} - set(found):
                    assert asyncio.get_running_loop().time() < deadline, f"technical alerts, got {sorted(found)}"
                    for p in watch:
                        assert p.alive(), f"{p.name} died:\n{p.log_tail(40)}"
                    found = device_alerts(await read_alerts(bootstrap))
            finally:
                stop.set()
                async with asyncio.timeout(30):
                    await task
    battery, session = found["tech.device.battery_low"], found["tech.device.cgm_session_ending"]
    for alert in (battery, session):
        assert alert["kind"] == "technical" and alert["state"] == "raised" and alert["patient"] == PATIENT
        assert alert["metric"] == "technical" and alert["value"] is None and alert["remedy"]
    assert battery["severity"] == "warning" and "12 %" in battery["message"]
    assert session["severity"] == "warning" and "ends in" in session["message"]
