"""The MQTT publisher: drains the outbox to the broker with QoS 1 and deletes only what was acknowledged.

- paho-mqtt 2 (MQTT v5) with the agent's own credentials and, for ``mqtts://``, a verifying TLS
  context (``rpm_core.settings.MqttSettings.ssl_context``);
- a retained ``online`` agent status after every CONNACK and a retained ``offline`` last will,
  both on ``status_topic(patient)``; device status and alarms from :class:`~edge_agent.status.StatusBoard`;
- one paho client per connection, with ``clean_start`` and paho's own reconnection disabled:
  when the connection drops, whatever was unacknowledged is published again *by us*, from the
  outbox, with the same message id (``<install id>.<outbox message id>``), in the same order;
- reconnect with equal-jitter exponential backoff (:func:`mqtt_backoff_s`), longer when the broker
  refused our credentials;
- up to :data:`~edge_agent.const.PUBLISH_MAX_INFLIGHT` messages awaiting PUBACK at once; a
  message is deleted from the outbox when its PUBACK arrives (one transaction per wake-up);
- a PUBACK saying "No matching subscribers" (0x10) is not a delivery: Mosquitto had no bridge
  subscribed (after a broker restart the bridges' shared subscription is back only when they
  resubscribe) and dropped the message. It stays in the outbox; once the window in flight is
  answered the agent waits :data:`~edge_agent.const.MQTT_NO_SUBSCRIBER_RETRY_S` and offers it again.

Duplicates: the only way a reading reaches the broker twice is a PUBACK that was sent but whose
deletion was not committed: the connection dropped with the PUBACK in flight, or the agent died
between receiving the PUBACK and committing the delete. Both are windows of milliseconds, and the
copy carries the same message id, so the receiver can drop it; InfluxDB overwrites the point anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from edge_agent import const
from edge_agent.errors import BrokerRefusedError, BrokerUnavailableError, PublishError, PublishRejectedError
from edge_agent.outbox import AsyncOutbox, OutMessage
from edge_agent.status import StatusBoard, agent_payload, last_will_payload
from rpm_core.backoff import equal_jitter_backoff_s
from rpm_core.settings import MqttSettings
from rpm_core.wire import encode_readings, readings_topic, status_topic

_LOGGER = logging.getLogger(__name__)

# Status messages waiting for a connection; the newest count, so older ones are dropped first.
_STATUS_BACKLOG_MAX: Final = 200
# MQTT v5 DISCONNECT reason "Session taken over": a client with our client id connected.
_SESSION_TAKEN_OVER: Final = 0x8E
# paho reconnects by itself inside loop_forever(); we replace the client instead, so its own
# reconnect must never fire before we stop its thread.
_PAHO_RECONNECT_NEVER_S: Final = 3600
# CONNACK reason codes that no retry will fix soon: wrong credentials, not authorised, banned.
_AUTH_FAILURES: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})
# PUBACK reason code: accepted, but no subscription matched, so nobody will get the message.
NO_MATCHING_SUBSCRIBERS: Final = 0x10


def mqtt_backoff_s(attempt: int, *, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before reconnection ``attempt`` (0 = first retry): equal jitter over an exponential ceiling.

    Half the ceiling is fixed (so a fleet of agents never hammers a recovering broker in step),
    half is random (so they spread out).
    """
    return equal_jitter_backoff_s(attempt, first_s=const.MQTT_BACKOFF_MIN_S, cap_s=cap_s, rng=rng)


def message_payload(patient: str, install_id: str, message: OutMessage) -> bytes:
    """The wire message for an outbox message; its id makes a redelivery recognisable."""
    return encode_readings(
        patient=patient,
        device=message.device,
        source="ble",
        samples=list(message.samples),
        msg_id=f"{install_id}.{message.id}",
    )


def _nothing() -> None:
    pass


