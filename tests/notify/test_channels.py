"""Each channel against a real counterpart: a webhook receiver, an SMTP server with STARTTLS, Mosquitto
with the agent's command subscriber. Retries, permanent failures and receipts."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import aiohttp
import pytest

from edge_agent.commands import CommandSubscriber
from notify.channels.base import Attempt, deliver
from notify.channels.edge import EdgeAgentChannel
from notify.channels.email import EmailChannel
from notify.channels.webhook import WebhookChannel, sign, verify_signature
from notify.model import ChannelSpec, Delivery, SmtpServer
from notify.mqtt import NotifierMqtt
from notify.router import AlertInfo, Notification
from rpm_core.commands import PatientAck, PatientMessage, patient_from_ack_topic
from rpm_core.host import free_port
from rpm_core.mqtt_users import NOTIFIER_USER
from rpm_core.settings import MqttSettings, Secret
from tests.notify.conftest import AGENT_USER, PATIENT, Broker, Inbox
from tests.notify.servers import WEBHOOK_SECRET, WebhookReceiver, wait_for

FAST = Delivery(retries=2, timeout_s=5.0, backoff_max_s=0.2)


def note(kind: str = "step", step: int = 1, rules: tuple[str, ...] = ("glucose_low",)) -> Notification:
    alerts = tuple(AlertInfo(alert_id=f"a{k}", patient=PATIENT, rule=rule, severity="critical", metric="glucose",
                             message=f"{rule}: below 54 mg/dL for 15 min (now 48 mg/dL)", since=1764100000.0,
                             raised_at=1764100000.0, ward="north") for k, rule in enumerate(rules))
    return Notification(id=f"n-{kind}-{step}", kind=kind, route="critical", group=f"critical|{PATIENT}",  # type: ignore[arg-type]
                        run=1764100000.0, step=step, receiver="oncall", escalation="critical", patient=PATIENT,
                        ward="north", alerts=alerts, at=time.time())


def webhook(url: str, session: Callable[[], aiohttp.ClientSession]) -> WebhookChannel:
    spec = ChannelSpec(type="webhook", name="pager", receiver="oncall", url=url, secret_env="HOOK")
    return WebhookChannel(spec=spec, secret=Secret(WEBHOOK_SECRET), session=session)


async def test_the_webhook_is_signed_over_timestamp_and_body_and_retried_on_5xx() -> None:
    attempts: list[Attempt] = []
    async with WebhookReceiver() as hooks, aiohttp.ClientSession() as session:
        hooks.fail["/pager"] = 2
        receipt = await deliver(webhook(f"{hooks.url}/pager?token=abc", lambda: session), note(), policy=FAST,
                                on_attempt=attempts.append)
    assert receipt.delivered and receipt.attempts == 3 and receipt.detail == "HTTP 204"
    assert [a.outcome for a in attempts] == ["failed", "failed", "delivered"]
    assert attempts[0].detail == "HTTP 503"
    assert receipt.recipient == f"{hooks.url}/pager"  # the token in the query never reaches the audit
    (hook,) = hooks.hooks
    assert hooks.rejected == 0 and hook.delivery == "n-step-1"
    assert hook.doc["patient"] == PATIENT and hook.doc["step"] == 1 and hook.doc["alerts"][0]["alert_id"] == "a0"
    assert "now 48 mg/dL" in hook.doc["alerts"][0]["message"]  # clinicians get the reading


async def test_a_webhook_with_the_wrong_secret_is_refused_permanently_without_retries() -> None:
    attempts: list[Attempt] = []
    async with WebhookReceiver(secret="another-secret") as hooks, aiohttp.ClientSession() as session:
        receipt = await deliver(webhook(f"{hooks.url}/pager", lambda: session), note(), policy=FAST,
                                on_attempt=attempts.append)
    assert not receipt.delivered and len(attempts) == 1 and "HTTP 401" in receipt.detail
    assert hooks.rejected == 1 and hooks.hooks == []


async def test_a_webhook_that_is_down_is_retried_then_given_up() -> None:
    attempts: list[Attempt] = []
    async with aiohttp.ClientSession() as session:
        receipt = await deliver(webhook(f"http://127.0.0.1:{free_port()}/x", lambda: session), note(),
                                policy=FAST, on_attempt=attempts.append)
    assert not receipt.delivered and receipt.attempts == 3 and receipt.detail.startswith("gave up after 3 attempts")
    assert [a.attempt for a in attempts] == [1, 2, 3]


def test_signature_verification_rejects_tampering_and_replay() -> None:
    body, secret, now = b'{"v": 1}', b"k", 1764100000.0
    good = sign(secret, "1764100000", body)
    assert verify_signature(secret, timestamp="1764100000", body=body, signature=good, now=now)
    assert not verify_signature(secret, timestamp="1764100000", body=body + b" ", signature=good, now=now)
    assert not verify_signature(secret, timestamp="1764100001", body=body, signature=good, now=now)
    assert not verify_signature(secret, timestamp="1764100000", body=body, signature=good, now=now + 301)
    assert not verify_signature(secret, timestamp="soon", body=body, signature=good, now=now)


async def test_email_goes_through_starttls_to_a_real_smtp_server(smtp_server: Inbox) -> None:
    server = SmtpServer(host=smtp_server.host, port=smtp_server.port, sender="rpm@hospital.example",
                        ca_file=smtp_server.ca_file)
    spec = ChannelSpec(type="email", name="email", receiver="physician", to=("dr@hospital.example",))
    channel = EmailChannel(spec=spec, server=server, timeout_s=10)
    attempts: list[Attempt] = []
    receipt = await deliver(channel, note(step=2, rules=("glucose_low", "tachycardia")), policy=FAST,
                            on_attempt=attempts.append)
    assert receipt.delivered, receipt.detail
    assert "accepted by 127.0.0.1 for 1 of 1" in receipt.detail
    (message,) = smtp_server.messages
    assert smtp_server.over_tls == [True]
    assert message["To"] == "dr@hospital.example" and message["X-RPM-Notification"] == "n-step-2"
    assert message["Subject"] == "[rpm] ESCALATION step 2: CRITICAL p0001 glucose_low (+1 more)"
    assert "now 48 mg/dL" in message.get_content()


async def test_email_refuses_a_server_whose_certificate_is_not_trusted(smtp_server: Inbox) -> None:
    server = SmtpServer(host=smtp_server.host, port=smtp_server.port, sender="rpm@hospital.example")
    spec = ChannelSpec(type="email", name="email", receiver="physician", to=("dr@hospital.example",))
    receipt = await deliver(EmailChannel(spec=spec, server=server, timeout_s=10), note(), policy=FAST,
                            on_attempt=lambda _a: None)
    assert not receipt.delivered and "not trusted" in receipt.detail and receipt.attempts == 1
    assert smtp_server.messages == []


async def test_the_patients_agent_gets_the_message_and_its_ack_comes_back(broker: Broker) -> None:
    received: list[PatientMessage] = []
    agent = CommandSubscriber(mqtt=MqttSettings.from_url(broker.url(AGENT_USER)), patient=PATIENT,
                              on_message=received.append, auto_ack=True)
    mqtt = NotifierMqtt(mqtt=MqttSettings.from_url(broker.url(NOTIFIER_USER)), client_id="test-notifier")
    spec = ChannelSpec(type="edge_agent", name="edge_agent", receiver="nurses",
                       messages={"glucose_low": "Your glucose is low: take 15 g of fast carbohydrate."})
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(agent.run())
        await mqtt.start()
        try:
            await asyncio.wait_for(agent.subscribed.wait(), 10)
            await asyncio.wait_for(mqtt.subscribed.wait(), 10)
            receipt = await deliver(EdgeAgentChannel(spec=spec, publish=mqtt.publish),
                                    note(rules=("glucose_low", "tachycardia")), policy=FAST,
                                    on_attempt=lambda _a: None)
            assert receipt.delivered and receipt.recipient == "patient p0001 (edge agent)"
            inbound = await asyncio.wait_for(mqtt.inbound.get(), 10)
        finally:
            running.cancel()
            await mqtt.stop()
    (message,) = received
    assert message.text == "Your glucose is low: take 15 g of fast carbohydrate."
    assert message.alert_ids == ("a0",)  # no text for tachycardia: the patient is not told about it
    assert patient_from_ack_topic(inbound.topic) == PATIENT
    ack = PatientAck.from_bytes(inbound.payload)
    assert (ack.id, ack.alert_ids) == (message.id, ("a0",))


async def test_a_rule_without_a_patient_text_is_skipped_not_sent() -> None:
    spec = ChannelSpec(type="edge_agent", name="edge_agent", receiver="nurses", messages={"glucose_low": "x"})
    published: list[str] = []

    async def publish(topic: str, payload: bytes) -> None:
        published.append(topic)

    receipt = await deliver(EdgeAgentChannel(spec=spec, publish=publish), note(rules=("tachycardia",)),
                            policy=FAST, on_attempt=lambda _a: None)
    assert receipt.outcome == "skipped" and "no patient message configured for tachycardia" in receipt.detail
    assert published == []


async def test_an_agent_may_not_acknowledge_for_another_patient(broker: Broker) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    mqtt = NotifierMqtt(mqtt=MqttSettings.from_url(broker.url(NOTIFIER_USER)), client_id="test-notifier-2")
    await mqtt.start()
    try:
        await asyncio.wait_for(mqtt.subscribed.wait(), 10)
        settings = MqttSettings.from_url(broker.url("agent-p0002"))
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id=settings.client_id("t"))
        client.username_pw_set(settings.username, settings.password.get())
        connected = threading.Event()
        client.on_connect = lambda *_a: connected.set()
        client.connect(settings.host, settings.port)
        client.loop_start()
        try:
            assert await asyncio.to_thread(connected.wait, 10)
            ack = bytes(PatientAck(id="", alert_ids=("a0",), at=time.time()))
            client.publish("rpm/v1/p/p0002/ack", ack, qos=1).wait_for_publish(10)
            with contextlib.suppress(RuntimeError):  # Mosquitto may drop a client that writes where it may not
                client.publish(f"rpm/v1/p/{PATIENT}/ack", ack, qos=1).wait_for_publish(10)  # denied by the ACL
        finally:
            client.disconnect()
            client.loop_stop()
        inbound = await asyncio.wait_for(mqtt.inbound.get(), 10)
        assert patient_from_ack_topic(inbound.topic) == "p0002"
        await asyncio.sleep(0.5)
        assert mqtt.inbound.empty()
    finally:
        await mqtt.stop()


@pytest.mark.parametrize("bad", [b"{}", b"not json", b'{"v": 1, "type": "message"}'])
async def test_the_agent_ignores_invalid_commands(bad: bytes, broker: Broker) -> None:
    agent = CommandSubscriber(mqtt=MqttSettings.from_url(broker.url(AGENT_USER)), patient=PATIENT)
    mqtt = NotifierMqtt(mqtt=MqttSettings.from_url(broker.url(NOTIFIER_USER)), client_id="t3",
                        subscribe_acks=False)
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(agent.run())
        await mqtt.start()
        try:
            await asyncio.wait_for(agent.subscribed.wait(), 10)
            await asyncio.wait_for(mqtt.connected.wait(), 10)
            await mqtt.publish(f"rpm/v1/p/{PATIENT}/cmd", bad)
            await wait_for(lambda: agent.rejected == 1, within=10, what="the agent to reject it")
        finally:
            running.cancel()
            await mqtt.stop()
    assert agent.received == []



async def test_a_patient_ack_topic_that_is_not_utf8_does_not_raise_in_pahos_thread() -> None:
    """paho's msg.topic raises UnicodeDecodeError on it, and an exception in on_message ends paho's network
    thread: no patient ack would have been read after it (the bridge's finding, in the notifier)."""
    import paho.mqtt.client as paho

    client = NotifierMqtt(mqtt=MqttSettings(host="127.0.0.1", port=free_port()), client_id="n-test")
    await client.start()
    try:
        msg = paho.MQTTMessage(mid=7, topic=b"rpm/v1/p/\xff/ack")
        msg.payload = b"{}"
        client._client.on_message(client._client, None, msg)
        inbound = await asyncio.wait_for(client.inbound.get(), 5)
        assert (inbound.mid, inbound.topic) == (7, "rpm/v1/p/\ufffd/ack")
    finally:
        await client.stop()
