"""Never silent, for the services people watch or are paged by: a nurse station, a notifier or an
HL7 follower (the nurse call's feed) that freezes is told within a minute (issue 13's rule); one
stopped on purpose is not missed, unless no notifier is left. Real processes (watchdog, nurse
station, notifier, HL7 follower on real Tansu, InfluxDB and Mosquitto); a file of its own so that
pytest-xdist runs it beside tests/chaos/test_technical_alarms.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from rpm_app.services import ServiceProcess, Stack
from rpm_core.host import free_port
from rpm_core.mqtt_users import NOTIFIER_USER, WATCHDOG_USER
from rpm_core.roster import hash_password
from tests.chaos.test_technical_alarms import (
    DEADLINE_S,
    PASSWORD,
    STATION,
    event,
    hooks,
    left_ms,
    routes,
    until,
    watchdog_health,
)
from tests.notify.servers import WEBHOOK_SECRET, WebhookReceiver
from tests.support.procs import rpm_env, spawn

pytestmark = [pytest.mark.services, pytest.mark.slow]
__all__ = ["hooks"]  # the fixture, shared with test_technical_alarms


async def test_a_frozen_station_notifier_or_hl7_follower_reaches_a_person_within_a_minute_and_one_stopped_is_not_missed(
        stack: Stack, tmp_path: Path, hooks: WebhookReceiver) -> None:
    """A station whose process freezes (SIGSTOP) shows nothing new on its screens and takes no
    acknowledgement; a frozen notifier pages no one; a frozen HL7 follower feeds the nurse call
    nothing. The watchdog tells the wards (and, for the station, the operators) within the minute,
    and clears it when they run again. Stopped on purpose (SIGTERM), each says so and is not missed."""
    logs = tmp_path / "logs"
    started: list[ServiceProcess] = []
    # the nurse call's receiver: it takes connections (the follower probes it while no alert waits,
    # and would rightly report one that nothing listens for as stuck)
    kept: list[asyncio.StreamWriter] = []
    receiver = await asyncio.start_server(lambda _r, w: kept.append(w), "127.0.0.1", 0)
    try:
        wport = free_port()
        watchdog = spawn("watchdog", ["watchdog", "--health-port", str(wport), "--startup-grace", "5"],
                         rpm_env(stack, mqtt_user=WATCHDOG_USER), logs)
        sport = free_port()
        station = spawn("nurse-station", ["nurse-station", "--port", str(sport), "--state-dir",
                                          str(tmp_path / "station")],
                        rpm_env(stack, mqtt_user=None, RPM_NURSE_CREDENTIALS=f"{STATION}={hash_password(PASSWORD)}"),
                        logs)
        routes_file = tmp_path / "routes.yaml"
        routes_file.write_text(routes(hooks.url))
        notifier = spawn("notifier", ["notifier", "--client-id", "rpm-notifier-chaos"], rpm_env(
            stack, mqtt_user=NOTIFIER_USER, HOOK_SECRET=WEBHOOK_SECRET, RPM_ROUTES=str(routes_file)), logs)
        receiver_port = receiver.sockets[0].getsockname()[1]
        follower = spawn("hl7-follow", ["hl7", "follow", "--to", f"mllp://127.0.0.1:{receiver_port}", "--group",
                                        "rpm-hl7-chaos"], rpm_env(stack, mqtt_user=None), logs)
        started += [watchdog, station, notifier, follower]
        follows = f"hl7:{socket.gethostname()}:rpm-hl7-chaos"

        def watched() -> list[str]:
            return list((watchdog_health(wport) or {}).get("watched", []))
        name = await until(lambda: next((c for c in watched() if c.startswith("station:") and c.endswith(f":{sport}")),
                                        None), within=180, what="the watchdog to see the station", procs=tuple(started))
        await until(lambda: "notifier:rpm-notifier-chaos" in watched(), within=180,
                    what="the watchdog to see the notifier", procs=tuple(started))
        await until(lambda: follows in watched(), within=180, what="the watchdog to see the HL7 follower",
                    procs=tuple(started))
        instance = name.removeprefix("station:")
        active = watchdog_health(wport)["active"]  # type: ignore[index]
        assert not any(a.startswith(("tech.station", "tech.notifier", "tech.hl7")) for a in active), active

        frozen_at = time.time()
        for p in (station, notifier, follower):
            os.kill(p.pid, signal.SIGSTOP)
        try:
            silent = await until(lambda: event("tech.station_silent", "raised", frozen_at)(stack), within=DEADLINE_S,
                                 what="tech.station_silent on rpm.alerts", procs=(watchdog,))
            unpaged = await until(lambda: event("tech.notifier_silent", "raised", frozen_at)(stack),
                                  within=left_ms(frozen_at) / 1000, what="tech.notifier_silent on rpm.alerts",
                                  procs=(watchdog,))
            unfed = await until(lambda: event("tech.hl7_silent", "raised", frozen_at)(stack),
                                within=left_ms(frozen_at) / 1000, what="tech.hl7_silent on rpm.alerts",
                                procs=(watchdog,))
        finally:
            for p in (station, notifier, follower):
                os.kill(p.pid, signal.SIGCONT)
        assert silent["scope"] == instance and silent["severity"] == "critical" and silent["wards"] == ["*"]
        assert silent["time"] - frozen_at <= DEADLINE_S and "has not reported" in silent["message"]
        assert unpaged["scope"] == "rpm-notifier-chaos" and unpaged["time"] - frozen_at <= DEADLINE_S
        assert "nobody is paged" in unpaged["message"] and unpaged["wards"] == ["*"]
        assert unfed["scope"] == follows.removeprefix("hl7:") and unfed["time"] - frozen_at <= DEADLINE_S
        assert "no longer reach the nurse call" in unfed["message"] and unfed["wards"] == ["*"]
        for rule, raised in (("tech.station_silent", silent), ("tech.notifier_silent", unpaged),
                             ("tech.hl7_silent", unfed)):
            cleared = await until(lambda r=rule: event(r, "cleared", frozen_at)(stack), within=120,  # type: ignore[misc]
                                  what=f"{rule} cleared once it runs again", procs=tuple(started))
            assert cleared["alert_id"] == raised["alert_id"]

        for p, seen in ((station, name), (notifier, "notifier:rpm-notifier-chaos"), (follower, follows)):
            stopped_at = time.time()
            p.stop()  # SIGTERM: its last heartbeat says "stopping", so it is no longer watched
            assert p.proc.returncode == 0, p.log_tail(30)
            await until(lambda s=seen: s not in (watchdog_health(wport) or {"watched": [s]})["watched"],  # type: ignore[misc]
                        within=60, what=f"the watchdog to stop watching {seen}, which said it stops", procs=(watchdog,))
        active = watchdog_health(wport)["active"]  # type: ignore[index]
        assert not any(a.startswith(("tech.station", "tech.notifier_", "tech.hl7")) for a in active), active
        # but with no notifier left at all, nobody is paged: that is told, within the minute
        missing = await until(lambda: event("tech.notifiers_missing", "raised", stopped_at)(stack),
                              within=left_ms(stopped_at) / 1000, what="tech.notifiers_missing on rpm.alerts",
                              procs=(watchdog,))
        assert missing["severity"] == "critical" and "nobody is paged" in missing["message"]
    finally:
        for p in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            p.stop()
        receiver.close()
        for w in kept:
            w.close()


async def test_a_watchdog_refused_by_mosquitto_says_device_alarms_are_unwatched_within_a_minute(
        stack: Stack, tmp_path: Path) -> None:
    """The watchdog reads the edge agents' device alarms (battery, sensor, bond) from MQTT. A watchdog
    whose MQTT password is wrong only logged it: device trouble then reached no one."""
    wrong = stack.mqtt_url(WATCHDOG_USER).replace("@", "x@", 1)  # one more character in the password
    started_at = time.time()
    wport = free_port()
    watchdog = spawn("watchdog", ["watchdog", "--health-port", str(wport), "--startup-grace", "5"],
                     rpm_env(stack, mqtt_user=None, RPM_MQTT_URL=wrong), tmp_path / "logs")
    try:
        raised = await until(lambda: event("tech.device_alarms_unwatched", "raised", started_at)(stack),
                             within=DEADLINE_S + 30, what="tech.device_alarms_unwatched on rpm.alerts",
                             procs=(watchdog,))
        assert raised["severity"] == "warning" and raised["wards"] == ["*"] and raised["component"] == "watchdog"
        assert "refused" in raised["message"] and "device alarms" in raised["message"]
        assert "refused" in watchdog_health(wport)["device_alarms"]  # type: ignore[index]
    finally:
        watchdog.stop()


async def test_a_notifier_that_died_while_no_watchdog_ran_is_told_by_the_next_one_within_a_minute(
        stack: Stack, tmp_path: Path, hooks: WebhookReceiver) -> None:
    """A watchdog watched from its start on: a component that died while none ran (a restart, an
    upgrade) had never reported to the new one, so nothing was told. It now reads back the last
    hour of heartbeats."""
    logs = tmp_path / "logs"
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(routes(hooks.url))
    wport = free_port()
    first = spawn("watchdog", ["watchdog", "--health-port", str(wport), "--startup-grace", "5"],
                  rpm_env(stack, mqtt_user=WATCHDOG_USER), logs)
    notifier = spawn("notifier", ["notifier", "--client-id", "rpm-notifier-gone"], rpm_env(
        stack, mqtt_user=NOTIFIER_USER, HOOK_SECRET=WEBHOOK_SECRET, RPM_ROUTES=str(routes_file)), logs)
    started = [first, notifier]
    try:
        await until(lambda: "notifier:rpm-notifier-gone" in (watchdog_health(wport) or {}).get("watched", []),
                    within=180, what="the first watchdog to see the notifier", procs=tuple(started))
        first.stop()
        notifier.kill()  # dies while no watchdog runs, without a word
        again_at = time.time()
        second_port = free_port()
        second = spawn("watchdog-2", ["watchdog", "--health-port", str(second_port), "--startup-grace", "5"],
                       rpm_env(stack, mqtt_user=WATCHDOG_USER), logs)
        started.append(second)
        silent = await until(lambda: event("tech.notifier_silent", "raised", again_at)(stack), within=DEADLINE_S,
                             what="tech.notifier_silent from the watchdog started after the notifier died",
                             procs=(second,))
        assert silent["scope"] == "rpm-notifier-gone" and "nobody is paged" in silent["message"]
        assert silent["time"] - again_at <= DEADLINE_S
    finally:
        for p in reversed(started):
            p.stop()