class _Connection:
    """One paho client for one MQTT connection; paho's thread hands every event to the event loop."""

    def __init__(self, *, mqtt: MqttSettings, client_id: str, will: tuple[str, bytes]) -> None:
        from rpm_core.mqtt_client import mqtt_client  # lazily: `rpm edge pair` never needs paho

        self._loop = asyncio.get_running_loop()
        self._mqtt = mqtt
        self.connack: asyncio.Future[Any] = self._loop.create_future()
        self.lost = asyncio.Event()
        self.acks: list[tuple[int, Any]] = []
        self.on_event: Callable[[], None] = _nothing
        client = mqtt_client(mqtt, client_id, reconnect=False)  # the publisher reconnects itself
        client.will_set(will[0], will[1], qos=1, retain=True)
        client.reconnect_delay_set(_PAHO_RECONNECT_NEVER_S, _PAHO_RECONNECT_NEVER_S)
        client.max_inflight_messages_set(const.PUBLISH_MAX_INFLIGHT + 10)  # our window + status messages
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._started = False

    def _call(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is gone
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._call(self._connected, reason)

    def _connected(self, reason: Any) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)
        self.on_event()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._call(self._lost, reason)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        self._call(self._acked, mid, reason)

    def _lost(self, reason: Any) -> None:
        if getattr(reason, "value", None) == _SESSION_TAKEN_OVER:
            _LOGGER.error("the broker gave this agent's MQTT session to another client with the same id: another "
                          "rpm edge run for this patient is running elsewhere; stop one of them")
        if not self.connack.done():
            self.connack.set_exception(BrokerUnavailableError(f"connection closed before CONNACK: {reason}"))
        self.lost.set()
        self.on_event()

    def _acked(self, mid: int, reason: Any) -> None:
        self.acks.append((mid, reason))
        self.on_event()

    async def open(self) -> None:
        """TCP (+TLS) connect, CONNECT, and wait for a successful CONNACK."""
        try:
            await asyncio.to_thread(
                self._client.connect, self._mqtt.host, self._mqtt.port, const.MQTT_KEEPALIVE_S, clean_start=True
            )
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise BrokerUnavailableError(f"cannot reach {self._mqtt.host}:{self._mqtt.port}: {exc}") from exc
        self._client.loop_start()
        self._started = True
        try:
            async with asyncio.timeout(const.MQTT_CONNACK_TIMEOUT_S):
                reason = await self.connack
        except TimeoutError:
            raise BrokerUnavailableError(f"no CONNACK within {const.MQTT_CONNACK_TIMEOUT_S:g} s") from None
        if reason.is_failure:
            raise BrokerRefusedError(f"{reason} (0x{reason.value:02x})")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a QoS 1 publish; its ``mid`` comes back in :attr:`acks`."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != 0:
            raise BrokerUnavailableError(f"publish failed locally (paho rc {info.rc})")
        return int(info.mid)

    def take_acks(self) -> list[tuple[int, Any]]:
        """PUBACKs received since the last call."""
        acks, self.acks = self.acks, []
        return acks

    async def close(self) -> None:
        """DISCONNECT (so the broker does not publish the will) and stop paho's thread."""
        self._client.disconnect()
        if self._started:
            await asyncio.to_thread(self._client.loop_stop)


