"""Publishing crafted readings over real MQTT (QoS 1, waiting for every PUBACK)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from rpm_app.services import Stack
from rpm_core.mqtt_users import ADMIN_USER
from rpm_core.settings import MqttSettings
from rpm_core.wire import encode_readings, readings_topic


class Publisher:
    """A connected MQTT client for tests; ``with Publisher(stack) as pub: pub.readings(...)``."""

    def __init__(self, stack: Stack, user: str = ADMIN_USER, *, ca_file: str | None = None) -> None:
        self._settings = MqttSettings.from_url(stack.mqtt_url(user), ca_file=ca_file)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=self._settings.client_id(f"publisher-{uuid.uuid4().hex[:8]}"))
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)

    def __enter__(self) -> Publisher:
        s = self._settings
        self.client.username_pw_set(s.username, s.password.get())
        context = s.ssl_context()  # mqtts://: certificate and host name verified, like every rpm client
        if context is not None:
            self.client.tls_set_context(context)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(s.host, s.port)
        self.client.loop_start()
        assert connected.wait(10), "could not connect to MQTT"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def readings(self, patient: str, device: str, samples: list[list[Any]], *, per_message: int = 60) -> int:
        """Publish ``samples`` in messages of ``per_message``; returns how many were acknowledged."""
        infos = []
        for start in range(0, len(samples), per_message):
            chunk = samples[start : start + per_message]
            payload = encode_readings(patient=patient, device=device, source="sim", samples=chunk)
            infos.append((self.client.publish(readings_topic(patient), payload, qos=1), len(chunk)))
        for info, _ in infos:
            info.wait_for_publish(60)
            assert info.is_published(), "broker did not acknowledge a message"
        return sum(n for _, n in infos)


def heart_rate(t0: float, seconds: int, bpm: float, *, step: float = 1.0) -> list[list[Any]]:
    """One heart-rate sample per ``step`` seconds from ``t0``."""
    return [["heart_rate", t0 + k * step, bpm] for k in range(int(seconds / step))]
