"""The bridge against real Mosquitto and Tansu: good readings flow, bad ones are dead-lettered."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from rpm_app.services import Stack
from rpm_core import topics
from rpm_core.deadletter import MAX_KEPT_BYTES
from rpm_core.mqtt_users import ADMIN_USER, BRIDGE_USER
from rpm_core.settings import MqttSettings
from rpm_core.wire import MQTT_MESSAGE_SIZE_LIMIT_BYTES, encode_readings, readings_topic
from stream.bridge import Bridge

pytestmark = pytest.mark.services


def publisher(stack: Stack, user: str = ADMIN_USER) -> mqtt.Client:
    s = MqttSettings.from_url(stack.mqtt_url(user))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=s.client_id("publisher"))
    client.username_pw_set(s.username, s.password.get())
    client.max_inflight_messages_set(1000)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(s.host, s.port)
    client.loop_start()
    assert connected.wait(10)
    return client


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()


async def consume(bootstrap: str, topic: str, expected: int, deadline_s: float = 60) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"test-{topic}-{time.time()}", enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(deadline_s):
            while len(values) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                values += [r.value for recs in batch.values() for r in recs]
        # anything beyond what we expect would be a duplicate or a stray: look briefly for more
        extra = await consumer.getmany(timeout_ms=1000)
        values += [r.value for recs in extra.values() for r in recs]
    finally:
        await consumer.stop()
    return values


@pytest.fixture(params=[None, "gzip"], ids=["uncompressed", "gzip"])
async def bridge(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Bridge]:
    bootstrap = stack.settings.kafka_bootstrap()
    await topics.ensure_topics(bootstrap, partitions=4)
    b = Bridge(mqtt_settings=MqttSettings.from_url(stack.mqtt_url(BRIDGE_USER)), bootstrap=bootstrap,
               client_id="test-bridge", compression=request.param)
    stop = asyncio.Event()
    task = asyncio.create_task(b.run(stop))
    await asyncio.to_thread(b.subscribed.wait, 20)
    assert b.subscribed.is_set()
    yield b
    stop.set()
    await task


def good_message(patient: str, k: int) -> tuple[str, bytes]:
    t = time.time() - 60 + k * 0.01
    return readings_topic(patient), encode_readings(
        patient=patient, device=f"hrs-{patient}", source="sim",
        samples=[["heart_rate", t, 70 + k % 10], ["rr_interval", t, 0.85]],
    )


NOW = time.time()
BAD = [
    (readings_topic("p1"), b"not json", "not JSON"),
    (readings_topic("p1"), b'{"v":1,"patient":"p1","device":"d","source":"sim","samples":[["heart_rate",1.7e9,NaN]]}',
     "not JSON"),
    (readings_topic("p1"), orjson.dumps({"v": 1, "patient": "p1", "device": "d", "source": "sim",
                                         "samples": [["heart_rate", "noon", 70]]}), "time must be"),
    (readings_topic("p1"), orjson.dumps({"v": 1, "patient": "p1", "source": "sim",
                                         "samples": [["heart_rate", NOW, 70]]}), "device must be"),
    (readings_topic("p1"), orjson.dumps({"v": 9, "patient": "p1", "device": "d", "source": "sim",
                                         "samples": [["heart_rate", NOW, 70]]}), "unsupported schema version 9"),
    # exactly Mosquitto's message_size_limit (1 MiB): the largest message the bridge can receive
    (readings_topic("p1"), b"[" + b"1," * 524_286 + b"11]", "the limit is"),
    (readings_topic("p1"), encode_readings(patient="p1", device="d", source="sim",
                                           samples=[["heart_rate", NOW + 86_400, 70]]), "in the future"),
    (readings_topic("p1"), encode_readings(patient="p2", device="d", source="sim",
                                           samples=[["heart_rate", NOW, 70]]), "does not match the topic"),
]


async def test_bad_messages_reach_the_deadletter_topic_while_good_ones_flow(stack: Stack, bridge: Bridge) -> None:
    good = [good_message(f"p{k % 5}", k) for k in range(60)]
    interleaved: list[tuple[str, bytes]] = []
    for k, msg in enumerate(good):
        interleaved.append(msg)
        if k % 7 == 0 and k // 7 < len(BAD):
            topic, payload, _reason = BAD[k // 7]
            interleaved.append((topic, payload))
    assert len(interleaved) == len(good) + len(BAD)
    client = publisher(stack)
    try:
        await asyncio.to_thread(publish_all, client, interleaved)
    finally:
        client.disconnect()
        client.loop_stop()

    bootstrap = stack.settings.kafka_bootstrap()
    dead = [orjson.loads(v) for v in await consume(bootstrap, topics.DEADLETTER, len(BAD))]
    assert len(dead) == len(BAD)
    for (_topic, payload, reason), record in zip(BAD, dead, strict=True):
        assert reason in record["reason"]
        assert record["stage"] == "bridge" and record["size"] == len(payload)
    huge = dead[5]  # 1 MiB: its head is kept (base64), with its size and hash
    assert len(BAD[5][1]) == MQTT_MESSAGE_SIZE_LIMIT_BYTES
    assert huge["truncated"] is True and huge["payload"] is None
    assert base64.b64decode(huge["payload_b64"]) == BAD[5][1][:MAX_KEPT_BYTES]

    records = [orjson.loads(v) for v in await consume(bootstrap, topics.READINGS, 1)]
    samples = sum(len(g["t"]) for r in records for g in r["groups"])
    assert samples == 2 * len(good)
    assert bridge.stats.deadlettered == len(BAD) and bridge.stats.readings_out == 2 * len(good)


async def test_anonymous_and_wrong_password_clients_are_refused(stack: Stack) -> None:
    s = MqttSettings.from_url(stack.mqtt_url(BRIDGE_USER))
    for username, password in ((None, None), (BRIDGE_USER, "wrong")):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"{username}:t")
        if username:
            client.username_pw_set(username, password)
        result: list[object] = []
        done = threading.Event()

        def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object,
                       result: list[object] = result, done: threading.Event = done) -> None:
            result.append(reason)
            done.set()

        client.on_connect = on_connect
        client.connect(s.host, s.port)
        client.loop_start()
        try:
            assert await asyncio.to_thread(done.wait, 10)
        finally:
            client.loop_stop()
        assert getattr(result[0], "is_failure", False), f"{username!r} was let in"


@pytest.mark.parametrize(("value", "fragment"), [("brotli", "expected one of"), ("zstd", "needs the Python package")])
def test_an_unusable_compression_is_refused_at_start(value: str, fragment: str) -> None:
    import importlib.util

    from rpm_core.errors import ConfigError
    from rpm_core.settings import Settings

    if value == "zstd" and importlib.util.find_spec("zstandard") is not None:
        pytest.skip("zstandard is installed here")
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env({"RPM_KAFKA_COMPRESSION": value})
    assert Settings.from_env({"RPM_KAFKA_COMPRESSION": "GZIP"}).kafka_compression_type() == "gzip"
    assert Settings.from_env({}).kafka_compression_type() is None


def test_a_defect_in_validation_dead_letters_the_message_instead_of_stopping_the_bridge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validation must only raise WireError; if it raises anything else (a bug of ours, like the
    TypeError an unhashable "source" once caused), that message is dead-lettered and the rest of the
    batch is forwarded: an exception here would leave the message unacknowledged in the bridge's
    session and stop every bridge it is delivered to."""
    from stream import bridge as bridge_module
    from stream.bridge import Inbound

    real = bridge_module.parse_readings_message
    now = 1_780_000_000.0

    def parse(payload: bytes, *, topic: str, now: float) -> Any:
        if b'"poison"' in payload:
            raise TypeError("unhashable type: 'list'")
        return real(payload, topic=topic, now=now)

    monkeypatch.setattr(bridge_module, "parse_readings_message", parse)
    good = encode_readings(patient="p1", device="d1", source="sim", samples=[["heart_rate", now - 1, 70.0]])
    poison = encode_readings(patient="p2", device="poison", source="sim", samples=[["heart_rate", now - 1, 70.0]])
    b = Bridge(mqtt_settings=MqttSettings(host="127.0.0.1", port=1), bootstrap="127.0.0.1:1", client_id="t")
    batch = b._build([Inbound(mid=1, qos=1, topic=readings_topic("p2"), payload=poison, received_at=now),
                      Inbound(mid=2, qos=1, topic=readings_topic("p1"), payload=good, received_at=now)], 8)
    dead = [r for r in batch.records if r.topic == topics.DEADLETTER]
    readings = [r for r in batch.records if r.topic == topics.READINGS]
    assert batch.deadletters == 1 and len(readings) == 1 and readings[0].readings == 1
    assert orjson.loads(dead[0].value)["reason"] == "validation failed: TypeError"
