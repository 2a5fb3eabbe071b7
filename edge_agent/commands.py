"""Messages from the care team to the patient's agent, and the patient's acknowledgements.

The notifier (``rpm notifier``, channel ``edge_agent``) publishes a :class:`PatientMessage` on the
patient's command topic ``rpm/v1/p/{patient}/cmd`` (QoS 1); the agent shows it (logs it at info)
and, when the patient acknowledges (``rpm edge ack ALERT_ID``, or ``auto_ack`` in tests), publishes a
:class:`PatientAck` on ``rpm/v1/p/{patient}/ack``, which the notifier turns into an acknowledgement
on Kafka ``rpm.alert-acks``: the alert's escalation chain stops and the nurse station shows it
acknowledged. Wire format (versioned JSON, unknown keys rejected)::

    cmd: {"v": 1, "type": "message", "id": "<notification id>", "alert_ids": ["3f2a…"],
          "severity": "critical", "text": "Your glucose is low. Take 15 g …", "at": 1764100000.0}
    ack: {"v": 1, "id": "<notification id or empty>", "alert_ids": ["3f2a…"], "at": 1764100042.5}

The text is what routes.yaml says to tell the patient for that rule, never the alert's own message,
so it carries no reading. The agent's MQTT user may read its ``cmd`` topic and write its own tree
(the broker's ACL), so an ack on a patient's ``ack`` topic can only come from that patient's agent.

:class:`CommandSubscriber` keeps its own MQTT connection (client id ``rpm-edge-<patient>-cmd``)
with a persistent session, so messages sent while the agent was offline arrive when it reconnects;
the reading publisher's connection is left exactly as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from edge_agent.errors import BrokerUnavailableError, PublishError
from rpm_core.commands import CommandDecodeError, PatientAck, PatientMessage, ack_topic
from rpm_core.settings import MqttSettings
from rpm_core.wire import command_topic

_LOGGER = logging.getLogger(__name__)

# Mosquitto keeps the agent's subscription and queued messages this long while it is offline.
COMMAND_SESSION_EXPIRY_S: Final = 7 * 24 * 3600
ACK_PUBLISH_TIMEOUT_S: Final = 10.0


def log_message(message: PatientMessage) -> None:
    """The default way the headless agent shows a message: one info line, no readings in it."""
    _LOGGER.info("message from the care team (%s, id %s): %s -- acknowledge with: rpm edge ack %s",
                 message.severity, message.id, message.text, " ".join(message.alert_ids))


def _mqtt_client(mqtt: MqttSettings, client_id: str) -> Any:
    from rpm_core.mqtt_client import mqtt_client  # lazily: `rpm edge pair` never needs paho

    return mqtt_client(mqtt, client_id, reconnect=False)


def publish_ack_blocking(mqtt: MqttSettings, patient: str, ack: PatientAck, *,
                         timeout_s: float = ACK_PUBLISH_TIMEOUT_S) -> None:
    """Publish one acknowledgement (QoS 1) on a short-lived connection and wait for its PUBACK."""
    connected = threading.Event()
    client = _mqtt_client(mqtt, f"rpm-edge-{patient}-ack-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda *_a: connected.set()
    try:
        client.connect(mqtt.host, mqtt.port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise BrokerUnavailableError(f"cannot reach {mqtt.host}:{mqtt.port}: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise BrokerUnavailableError(f"no CONNACK within {timeout_s:g} s")
        info = client.publish(ack_topic(patient), bytes(ack), qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise PublishError("the broker did not acknowledge the acknowledgement; check the agent's ACL")
    finally:
        client.disconnect()
        client.loop_stop()


class CommandSubscriber:
    """Receives :class:`PatientMessage` on the patient's command topic and publishes the patient's acks.

    ``on_message`` is called in the event loop for each valid message (default :func:`log_message`);
    with ``auto_ack`` every message is acknowledged at once (tests, kiosks that show and confirm).
    """

    def __init__(self, *, mqtt: MqttSettings, patient: str,
                 on_message: Callable[[PatientMessage], None] = log_message, auto_ack: bool = False) -> None:
        self._mqtt = mqtt
        self._patient = patient
        self._on_message = on_message
        self._auto_ack = auto_ack
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client_id = mqtt.client_id(f"edge-{patient}-cmd")
        self.subscribed = asyncio.Event()
        self.received: list[PatientMessage] = []
        self.rejected = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay connected and subscribed (paho reconnects with backoff) until cancelled."""
        from rpm_core.mqtt_client import session_properties

        self._loop = asyncio.get_running_loop()
        client = _mqtt_client(self._mqtt, self.client_id)
        client.reconnect_delay_set(1, 60)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_mqtt_message
        props = session_properties(COMMAND_SESSION_EXPIRY_S)
        self._client = client
        client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        try:
            await asyncio.Event().wait()
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    async def acknowledge(self, message: PatientMessage, *, at: float | None = None) -> None:
        """Publish the patient's acknowledgement of ``message`` (QoS 1) and wait for the broker's PUBACK."""
        ack = PatientAck(id=message.id, alert_ids=message.alert_ids, at=time.time() if at is None else at)
        if self._client is None:
            raise BrokerUnavailableError("the command subscriber is not running")
        info = self._client.publish(ack_topic(self._patient), bytes(ack), qos=1)
        await asyncio.to_thread(info.wait_for_publish, ACK_PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise PublishError("the broker did not acknowledge the patient's acknowledgement")
        _LOGGER.info("acknowledgement of message %s sent", message.id)

    # -- paho's thread --------------------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the agent is stopping
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            _LOGGER.warning("command channel: broker refused the connection: %s", reason)
            return
        client.subscribe(command_topic(self._patient), qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            _LOGGER.warning("command channel: subscription refused (%s); check the broker ACL", reasons)
            return
        self._call(self.subscribed.set)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._call(self.subscribed.clear)
        _LOGGER.info("command channel: disconnected (%s); reconnecting", reason)

    def _on_mqtt_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self._call(self._handle, bytes(msg.payload))

    # -- the event loop -------------------------------------------------------------------------

    def _handle(self, payload: bytes) -> None:
        try:
            message = PatientMessage.from_bytes(payload)
        except CommandDecodeError as exc:
            self.rejected += 1
            _LOGGER.warning("command channel: ignored an invalid message (%s)", exc.reason)
            return
        self.received.append(message)
        self._on_message(message)
        if self._auto_ack:
            task = asyncio.get_running_loop().create_task(self._auto_acknowledge(message))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    async def _auto_acknowledge(self, message: PatientMessage) -> None:
        await self.acknowledge(message)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.warning("command channel: acknowledgement not sent: %s", task.exception())


