"""Driving the running pipeline from a test: publishing many messages, polling with a deadline."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from rpm_app.services import Stack
from rpm_core.mqtt_users import SIMULATOR_USER
from rpm_core.settings import MqttSettings


def publish_all(stack: Stack, messages: list[tuple[str, bytes]]) -> None:
    """QoS 1 through a window of 1,000 in flight; every PUBACK must be a success."""
    s = MqttSettings.from_url(stack.mqtt_url(SIMULATOR_USER))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=s.client_id("hostile-publisher"))
    client.username_pw_set(s.username, s.password.get())
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    failures: list[Any] = []
    client.on_publish = lambda _c, _u, _mid, reason, _p: failures.append(reason) if reason.is_failure else None
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(s.host, s.port)
    client.loop_start()
    try:
        assert connected.wait(10)
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(120)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
    assert not failures, failures[:5]


def bridge_health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        doc: dict[str, Any] = orjson.loads(resp.read())
        return doc


async def until(probe: Any, done: Any, *, deadline_s: float, what: str, watch: tuple[Any, ...]) -> Any:
    """Poll ``probe`` (in a thread) until ``done(value)``; fail naming ``what`` or a dead process."""
    value = None
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                value = await asyncio.to_thread(probe)
                if done(value):
                    return value
                for p in watch:
                    assert p.alive(), f"{p.name} died while waiting for {what}:\n{p.log_tail(40)}"
                await asyncio.sleep(1.0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; last value {value!r}") from None