class Publisher:
    """Publishes outbox messages and status until cancelled; see the module docstring."""

    def __init__(
        self,
        *,
        mqtt: MqttSettings,
        patient: str,
        outbox: AsyncOutbox,
        board: StatusBoard,
        backoff_max_s: float = const.DEFAULT_MQTT_BACKOFF_MAX_S,
        max_inflight: int = const.PUBLISH_MAX_INFLIGHT,
        batch_samples: int = const.PUBLISH_BATCH_MAX_SAMPLES,
    ) -> None:
        self._mqtt = mqtt
        self._patient = patient
        self._outbox = outbox
        self._board = board
        self._backoff_max_s = backoff_max_s
        self._max_inflight = max_inflight
        self._batch_samples = batch_samples
        self._wake = asyncio.Event()
        self._status: deque[bytes] = deque(maxlen=_STATUS_BACKLOG_MAX)
        self.connected = asyncio.Event()
        self.connected_once = False
        self.client_id = mqtt.client_id(f"edge-{patient}")  # agent-<patient>:edge-<patient>
        self.published = 0
        self.acknowledged = 0
        self.connections = 0
        self.unrouted = 0  # PUBACKs that said "No matching subscribers" (offered again later)
        self._unrouted_reported = False
        board.listener = self._queue_status

    def wake(self) -> None:
        """Something new to publish (the writer committed readings)."""
        self._wake.set()

    def _queue_status(self, payload: bytes) -> None:
        self._status.append(payload)
        self._wake.set()

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff: until cancelled (then say goodbye)."""
        attempt = 0
        while True:
            try:
                await self._session()
            except BrokerRefusedError as exc:
                _LOGGER.error("MQTT: %s; check the agent's user and password and the broker ACL", exc)
                attempt = max(attempt, 30)  # credentials will not fix themselves: wait the maximum
            except PublishError as exc:
                _LOGGER.warning("MQTT: %s", exc)
                if self.connected_once:
                    attempt, self.connected_once = 0, False  # it worked until now: retry soon
            delay = mqtt_backoff_s(attempt, cap_s=self._backoff_max_s)
            attempt += 1
            _LOGGER.info("MQTT: reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        topic = status_topic(self._patient)
        will = (topic, last_will_payload(self._patient))
        conn = _Connection(mqtt=self._mqtt, client_id=self.client_id, will=will)
        conn.on_event = self._wake.set
        try:
            await conn.open()
            self.connections += 1
            self.connected_once = True
            _LOGGER.info("MQTT: connected to %s as %s", self._mqtt.url(), self._mqtt.username)
            conn.publish(topic, agent_payload(self._patient, "online"), retain=True)
            self._status.clear()
            self._status.extend(self._board.snapshot())
            self.connected.set()
            await self._pump(conn)
        except asyncio.CancelledError:
            if self.connected.is_set():
                await self._goodbye(conn)
            raise
        finally:
            self.connected.clear()
            await conn.close()
        raise BrokerUnavailableError("connection lost")

    async def _pump(self, conn: _Connection) -> None:
        cursor = 0  # highest outbox message id published on this connection
        inflight: dict[int, int] = {}  # paho mid -> outbox message id
        unrouted = False  # a reading came back "No matching subscribers": hold, then offer again
        while not conn.lost.is_set():
            self._wake.clear()
            self._publish_status(conn)
            unrouted = await self._handle_acks(conn, inflight) or unrouted
            if unrouted:
                if inflight:  # let the rest of the window be answered first
                    await self._wake.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.lost.wait(), const.MQTT_NO_SUBSCRIBER_RETRY_S)
                cursor, unrouted = 0, False  # what was not acknowledged is still in the outbox
                continue
            room = self._max_inflight - len(inflight)
            if room > 0:
                batch = await self._outbox.take_batch(after=cursor, max_messages=room, max_samples=self._batch_samples)
                for message in batch:
                    payload = message_payload(self._patient, self._outbox.install_id, message)
                    mid = conn.publish(readings_topic(self._patient), payload)
                    inflight[mid] = message.id
                    cursor = message.id
                    self.published += 1
                if batch:
                    continue
            await self._wake.wait()

    def _publish_status(self, conn: _Connection) -> None:
        topic = status_topic(self._patient)
        while self._status:
            conn.publish(topic, self._status.popleft())

    async def _handle_acks(self, conn: _Connection, inflight: dict[int, int]) -> bool:
        """Delete what the broker acknowledged; True if a reading found no subscriber (kept)."""
        done = []
        unrouted = 0
        for mid, reason in conn.take_acks():
            message_id = inflight.pop(mid, None)
            if reason.is_failure:
                topic = readings_topic(self._patient) if message_id is not None else status_topic(self._patient)
                raise PublishRejectedError(topic, f"{reason} (0x{reason.value:02x}); check the broker ACL")
            if message_id is None:
                continue  # status messages: best effort, the retained ones are kept by the broker anyway
            if reason.value == NO_MATCHING_SUBSCRIBERS:
                unrouted += 1
            else:
                done.append(message_id)
        if done:
            await self._outbox.ack(done)
            self.acknowledged += len(done)
            self._unrouted_reported = False
        if unrouted:
            if not self._unrouted_reported:  # once per episode, not once per retry
                _LOGGER.warning("MQTT: the broker has no subscriber for readings (is the bridge running?); "
                                "keeping them and offering them again every %.0f s", const.MQTT_NO_SUBSCRIBER_RETRY_S)
                self._unrouted_reported = True
            self.unrouted += unrouted
        return bool(unrouted)

    async def _goodbye(self, conn: _Connection) -> None:
        """On a graceful stop: a retained ``offline``, acknowledged (or given up on after 2 s)."""
        if conn.lost.is_set():
            return
        with contextlib.suppress(PublishError, TimeoutError):
            mid = conn.publish(status_topic(self._patient), agent_payload(self._patient, "offline"), retain=True)
            async with asyncio.timeout(const.MQTT_GOODBYE_TIMEOUT_S):
                while not any(m == mid for m, _r in conn.acks) and not conn.lost.is_set():
                    self._wake.clear()
                    await self._wake.wait()
