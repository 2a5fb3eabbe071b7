"""The notifier end to end against real Tansu, InfluxDB, Mosquitto, an SMTP server and a webhook receiver.

Alerts are produced to ``rpm.alerts`` as the worker publishes them; the notifier runs in this test's
event loop (``Notifier.run``), except for the restart test, which runs the real ``rpm notifier``
command and kills it. Delays are seconds; waits are deadlines for a condition, not speed tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.commands import CommandSubscriber
from notify.loader import parse_routes
from notify.service import Notifier
from rpm_app.services import Stack
from rpm_core import topics
from rpm_core.acks import decode_ack
from rpm_core.commands import PatientMessage
from rpm_core.host import free_port
from rpm_core.mqtt_users import NOTIFIER_USER
from rpm_core.settings import MqttSettings, Secret
from rpm_core.wire import command_topic
from tests.notify.conftest import AGENT_USER, PATIENT, Inbox
from tests.notify.helpers import event
from tests.notify.servers import WEBHOOK_SECRET, WebhookReceiver, wait_for
from tests.support.influx import fake_influx, rows
from tests.support.kafka import produce, read_all
from tests.support.mqtt import Publisher

pytestmark = [pytest.mark.services]


def routes_yaml(*, hooks: str, smtp: Inbox, steps: str, group_wait: str = "0s", repeat: str = "1h",
                nurses: str = "") -> str:
    """A routes file for these tests: nurses (station + agent), on-call webhook, physician e-mail."""
    return f"""
version: 1
defaults: {{group_wait: {group_wait}, group_interval: 1s, repeat_interval: {repeat}}}
delivery: {{retries: 1, timeout: 3s, backoff_max: 0.2s}}
smtp: {{host: 127.0.0.1, port: {smtp.port}, from: rpm@hospital.example, ca_file: "{smtp.ca_file}"}}
receivers:
  nurses:
    channels:
      - {{type: nurse_station}}
      - {{type: edge_agent, messages: {{glucose_low: "Your glucose is low: take 15 g of fast carbohydrate."}}}}{nurses}
  oncall: {{channels: [{{type: webhook, url: "{hooks}/oncall", secret_env: HOOK_SECRET, allow_http_host: 127.0.0.1}}]}}
  physician: {{channels: [{{type: email, to: [dr@hospital.example]}}]}}
  both:
    channels:
      - {{type: webhook, url: "{hooks}/both", secret_env: HOOK_SECRET, allow_http_host: 127.0.0.1}}
      - {{type: email, to: [team@hospital.example]}}
escalations:
  critical:
    steps:
{steps}
route:
  receiver: nurses
  routes:
    - {{name: critical, match: {{severity: critical}}, escalation: critical}}
