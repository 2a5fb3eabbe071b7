"""Hostile payloads shaped to grow under our encodings, at and around every size limit, against
real Mosquitto and Tansu: each is dead-lettered with its reason, and the valid readings of other
patients sent right after them still land (issue 13: one message stopped ingestion for everyone).

The shapes: control characters (JSON escapes each as six bytes), quotes and backslashes (two bytes),
bytes that are not UTF-8 (base64: 4/3), a valid message whose *reason* quotes thousands of keys,
and records the producer's own limit refuses (the record envelope). The sizes: the wire schema's
limit, the dead-letter record's kept payload, Mosquitto's ``message_size_limit``, the producer's
maximum request, each exactly and one byte either side.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from rpm_app.services import Stack
from rpm_core import topics
from rpm_core.deadletter import MAX_KEPT_BYTES, MAX_RECORD_BYTES
from rpm_core.mqtt_users import ADMIN_USER, BRIDGE_USER
from rpm_core.settings import MqttSettings
from rpm_core.wire import MAX_MESSAGE_BYTES, MQTT_MESSAGE_SIZE_LIMIT_BYTES, encode_readings, readings_topic
from stream.bridge import Bridge
from tests.stream.test_bridge import publish_all, publisher

pytestmark = pytest.mark.services


def shapes(size: int) -> dict[str, bytes]:
    """Payloads of exactly ``size`` bytes that grow under JSON escaping or base64."""
    return {
        "control": b"\x01" * size,
        "quotes": b'"\\' * (size // 2) + b'"' * (size % 2),
        "not-utf8": b"\xff" * size,
        "mixed": (b"\x00\x1f\"\\\xe2\x80\xa8" * (size // 7 + 1))[:size],
    }


def many_unknown_keys(size: int) -> bytes:
    """A JSON object of about ``size`` bytes whose every key is unknown and full of control characters:
    the reason ("unknown fields: …") quotes them all."""
    doc = {"v": 1, "patient": "pH", "device": "d", "source": "sim", "samples": [["heart_rate", time.time(), 70]]}
    k = 0
    while len(orjson.dumps(doc)) < size:
        doc[f"\x01\x02{k}\x03"] = 1
        k += 1
    return orjson.dumps(doc)


LIMITS = sorted({MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1, MAX_KEPT_BYTES,
                 MAX_KEPT_BYTES + 1, MQTT_MESSAGE_SIZE_LIMIT_BYTES - 1, MQTT_MESSAGE_SIZE_LIMIT_BYTES})


async def read_topic(consumer: AIOKafkaConsumer, expected: int, deadline_s: float) -> list[bytes]:
    values: list[bytes] = []
    async with asyncio.timeout(deadline_s):
        while len(values) < expected:
            batch = await consumer.getmany(timeout_ms=200)
            values += [r.value for recs in batch.values() for r in recs]
    return values


@pytest.fixture
async def consumers(stack: Stack) -> AsyncIterator[tuple[AIOKafkaConsumer, AIOKafkaConsumer]]:
    bootstrap = stack.settings.kafka_bootstrap()
    await topics.ensure_topics(bootstrap, partitions=4)
    made = []
    for topic in (topics.DEADLETTER, topics.READINGS):
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=f"limits-{topic}-{time.time()}", enable_auto_commit=False,
                             fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
        await c.start()
        made.append(c)
    try:
        yield made[0], made[1]
    finally:
        for c in made:
            await c.stop()


async def run_bridge(stack: Stack, **kw: int) -> tuple[Bridge, asyncio.Event, asyncio.Task[None]]:
    b = Bridge(mqtt_settings=MqttSettings.from_url(stack.mqtt_url(BRIDGE_USER)),
               bootstrap=stack.settings.kafka_bootstrap(), client_id=f"{BRIDGE_USER}:limits", **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(b.run(stop))
    await asyncio.to_thread(b.subscribed.wait, 30)
    assert b.subscribed.is_set()
    return b, stop, task


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Poll a condition of the bridge's own state (no event to await) with a deadline."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def valid_readings(n: int) -> list[tuple[str, bytes]]:
    t = time.time() - 30
    return [(readings_topic(f"pv{k}"), encode_readings(patient=f"pv{k}", device="hrs-1", source="sim",
                                                         samples=[["heart_rate", t + k, 60 + k]])) for k in range(n)]


def check_deadletter(record: dict[str, object], payload: bytes) -> None:
    assert record["stage"] == "bridge" and record["reason"]
    assert record["size"] == len(payload) and record["sha256"] == hashlib.sha256(payload).hexdigest()
    if record["payload"] is not None:
        assert record["payload"] == payload.decode() and record["truncated"] is False
    else:
        kept = base64.b64decode(str(record["payload_b64"]))
        assert payload.startswith(kept)
        assert record["truncated"] is (len(kept) < len(payload))
        # a payload the dead-letter record can hold whole is held whole, whatever its shape
        assert len(kept) == min(len(payload), MAX_KEPT_BYTES)


async def test_inflating_payloads_at_each_limit_are_deadlettered_and_others_keep_flowing(
        stack: Stack, consumers: tuple[AIOKafkaConsumer, AIOKafkaConsumer]) -> None:
    dead_c, readings_c = consumers
    bridge, stop, task = await run_bridge(stack)
    hostile = [(f"{name}@{size}", payload) for size in LIMITS for name, payload in shapes(size).items()]
    hostile += [("unknown-keys", many_unknown_keys(MAX_MESSAGE_BYTES - 64))]
    client = publisher(stack, ADMIN_USER)
    try:
        for name, payload in hostile:
            # one at a time, each followed by valid readings of other patients, which must land
            await asyncio.to_thread(publish_all, client, [(readings_topic("pH"), payload)])
            valid = valid_readings(3)
            await asyncio.to_thread(publish_all, client, valid)
            [record] = [orjson.loads(v) for v in await read_topic(dead_c, 1, 30)]
            check_deadletter(record, payload)
            landed = await read_topic(readings_c, 1, 10)
            patients = {g["patient"] for v in landed for g in orjson.loads(v)["groups"]}
            while patients != {"pv0", "pv1", "pv2"}:  # one burst may come as several records
                more = await read_topic(readings_c, 1, 10)
                patients |= {g["patient"] for v in more for g in orjson.loads(v)["groups"]}
            assert bridge.health()["progressing"], name
        assert bridge.stats.deadlettered == len(hostile)
    finally:
        client.disconnect()
        client.loop_stop()
        stop.set()
        await task


def test_every_deadletter_record_fits_kafka_whatever_its_shape() -> None:
    from rpm_core.deadletter import deadletter_record

    for size in [*LIMITS, 2 * MQTT_MESSAGE_SIZE_LIMIT_BYTES]:
        for name, payload in shapes(size).items():
            record = deadletter_record(stage="bridge", reason="\x01" * 100_000, source="\x02" * 70_000,
                                       payload=payload, received_at=1.0)
            assert len(record) <= MAX_RECORD_BYTES, (name, size)
            check_deadletter({**orjson.loads(record), "stage": "bridge"}, payload)


async def test_records_the_producer_refuses_are_split_and_deadlettered_not_retried_forever(
        stack: Stack, consumers: tuple[AIOKafkaConsumer, AIOKafkaConsumer]) -> None:
    """A producer limit below our records' sizes (a broker with a smaller maximum looks the same to
    the bridge: the record is refused for good): the batch is split; a message whose own record is
    refused is dead-lettered; a dead-letter record refused is sent without its payload."""
    dead_c, readings_c = consumers
    bridge, stop, task = await run_bridge(stack, max_request_bytes=48 * 1024)
    t = time.time() - 60
    big = encode_readings(patient="pBig", device="hrs-1", source="sim",
                          samples=[["heart_rate", t + k * 0.001, 70] for k in range(2000)])
    assert len(big) > 48 * 1024
    messages = [*valid_readings(40), (readings_topic("pBig"), big), (readings_topic("pBad"), b"\x01" * 200_000)]
    client = publisher(stack, ADMIN_USER)
    try:
        await asyncio.to_thread(publish_all, client, messages)
        dead = [orjson.loads(v) for v in await read_topic(dead_c, 2, 60)]
        by_source = {d["source"]: d for d in dead}
        assert "Kafka refused the record" in by_source[readings_topic("pBig")]["reason"]
        assert by_source[readings_topic("pBad")]["payload_b64"] is None  # sent without its payload
        assert by_source[readings_topic("pBad")]["size"] == 200_000
        patients: set[str] = set()
        while len(patients) < 40:
            patients |= {g["patient"] for v in await read_topic(readings_c, 1, 30) for g in orjson.loads(v)["groups"]}
        assert patients == {f"pv{k}" for k in range(40)}
        assert bridge.stats.records_refused >= 2 and bridge.health()["progressing"]
    finally:
        client.disconnect()
        client.loop_stop()
        stop.set()
        await task


async def test_a_bridge_that_cannot_forward_is_unhealthy_whatever_its_connections_say(
        stack: Stack, consumers: tuple[AIOKafkaConsumer, AIOKafkaConsumer]) -> None:
    """Issue 13: a bridge stuck on a record kept /healthz 200. Kafka frozen (SIGSTOP: connections up,
    nothing answered): the message waits unacknowledged; past STUCK_AFTER_S the health says so."""
    import os
    import signal

    from stream.bridge import STUCK_AFTER_S

    _dead_c, readings_c = consumers
    bridge, stop, task = await run_bridge(stack)
    tansu = stack.processes["tansu"]
    client = publisher(stack, ADMIN_USER)
    os.kill(tansu.pid, signal.SIGSTOP)
    try:
        await asyncio.to_thread(publish_all, client, valid_readings(1))
        await until(lambda: bridge.oldest_unacknowledged_s() > 0)
        later = time.time() + STUCK_AFTER_S + 1
        body = bridge.health(now=later)
        assert body["mqtt_connected"] and body["subscribed"], "the connections look fine..."
        assert body["progressing"] is False and body["oldest_unacked_s"] > STUCK_AFTER_S, "...but nothing moves"
        assert body["problem"]
    finally:
        os.kill(tansu.pid, signal.SIGCONT)
    try:
        landed = await read_topic(readings_c, 1, 60)
        assert {g["patient"] for v in landed for g in orjson.loads(v)["groups"]} == {"pv0"}
        await until(lambda: bridge.oldest_unacknowledged_s() == 0)
        assert bridge.health()["progressing"] is True
    finally:
        client.disconnect()
        client.loop_stop()
        stop.set()
        await task


async def test_a_message_above_mosquittos_limit_costs_its_sender_the_connection_and_stops_nothing(
        stack: Stack, consumers: tuple[AIOKafkaConsumer, AIOKafkaConsumer]) -> None:
    """Above ``message_size_limit`` the bridge never sees the message: Debian's Mosquitto 2.0.11 closes
    the sender's connection without a PUBACK (measured; its code would answer "packet too large",
    the Debian build disconnects). Only the sender pays: our publishers split far below the limit,
    and everyone else's readings flow."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    _dead_c, readings_c = consumers
    bridge, stop, task = await run_bridge(stack)
    s = MqttSettings.from_url(stack.mqtt_url(ADMIN_USER))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=s.client_id("oversize"))
    client.username_pw_set(s.username, s.password.get())
    acked = threading.Event()
    disconnected = threading.Event()
    client.on_publish = lambda *_a: acked.set()
    client.on_disconnect = lambda *_a: disconnected.set()
    client.connect(s.host, s.port)
    client.loop_start()
    try:
        client.publish(readings_topic("pH"), b"\x01" * (MQTT_MESSAGE_SIZE_LIMIT_BYTES + 1), qos=1)
        assert await asyncio.to_thread(disconnected.wait, 30), "the broker refuses the oversized message"
        assert not acked.is_set()
    finally:
        client.disconnect()
        client.loop_stop()  # paho would send it again at every reconnect: this sender is done
    try:
        other = publisher(stack, ADMIN_USER)
        try:
            await asyncio.to_thread(publish_all, other, valid_readings(2))
        finally:
            other.disconnect()
            other.loop_stop()
        patients: set[str] = set()
        while patients != {"pv0", "pv1"}:
            patients |= {g["patient"] for v in await read_topic(readings_c, 1, 10) for g in orjson.loads(v)["groups"]}
        assert bridge.stats.deadlettered == 0 and bridge.health()["progressing"]
    finally:
        stop.set()
        await task
