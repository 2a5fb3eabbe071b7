"""The notifier's MQTT connection: patient messages out (QoS 1, awaited), patient acks in (manual acks).

paho-mqtt runs its network loop in its own thread; everything it hands over goes to the event loop
with ``call_soon_threadsafe``. Inbound acknowledgements use ``manual_ack``: the MQTT message is
acknowledged only after the Kafka record it became was acknowledged (the bridge's rule), and the
session is persistent (``clean_start=False`` with an expiry), so Mosquitto keeps what patients send
while the notifier is away. Several notifiers share the acks with an MQTT v5 shared subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Final

from notify.const import MQTT_SESSION_EXPIRY_S, MQTT_SHARED_GROUP, PATIENT_ACK_FILTER
from notify.errors import TransientDeliveryError
from rpm_core.settings import MqttSettings

_LOGGER = logging.getLogger(__name__)

_RECEIVE_MAXIMUM: Final = 100


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from a patient's ack topic, to be acknowledged with :meth:`NotifierMqtt.ack`."""

    mid: int
    qos: int
    topic: str
    payload: bytes


class NotifierMqtt:
    """One paho client: :meth:`publish` waits for the PUBACK; :attr:`inbound` receives patient acks."""

    def __init__(self, *, mqtt: MqttSettings, client_id: str, subscribe_acks: bool = True,
                 shared_group: str = MQTT_SHARED_GROUP) -> None:
        self._mqtt = mqtt
        self._client_id = client_id
        self._subscription = f"$share/{shared_group}/{PATIENT_ACK_FILTER}" if subscribe_acks else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._early: dict[int, Any] = {}
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        """Connect in the background (paho reconnects by itself with backoff)."""
        from rpm_core.mqtt_client import mqtt_client, session_properties

        self._loop = asyncio.get_running_loop()
        client = mqtt_client(self._mqtt, self._client_id, manual_ack=True, max_inflight=100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        props = session_properties(MQTT_SESSION_EXPIRY_S, receive_maximum=_RECEIVE_MAXIMUM)
        self._client = client
        client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()

    async def stop(self) -> None:
        """Disconnect and stop paho's thread."""
        if self._client is not None:
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and return once the broker acknowledged it (the caller bounds the wait)."""
        if self._client is None or self._loop is None:
            raise TransientDeliveryError("MQTT is not started")
        if not self.connected.is_set():
            raise TransientDeliveryError("not connected to the MQTT broker")
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != 0:
            raise TransientDeliveryError(f"MQTT publish failed locally (paho rc {info.rc})")
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            if info.mid in self._early:
                future.set_result(self._early.pop(info.mid))
            else:
                self._pending[info.mid] = future
        try:
            reason = await future
        finally:
            with self._lock:
                self._pending.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise TransientDeliveryError(f"the broker refused the message: {reason} (check the notifier's ACL)")

    def ack(self, item: Inbound) -> None:
        """Acknowledge an inbound message to the broker (after it was handled)."""
        self._client.ack(item.mid, item.qos)

    # -- paho's thread ----------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are stopping
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            _LOGGER.error("MQTT refused the notifier: %s (check RPM_MQTT_URL's user and password)", reason)
            return
        _LOGGER.info("notifier %s connected to MQTT %s", self._client_id, self._mqtt.url())
        self._call(self.connected.set)
        if self._subscription is not None:
            client.subscribe(self._subscription, qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            _LOGGER.error("subscription to %s refused: %s (check the ACL)", self._subscription, reasons)
            return
        self._call(self.subscribed.set)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._call(self.connected.clear)
        self._call(self.subscribed.clear)
        _LOGGER.warning("notifier disconnected from MQTT: %s; reconnecting", reason)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early[mid] = reason
                return
        self._call(_resolve, future, reason)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        from rpm_core.mqtt_client import message_topic

        self._call(self.inbound.put_nowait, Inbound(msg.mid, msg.qos, message_topic(msg), bytes(msg.payload)))


def _resolve(future: asyncio.Future[Any], reason: Any) -> None:
    if not future.done():
        future.set_result(reason)