"""


CHAIN = """      - {after: 0s, receiver: nurses}
      - {after: 2s, receiver: oncall}
      - {after: 4s, receiver: physician}"""


@contextlib.asynccontextmanager
async def notifier(stack: Stack, text: str, ward: str | None = "north") -> AsyncIterator[Notifier]:
    """A live notifier in this event loop (rpm-notifier's MQTT user), stopped on exit; every patient
    is on ``ward`` (None: on no ward of the roster)."""
    settings = stack.settings
    from dataclasses import replace

    settings = replace(settings, mqtt_url=stack.mqtt_url(NOTIFIER_USER))
    n = Notifier(routes=parse_routes(text, source="routes.yaml"), settings=settings,
                 secrets={"HOOK_SECRET": Secret(WEBHOOK_SECRET)}, ward_of=lambda _p: ward,
                 client_id="rpm-notifier-test")
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(n.run(stop))
    try:
        await wait_for(lambda: n.live.is_set() or task.done(), within=60, what="the notifier to go live")
        if task.done():
            task.result()
        yield n
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@contextlib.asynccontextmanager
async def patient_agent(stack: Stack, *, auto_ack: bool) -> AsyncIterator[CommandSubscriber]:
    """The patient's command subscriber (agent-p0001) connected and subscribed."""
    agent = CommandSubscriber(mqtt=MqttSettings.from_url(stack.mqtt_url(AGENT_USER)), patient=PATIENT,
                              auto_ack=auto_ack)
    task = asyncio.get_running_loop().create_task(agent.run())
    try:
        await asyncio.wait_for(agent.subscribed.wait(), 20)
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def raise_alerts(stack: Stack, docs: list[dict[str, Any]]) -> float:
    """Produce alert events as the worker does (key: patient); returns the time just before."""
    before = time.time()
    await produce(stack.settings.kafka_bootstrap(), topics.ALERTS,
                  [(d["patient"].encode(), orjson.dumps(d)) for d in docs], keys=stack.settings.key_ring())
    return before


def audit(stack: Stack, where: str = "") -> list[dict[str, Any]]:
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    return rows(url, db, f"SELECT * FROM notifications{' WHERE ' + where if where else ''}")


async def eventually_audit(stack: Stack, where: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def probe() -> bool:
        found[:] = audit(stack, where)
        return len(found) >= count

    await wait_for(probe, within=30, what=f"{count} audit point(s) where {where}", interval=0.3)
    return found


async def test_an_unacknowledged_critical_alert_walks_the_chain_on_every_channel(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    async with WebhookReceiver() as hooks, patient_agent(notify_stack, auto_ack=False) as agent:
        text = routes_yaml(hooks=hooks.url, smtp=smtp_server, steps=CHAIN)
        async with notifier(notify_stack, text):
            start = await raise_alerts(notify_stack, [event(PATIENT)])
            await wait_for(lambda: len(smtp_server.messages) == 1, within=30, what="the physician's e-mail")
            email_at = time.time()
    (message,) = agent.received
    assert isinstance(message, PatientMessage) and message.text.startswith("Your glucose is low")
    (hook,) = hooks.on("/oncall")
    assert hooks.rejected == 0 and hook.doc["step"] == 1 and hook.doc["alerts"][0]["rule"] == "glucose_low"
    assert hook.received - start >= 2.0 and email_at - start >= 4.0  # not before the configured delays
    assert smtp_server.over_tls == [True]
    assert smtp_server.messages[0]["Subject"].startswith("[rpm] ESCALATION step 2: CRITICAL p0001 glucose_low")
    delivered = await eventually_audit(notify_stack, "outcome = 'delivered'", 4)
    assert sorted((r["channel"], r["step"]) for r in delivered) == [
        ("nurses.edge_agent", 0), ("nurses.nurse_station", 0), ("oncall.webhook", 1), ("physician.email", 2)]
    assert all(r["patient"] == PATIENT and r["rule"] == "glucose_low" and r["severity"] == "critical"
               for r in delivered)
    url, db = notify_stack.settings.influx_url, notify_stack.settings.influx_db
    assert url
    escalated = rows(url, db, "SELECT * FROM alerts WHERE state = 'escalated'")
    assert sorted((r["step"], r["channel"]) for r in escalated) == [(1, "oncall.webhook"), (2, "physician.email")]


async def test_an_alert_of_a_patient_on_no_ward_is_no_nurse_station_receipt(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    """No station shows a patient on no ward of the roster: the nurse_station channel recorded
    "delivered … to the nurse station of ward unassigned" for an alert no nurse saw. Now it fails,
    with the reason, and the rest of the chain goes on."""
    async with WebhookReceiver() as hooks, patient_agent(notify_stack, auto_ack=False):
        text = routes_yaml(hooks=hooks.url, smtp=smtp_server, steps=CHAIN)
        async with notifier(notify_stack, text, ward=None):
            await raise_alerts(notify_stack, [event(PATIENT)])
            await wait_for(lambda: len(hooks.on("/oncall")) == 1, within=30, what="the on-call page")
    [station] = await eventually_audit(notify_stack, "channel = 'nurses.nurse_station'", 1)
    assert station["outcome"] == "failed" and "on no ward of the roster" in station["detail"]


async def test_the_patients_acknowledgement_reaches_rpm_alert_acks_and_stops_the_chain(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    async with WebhookReceiver() as hooks, patient_agent(notify_stack, auto_ack=True) as agent:
        text = routes_yaml(hooks=hooks.url, smtp=smtp_server, steps=CHAIN)
        async with notifier(notify_stack, text) as n:
            doc = event(PATIENT)
            await raise_alerts(notify_stack, [doc])
            await wait_for(lambda: n.router.is_acknowledged(doc["alert_id"]), within=30,
                           what="the patient's ack to reach the router through rpm.alert-acks")
            await asyncio.sleep(5)  # both later steps would have gone out by now
    assert len(agent.received) == 1
    assert hooks.hooks == [] and smtp_server.messages == []
    acks = [decode_ack(v) for v in await read_all(notify_stack.settings.kafka_bootstrap(), topics.ALERT_ACKS)]
    assert [(a.alert_id, a.patient, a.by, a.station) for a in acks] == [
        (doc["alert_id"], PATIENT, "patient (edge agent)", "edge-agent")]
    (ack,) = await eventually_audit(notify_stack, "outcome = 'acknowledged'", 1)
    assert (ack["channel"], ack["recipient"], ack["step"]) == ("edge-agent", "patient (edge agent)", 0)


async def test_a_channel_that_is_down_is_retried_then_skipped_to_the_next_step(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    steps = """      - {after: 0s, receiver: nurses}
      - {after: 1s, receiver: oncall}
      - {after: 10m, receiver: physician}"""
    dead = f"http://127.0.0.1:{free_port()}"
    text = routes_yaml(hooks=dead, smtp=smtp_server, steps=steps)
    async with notifier(notify_stack, text):
        await raise_alerts(notify_stack, [event(PATIENT)])
        # the 10-minute step arrives within seconds: step 1 reached nobody, so it was skipped
        await wait_for(lambda: len(smtp_server.messages) == 1, within=30, what="the physician's e-mail")
    failed = await eventually_audit(notify_stack, "outcome = 'failed'", 2)
    assert [(r["channel"], r["attempt"], r["step"]) for r in sorted(failed, key=lambda r: r["attempt"])] == [
        ("oncall.webhook", 1, 1), ("oncall.webhook", 2, 1)]
    assert "cannot reach" in failed[0]["detail"] and failed[0]["recipient"] == f"{dead}/oncall"
    (skip,) = await eventually_audit(notify_stack, "outcome = 'skipped' AND kind = 'escalation'", 1)
    assert skip["step"] == 1 and "escalating to step 2 (physician) now" in skip["detail"]
    (mail,) = await eventually_audit(notify_stack, "channel = 'physician.email'", 1)
    assert mail["outcome"] == "delivered" and mail["fired_at"] - mail["run"] < 600


async def test_a_burst_of_50_alerts_is_one_grouped_message_per_channel_per_repeat_interval(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    steps = "      - {after: 0s, receiver: both}"
    async with WebhookReceiver() as hooks:
        text = routes_yaml(hooks=hooks.url, smtp=smtp_server, steps=steps, group_wait="2s", repeat="6s")
        async with notifier(notify_stack, text):
            burst = [event(PATIENT, f"rule_{k:02d}", since=1764100000.0 + k) for k in range(50)]
            await raise_alerts(notify_stack, burst)
            await wait_for(lambda: len(hooks.on("/both")) == 1, within=30, what="the grouped message")
            first = time.time()
            await wait_for(lambda: len(hooks.on("/both")) == 2, within=30, what="the repeat")
            second = time.time()
            await wait_for(lambda: len(smtp_server.messages) == 2, within=30, what="the repeated e-mail")
    one, two = hooks.on("/both")
    assert (one.doc["kind"], two.doc["kind"]) == ("step", "repeat")
    assert len(one.doc["alerts"]) == len(two.doc["alerts"]) == 50
    assert two.received - one.received >= 5.0 and second > first  # one message per repeat interval
    subjects = [m["Subject"] for m in smtp_server.messages]
    assert subjects[0].endswith("(+49 more)") and subjects[1].startswith("[rpm] REMINDER ")
    delivered = audit(notify_stack, "outcome = 'delivered'")
    by_channel = sorted(r["channel"] for r in delivered)
    assert by_channel == ["both.email", "both.email", "both.webhook", "both.webhook"]


@pytest.mark.slow
async def test_pending_chains_survive_a_kill_9_of_the_notifier(notify_stack: Stack, tmp_path: Path) -> None:
    from tests.support.procs import rpm_env, spawn

    steps = """      - {after: 0s, receiver: first}
      - {after: 10s, receiver: second}"""
    async with WebhookReceiver() as hooks:
        routes = tmp_path / "routes.yaml"
        routes.write_text(f"""
version: 1
defaults: {{group_wait: 0s}}
delivery: {{retries: 1, timeout: 3s, backoff_max: 0.2s}}
receivers:
  first:
    channels: [{{type: webhook, url: "{hooks.url}/first", secret_env: HOOK_SECRET, allow_http_host: 127.0.0.1}}]
  second:
    channels: [{{type: webhook, url: "{hooks.url}/second", secret_env: HOOK_SECRET, allow_http_host: 127.0.0.1}}]
escalations: {{chain: {{steps: [{steps.strip().replace(chr(10), ',').replace('- ', '')}]}}}}
route: {{escalation: chain}}
""")
        env = rpm_env(notify_stack, mqtt_user=NOTIFIER_USER, HOOK_SECRET=WEBHOOK_SECRET, RPM_ROUTES=str(routes))
        log_dir = tmp_path / "logs"

        async def live(proc: Any) -> None:
            def ready() -> bool:
                if not proc.alive():
                    raise AssertionError(f"rpm notifier died:\n{proc.log_tail(40)}")
                return "notifier live" in proc.log_path.read_text(errors="replace")
            await wait_for(ready, within=60, what="rpm notifier to go live", interval=0.2)

        first = spawn("notifier-1", ["notifier"], env, log_dir)
        try:
            await live(first)
            start = await raise_alerts(notify_stack, [event(PATIENT)])
            await wait_for(lambda: len(hooks.on("/first")) == 1, within=30, what="step 0")
            await eventually_audit(notify_stack, "channel = 'first.webhook'", 1)
            first.kill()  # SIGKILL: no goodbye, timers in memory are gone
        finally:
            first.stop()
        log_dir2 = tmp_path / "logs2"
        second = spawn("notifier-2", ["notifier"], env, log_dir2)
        try:
            await live(second)
            await wait_for(lambda: len(hooks.on("/second")) == 1, within=60, what="step 1 after the restart")
            await asyncio.sleep(1)
        finally:
            second.stop()
    (late,) = hooks.on("/second")
    assert late.received - start >= 10.0  # on time (or late if the restart took longer), never early
    assert len(hooks.on("/first")) == 1  # step 0 is not sent again: the audit said it went out
    assert late.doc["step"] == 1


@pytest.mark.slow
async def test_with_a_real_worker_the_patients_ack_shows_as_acknowledged_in_influxdb(
        notify_stack: Stack, smtp_server: Inbox, tmp_path: Path) -> None:
    """Readings → bridge → worker raises a critical alert → notifier → the patient's agent (auto ack) →
    rpm.alert-acks → the worker acknowledges it → InfluxDB ``alerts`` state ``acknowledged``."""
    from tests.support.mqtt import Publisher, heart_rate
    from tests.support.procs import rpm_env, spawn, spawn_bridge

    url, db = notify_stack.settings.influx_url, notify_stack.settings.influx_db
    assert url
    worker = spawn("worker", ["worker", "--partitions", "2", "--data-dir", str(tmp_path / "worker")],
                   rpm_env(notify_stack), tmp_path)
    bridge = spawn_bridge(notify_stack, tmp_path)
    try:
        steps = "      - {after: 0s, receiver: nurses}\n      - {after: 10m, receiver: oncall}"
        async with WebhookReceiver() as hooks, patient_agent(notify_stack, auto_ack=True) as agent:
            text = routes_yaml(hooks=hooks.url, smtp=smtp_server, steps=steps).replace(
                "glucose_low: ", "tachycardia: \"Your heart is racing: sit down and rest.\", glucose_low: ")
            async with notifier(notify_stack, text):
                now = time.time()
                with Publisher(notify_stack) as pub:  # 160 bpm for 3 min: critical after 2 min
                    pub.readings(PATIENT, "hrs-1", heart_rate(now - 200, 180, 160))

                def acknowledged() -> bool:
                    if not worker.alive():
                        raise AssertionError(f"worker died:\n{worker.log_tail(40)}")
                    return bool(rows(url, db, "SELECT * FROM alerts WHERE state = 'acknowledged'"))

                await wait_for(acknowledged, within=180, what="the worker to record the patient's ack",
                               interval=1.0)
        (ack,) = rows(url, db, "SELECT * FROM alerts WHERE state = 'acknowledged'")
        assert (ack["patient"], ack["rule"], ack["by"]) == (PATIENT, "tachycardia", "patient (edge agent)")
        assert agent.received[0].text == "Your heart is racing: sit down and rest."
        assert hooks.hooks == []
    finally:
        bridge.stop()
        worker.stop()


async def test_malformed_alerts_and_commands_are_rejected_and_nothing_stops(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    """A list as an alert's severity raised TypeError in the notifier's consumer (which stopped the
    notifier), and a list as a command's severity raised TypeError in the patient's agent."""
    good = event(PATIENT)
    hostile_alerts = [{**good, "severity": []}, {**good, "state": {}}, {**good, "severity": ["critical"], "state": []}]
    message = {"v": 1, "type": "message", "id": "n-1", "alert_ids": ["3f2a00aa"], "severity": "critical",
               "text": "hello", "at": time.time()}
    hostile_commands = [{**message, "severity": []}, {**message, "severity": {"critical": 1}},
                        {**message, "alert_ids": [[]]}, {**message, "at": [1]}, {**message, "text": None}]
    async with WebhookReceiver() as hooks, patient_agent(notify_stack, auto_ack=False) as agent:
        text = routes_yaml(hooks=hooks.url, smtp=smtp_server, steps="      - {after: 0s, receiver: nurses}")
        async with notifier(notify_stack, text) as n:
            with Publisher(notify_stack, NOTIFIER_USER) as pub:  # the user that may write command topics
                for doc in hostile_commands:
                    info = pub.client.publish(command_topic(PATIENT), orjson.dumps(doc), qos=1)
                    info.wait_for_publish(10)
                    assert info.is_published()
            await wait_for(lambda: agent.rejected == len(hostile_commands), within=20,
                           what="the agent to reject every malformed command")
            await produce(notify_stack.settings.kafka_bootstrap(), topics.ALERTS,  # hostile content, signed
                          [(PATIENT.encode(), orjson.dumps(d)) for d in hostile_alerts] + [(PATIENT.encode(), b"{")],
                          keys=notify_stack.settings.key_ring())
            await raise_alerts(notify_stack, [good])
            await wait_for(lambda: len(agent.received) == 1, within=30, what="the good alert's message")
            assert n.stats.rejected == len(hostile_alerts) + 1
    assert agent.received[0].alert_ids == (good["alert_id"],)


async def test_a_malformed_influxdb_answer_on_restore_is_no_crash_the_notifier_goes_live_without_it() -> None:
    """The restore read InfluxDB's answer with [0], ["columns"] and .get: a malformed answer raised
    IndexError/KeyError/AttributeError out of the consumer task instead of the ValueError it retries."""
    from rpm_core.settings import Settings
    from tests.notify.helpers import routes

    answers = [b"[]", b'{"results": "x"}', b'{"results": ["x"]}', b'{"results": [{"series": [{"values": [[1]]}]}]}',
               b'{"results": [{"series": [{"columns": [[]], "values": [[1]]}]}]}',
               b'{"results": [{"series": [{"columns": ["a"], "values": [1]}]}]}',
               b'{"results": [{"series": [{"columns": ["a"], "values": [[1, 2]]}]}]}']
    async with fake_influx(answers) as influx:
        for answer in answers:
            clock = iter(range(0, 10**6, 100))  # the second reading is past the restore deadline
            n = Notifier(routes=routes(), settings=Settings(influx_url=influx.url),
                         secrets={}, ward_of=lambda _p: None, clock=lambda: float(next(clock)))  # noqa: B023
            try:
                assert await n._read_audit() == [], answer
            finally:
                assert n._http is not None
                await n._http.close()
    assert influx.pending == []


async def test_a_patients_ack_nested_too_deeply_is_ignored_and_the_notifier_keeps_paging(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    """JSON 1,000 levels deep is read by orjson but makes Python's json raise RecursionError, which is no
    ValueError: from the patient's own MQTT user it ended the notifier's patient-ack task, and with it
    the whole notifier (its TaskGroup), and the message, never acknowledged, came back at every restart."""
    deep = b"[" * 1015 + b"]" * 1015
    hostile = b'{"v": 1, "id": "n-1", "alert_ids": ["3f2a00aa"], "at": 1764100000, "pad": ' + deep + b"}"
    async with WebhookReceiver() as hooks, patient_agent(notify_stack, auto_ack=True):
        text = routes_yaml(hooks=hooks.url, smtp=smtp_server, steps=CHAIN)
        async with notifier(notify_stack, text) as n:
            with Publisher(notify_stack, AGENT_USER) as pub:  # the patient's own user may write its ack topic
                info = pub.client.publish(f"rpm/v1/p/{PATIENT}/ack", hostile, qos=1)
                info.wait_for_publish(10)
                assert info.is_published()
            doc = event(PATIENT)
            await raise_alerts(notify_stack, [doc])
            await wait_for(lambda: n.router.is_acknowledged(doc["alert_id"]), within=30,
                           what="the patient's real ack, after the hostile one")
    assert hooks.hooks == [] and smtp_server.messages == []


async def test_a_page_that_reached_no_one_is_in_the_notifiers_heartbeat_and_the_watchdog_raises_it(
        notify_stack: Stack, smtp_server: Inbox) -> None:
    """The on-call webhook is down: the chain goes on to its next step, and the notifier tells
    rpm watchdog (its heartbeat on rpm.heartbeats) that a page reached none of its channels."""
    from rpm_core.technical import decode_heartbeat
    from rpm_core.topics import partition_for
    from stream.watchdog import Watchdog, WatchdogConfig

    steps = """      - {after: 0s, receiver: nurses}
      - {after: 1s, receiver: oncall}
      - {after: 10m, receiver: physician}"""
    dead = f"http://127.0.0.1:{free_port()}"
    async with notifier(notify_stack, routes_yaml(hooks=dead, smtp=smtp_server, steps=steps)):
        await raise_alerts(notify_stack, [event(PATIENT)])

        async def told() -> Any:
            for value in await read_all(notify_stack.settings.kafka_bootstrap(), topics.HEARTBEATS, idle_ms=300):
                beat = decode_heartbeat(value)
                if beat.component == "notifier" and "reached none of their channels" in (beat.problem or ""):
                    return beat
            return None
        beat = None
        for _ in range(60):  # heartbeats every 5 s; a deadline, not a speed claim
            if (beat := await told()) is not None:
                break
            await asyncio.sleep(1)
    assert beat is not None and beat.instance == "rpm-notifier-test" and beat.healthy
    assert "(the last: step 1, oncall.webhook: gave up after 2 attempts: cannot reach" in (beat.problem or "")
    assert PATIENT not in (beat.problem or "")  # it is shown to every ward: no patient named
    assert "/oncall" not in (beat.problem or "")  # nor a URL path (a chat webhook holds its token there)
    watchdog = Watchdog(config=WatchdogConfig(), partition_of=partition_for, started_at=0.0)
    watchdog.observe(beat, 100.0)
    raised = [a for t in (100.0, 111.0) for a in watchdog.evaluate(t) if a.rule.startswith("tech.notifier")]
    assert [(a.rule, a.severity) for a in raised] == [("tech.notifier_warning", "warning")]


async def test_a_notifier_that_has_not_routed_for_a_minute_says_it_is_stuck() -> None:
    from rpm_core.settings import Settings
    from tests.notify.helpers import routes

    now = [1000.0]
    n = Notifier(routes=routes(), settings=Settings(), secrets={}, ward_of=lambda _p: None, clock=lambda: now[0])
    assert n.heartbeat().healthy  # just started: replaying is not being stuck
    now[0] += 59
    assert n.heartbeat().healthy
    now[0] += 1
    beat = n.heartbeat()
    assert not beat.healthy and beat.component == "notifier"
    assert beat.problem == ("it has routed no alert for 60 s (no partition of rpm.alerts assigned to it), "
                            "so nobody is paged")
    n.live.set()
    assert n.heartbeat().healthy and n.heartbeat().problem is None
