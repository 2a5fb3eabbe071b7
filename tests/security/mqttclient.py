"""A small synchronous MQTT v5 client for the security tests: every reason code is kept.

paho runs its network thread; each call here waits (with a deadline) for the broker's answer and
returns the reason code it carried: CONNACK, PUBACK (QoS 1) and SUBACK.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from rpm_core.settings import MqttSettings

NOT_AUTHORIZED = 0x87
BAD_USER_OR_PASSWORD = 0x86
WAIT_S = 10.0


@dataclass
class Received:
    """Messages a client received, in order."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def topics(self) -> list[str]:
        """The topics of what arrived so far."""
        with self.lock:
            return [t for t, _ in self.messages]


class Client:
    """``with Client(settings) as c: c.publish(...)``; ``connect()`` returns the CONNACK reason."""

    def __init__(self, settings: MqttSettings, *, client_id: str | None = None) -> None:
        self.settings = settings
        # a client id of our choosing is used as it is (takeover attempts); the default is bound to the user
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=client_id or settings.client_id(f"t-{uuid.uuid4().hex[:8]}"))
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password.get() or None)
        context = settings.ssl_context()
        if context is not None:
            self.client.tls_set_context(context)
        self.received = Received()
        self.connack: ReasonCode | None = None
        self._connected = threading.Event()
        self.disconnected = threading.Event()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.disconnected.set()
        self._connected.set()  # wake a connect() that is refused without CONNACK

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = reasons
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.received.lock:
            self.received.messages.append((msg.topic, bytes(msg.payload)))

    def connect(self, *, host: str | None = None) -> ReasonCode | None:
        """TCP (+TLS) connect and wait for CONNACK; its reason (None if the broker closed without one).

        TLS verification failures raise ``ssl.SSLError`` here, from the handshake.
        """
        self.client.connect(host or self.settings.host, self.settings.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(WAIT_S), "no CONNACK"
        return self.connack

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """QoS 1 publish; the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        reason: ReasonCode = self._wait(self._acks, info.mid)
        return reason

    def subscribe(self, topic: str) -> list[ReasonCode]:
        """Subscribe (QoS 1); the SUBACK's reason codes."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        reasons: list[ReasonCode] = self._wait(self._subacks, mid)
        return reasons

    def _wait(self, table: dict[int, Any], mid: int) -> Any:
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in table or self.disconnected.is_set(), WAIT_S)
            assert ok and mid in table, "no answer from the broker (disconnected?)"
            return table.pop(mid)

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verifying_context(ca_file: str) -> ssl.SSLContext:
    """The context every rpm client uses for ``mqtts://`` (certificate and host name verified)."""
    ctx = MqttSettings.from_url("mqtts://x", ca_file=ca_file).ssl_context()
    assert ctx is not None
    return ctx
