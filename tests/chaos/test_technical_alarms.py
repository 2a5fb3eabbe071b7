"""Never silent: when rpm cannot monitor someone, a person is told within a minute (issue 13).

Real processes throughout (bridge, worker, watchdog, notifier, on real Mosquitto, Tansu and
InfluxDB); the failures are real (SIGKILL of every worker, SIGSTOP of the bridge). The technical
alert must appear on ``rpm.alerts`` (what every nurse station shows) and at the on-call webhook
within 60 s of the failure, and clear once the failed part is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpm_core.services import NOTIFIER_USER, WATCHDOG_USER, ServiceProcess, Stack, free_port
from stream import topics
from tests.notify.servers import WEBHOOK_SECRET, WebhookReceiver
from tests.support.kafka import read_all
from tests.support.procs import rpm_env, spawn, spawn_bridge

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEADLINE_S = 60.0  # the requirement: a person is told within a minute


def spawn_worker(stack: Stack, tmp_path: Path, name: str) -> ServiceProcess:
    port = free_port()
    proc = spawn(name, ["worker", "--partitions", str(topics.DEFAULT_READINGS_PARTITIONS), "--data-dir",
                        str(tmp_path / name), "--web-port", str(port)], rpm_env(stack), tmp_path / "logs")
    proc.port = port
    return proc


def watchdog_health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except OSError as exc:
        body = getattr(exc, "read", None)
        return json.loads(body()) if callable(body) else None


async def until(check: Callable[[], Any], *, within: float, what: str, procs: tuple[ServiceProcess, ...]) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; a deadline, not a speed claim."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.name} died while waiting for {what}:\n{p.log_tail(40)}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log_tail(25)}" for p in procs)
            raise AssertionError(f"not within {within:.0f} s: {what}\n{logs}")
        await asyncio.sleep(0.5)


async def technical(stack: Stack) -> list[dict[str, Any]]:
    values = await read_all(stack.settings.kafka_bootstrap(), topics.ALERTS, idle_ms=300)
    docs = [orjson.loads(v) for v in values]
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "technical"]


def event(rule: str, state: str, after: float) -> Callable[[], Any]:
    async def find(stack: Stack) -> dict[str, Any] | None:
        return next((d for d in await technical(stack) if d["rule"] == rule and d["state"] == state
                     and d["time"] >= after), None)
    return find  # type: ignore[return-value]


@pytest.fixture
async def hooks() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


def routes(url: str) -> str:
    return f"""
version: 1
defaults: {{group_wait: 0s}}
delivery: {{retries: 1, timeout: 3s, backoff_max: 0.2s}}
receivers:
  ward: {{channels: [{{type: nurse_station}}]}}
  on-call: {{channels: [{{type: webhook, url: "{url}/on-call", secret_env: HOOK_SECRET}}]}}
route:
  receiver: ward
  routes:
    - name: technical
      match: {{metric: technical}}
      receiver: on-call
"""


async def test_every_worker_killed_and_the_bridge_frozen_reach_a_person_within_a_minute_and_clear(
        stack: Stack, tmp_path: Path, hooks: WebhookReceiver) -> None:
    logs = tmp_path / "logs"
    bridge = spawn_bridge(stack, logs)
    worker = spawn_worker(stack, tmp_path, "worker-1")
    wport = free_port()
    watchdog = spawn("watchdog", ["watchdog", "--health-port", str(wport), "--startup-grace", "5"],
                     rpm_env(stack, mqtt_user=WATCHDOG_USER), logs)
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(routes(hooks.url))
    notifier = spawn("notifier", ["notifier"], rpm_env(stack, mqtt_user=NOTIFIER_USER, HOOK_SECRET=WEBHOOK_SECRET,
                                                       RPM_ROUTES=str(routes_file)), logs)
    procs = (bridge, worker, watchdog, notifier)
    try:
        # everything up and judged healthy: the watchdog has nothing active
        await until(lambda: (h := watchdog_health(wport)) is not None and h["active"] == [] and h["kafka"],
                    within=180, what="the watchdog to see a healthy pipeline", procs=procs)
        await until(lambda: "notifier live" in notifier.log_path.read_text(errors="replace"), within=60,
                    what="the notifier to go live", procs=procs)

        killed_at = time.time()
        worker.kill()
        raised = await until(lambda: event("tech.workers_missing", "raised", killed_at)(stack),
                             within=DEADLINE_S, what="tech.workers_missing on rpm.alerts",
                             procs=(bridge, watchdog, notifier))
        assert raised["severity"] == "critical" and raised["wards"] == ["*"] and raised["remedy"]

        def paged() -> bool:
            return any(a["rule"] == "tech.workers_missing" for h in hooks.on("/on-call") for a in h.doc["alerts"])
        await until(paged, within=max(1.0, killed_at + DEADLINE_S - time.time()),
                    what="the on-call webhook to be called", procs=(bridge, watchdog, notifier))
        page = next(h for h in hooks.on("/on-call") if h.doc["alerts"][0]["rule"] == "tech.workers_missing")
        assert page.doc["summary"].startswith("[rpm] TECHNICAL ALERT")
        assert page.received - killed_at <= DEADLINE_S

        worker = spawn_worker(stack, tmp_path, "worker-2")
        procs = (bridge, worker, watchdog, notifier)
        cleared = await until(lambda: event("tech.workers_missing", "cleared", killed_at)(stack), within=180,
                              what="tech.workers_missing cleared once a worker is back", procs=procs)
        assert cleared["alert_id"] == raised["alert_id"]

        frozen_at = time.time()
        os.kill(bridge.pid, signal.SIGSTOP)
        try:
            silent = await until(lambda: event("tech.bridge_silent", "raised", frozen_at)(stack), within=DEADLINE_S,
                                 what="tech.bridge_silent on rpm.alerts", procs=(worker, watchdog, notifier))
        finally:
            os.kill(bridge.pid, signal.SIGCONT)
        assert silent["scope"] and "has not reported" in silent["message"]
        await until(lambda: event("tech.bridge_silent", "cleared", frozen_at)(stack), within=120,
                    what="tech.bridge_silent cleared once the bridge runs again", procs=procs)
    finally:
        for p in (notifier, watchdog, worker, bridge):
            p.stop()
