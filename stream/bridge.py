"""The MQTT → Kafka bridge: ack to MQTT only after Kafka acked.

paho-mqtt runs its network loop in its own thread and hands every message (``manual_ack=True``)
to an asyncio loop that validates it, produces it to Kafka and, once Kafka acknowledged the
record, acknowledges the MQTT message with ``client.ack(mid, qos)``. Until then Mosquitto keeps
the message; if the bridge dies it is redelivered (at-least-once; the sink is idempotent).

paho's per-packet handling of a PUBLISH (an MQTT v5 ``Properties`` object, an ``MQTTMessage``,
locks and logging per message) was most of the bridge's CPU: the PUBLISH packets Mosquitto sends
(QoS 0/1, no properties) that are whole in the read buffer are decoded by the bridge itself
(:meth:`_BufferedSocket.take_publish`); every other packet goes through paho, and acknowledgements,
keepalive and reconnects stay paho's.

Backpressure: MQTT v5 Receive Maximum caps the unacknowledged messages Mosquitto sends us, so a
slow Kafka stops the flow at the broker (which queues without limit, ``max_queued_messages 0``)
instead of growing memory here.

Several bridges share the load with an MQTT v5 shared subscription (``$share/<group>/…``), and
each keeps a persistent session (clean start off, session expiry) so nothing is lost across a
restart.

The messages of a batch are coalesced into one Kafka record per partition (each group naming its
patient; the partition is Kafka's default partitioner applied to the patient id, so a patient's
readings stay on one partition, in order, and its detector state with the worker that owns it): a
worker's and the broker's cost is per record, not per reading, and a record per MQTT message
would make it per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from paho.mqtt.enums import MQTTErrorCode

from rpm_core import topics
from rpm_core.backoff import backoff_s
from rpm_core.deadletter import ReasonLog, deadletter_record, minimal_deadletter_record
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.mqtt_client import mqtt_client, session_properties
from rpm_core.settings import MqttSettings
from rpm_core.technical import Heartbeat, HeartbeatSender
from rpm_core.wire import READINGS_TOPIC_FILTER, WireError, encode_readings_record, parse_readings_message
from stream.errors import BridgeError
from stream.kafka_errors import ErrorKind, describe, error_kind

_LOGGER = logging.getLogger(__name__)

SHARED_GROUP: Final = "rpm-bridges"
# A week: a bridge that is away for longer than this has bigger problems than its queue.
SESSION_EXPIRY_S: Final = 7 * 24 * 3600
# Unacknowledged messages in flight towards us; beyond this Mosquitto queues (backpressure).
RECEIVE_MAXIMUM: Final = 4000
MAX_BATCH_MESSAGES: Final = 2000
# Coalesce messages into a record until their payloads add up to this...
MAX_RECORD_BYTES: Final = 512 * 1024
# ...and never produce an encoded record above this (Kafka's default max.message.bytes is 1 MiB):
# normalising can grow a message (``1e9`` becomes ``1000000000.0``), so the encoding is measured.
MAX_ENCODED_RECORD_BYTES: Final = 1_000_000
MAX_REQUEST_BYTES: Final = 2 * 1024 * 1024
LINGER_MS: Final = 50
# A message received this long ago and still not acknowledged means the bridge is not progressing.
STUCK_AFTER_S: Final = 60.0
# While Kafka refuses this client (authorization), retry at most this often.
FORBIDDEN_RETRY_S: Final = 30.0
# MQTT packets handled per wake-up of paho's network thread (then it looks at writes: PUBACKs).
MAX_PACKETS_PER_READ: Final = 500


class _BufferedSocket:
    """A socket (plain or TLS) read in 64 KiB chunks: paho asks for a packet's fixed header one
    byte at a time, i.e. three or four ``recv`` system calls per MQTT message, which was a quarter
    of the bridge's CPU. ``pending()`` tells paho's loop that buffered bytes are waiting (it asks
    TLS sockets the same), so it never sleeps in ``select`` on data it already has."""

    _CHUNK: Final = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._data):
            data: bytes = self._sock.recv(max(bufsize, self._CHUNK))  # BlockingIOError etc. reach paho as before
            if not data:
                return data  # the peer closed the connection
            self._data, self._pos = data, 0
        out = self._data[self._pos : self._pos + bufsize]
        self._pos += len(out)
        return out

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._data) - self._pos + int(inner)

    def take_publish(self) -> tuple[int, int, str, bytes] | None:
        """The PUBLISH packet at the head of the buffer as ``(mid, qos, topic, payload)``, consumed,
        if it is whole in the buffer and of the one kind Mosquitto sends the bridge: QoS 0 or 1, a
        non-empty UTF-8 topic, no MQTT v5 properties (a packet id for QoS 1). Anything else (another
        packet type, QoS 2, properties such as a topic alias, a packet not yet all read, a malformed
        one) is left where it is, and paho reads it as before, with its own checks and errors."""
        data, pos = self._data, self._pos
        end = len(data)
        if pos >= end:
            return None
        header = data[pos]
        if header & 0xF0 != 0x30:  # not a PUBLISH
            return None
        qos = (header >> 1) & 0x03
        if qos > 1:
            return None
        length = 0
        shift = 0
        i = pos + 1
        while True:  # the remaining length: at most 4 bytes of 7 bits
            if i >= end or shift > 21:
                return None
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        stop = i + length
        if stop > end:
            return None
        if i + 2 > stop:
            return None
        topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
        if topic_end == i + 2 or topic_end + 2 * qos + 1 > stop:  # no topic; no room for the id and properties
            return None
        mid = 0
        j = topic_end
        if qos:
            mid = (data[j] << 8) | data[j + 1]
            j += 2
            if mid == 0:
                return None
        if data[j] != 0:  # the properties' length: only none is handled here
            return None
        try:
            topic = data[i + 2 : topic_end].decode()
        except UnicodeDecodeError:
            return None
        self._pos = stop
        return mid, qos, topic, data[j + 1 : stop]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# A PUBACK: fixed header, remaining length 2, the packet id (MQTT v5 leaves out the reason code of a success).
_PUBACK: Final = struct.Struct("!BBH")


class _BridgeClient(mqtt.Client):
    """paho's client with buffered reads, every packet already received handled per wake-up
    (paho's ``loop_read`` handles one or a few per ``select``), PUBACKs sent in batches (paho
    wakes its network thread with a system call for every ``ack``), and ``on_burst_end`` called
    after each burst of packets read, so the bridge hands a burst's messages to its event loop
    with one wake-up instead of one per message."""

    _batch_thread: int | None = None
    on_burst_end: Callable[[], None] | None = None
    # Called with (mid, qos, topic, payload) for the PUBLISH packets read without paho (see
    # _BufferedSocket.take_publish); None: every packet goes through paho's on_message.
    on_publish_packet: Callable[[int, int, str, bytes], None] | None = None

    def ack_many(self, acks: list[tuple[int, int]]) -> None:
        """``ack(mid, qos)`` for each, in order, waking the network thread once; the PUBACKs of QoS 1
        messages in a row go as one buffer (paho writes every queued packet with a system call of its
        own: 2,000 of 4 bytes for a batch). QoS 0 needs none; QoS 2's PUBCOMP goes through paho."""
        if not self._manual_ack:
            return
        self._batch_thread = threading.get_ident()
        try:
            pubacks = bytearray()
            for mid, qos in acks:
                if qos == 1:
                    pubacks += _PUBACK.pack(mqtt.PUBACK, 2, mid)
                elif qos == 2:
                    if pubacks:
                        self._packet_queue(mqtt.PUBACK, pubacks, 0, 1)
                        pubacks = bytearray()
                    self.ack(mid, qos)
            if pubacks:
                self._packet_queue(mqtt.PUBACK, pubacks, 0, 1)
        finally:
            self._batch_thread = None
        wake = self._sockpairW
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.send(b"0")

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any = None
                      ) -> MQTTErrorCode:
        if threading.get_ident() != self._batch_thread:
            return super()._packet_queue(command, packet, mid, qos, info)
        # paho's _packet_queue without the wake-up (ack_many wakes the thread once at the end)
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                                 "packet": packet, "info": info})
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho's handling of a PUBLISH (Properties object, MQTTMessage, locks, logging, the state
        # dict rebuilt per packet) was most of the bridge's receiving cost: the packets whole in the
        # buffer are decoded here instead, every other packet (and any partly read) by paho.
        fast = self.on_publish_packet
        taken = 0
        try:
            for _ in range(max(max_packets, MAX_PACKETS_PER_READ)):
                sock = self._sock
                if sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                if fast is not None and self._in_packet["command"] == 0 and isinstance(sock, _BufferedSocket):
                    packet = sock.take_publish()
                    if packet is not None:
                        taken += 1
                        fast(*packet)
                        continue
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            if taken:
                with self._msgtime_mutex:  # what paho notes per packet read, for its keepalive
                    self._last_bytes_received = mqtt.time_func()
            if self.on_burst_end is not None:
                self.on_burst_end()


class Inbound(NamedTuple):
    """One MQTT message as received (a named tuple: built per message, at a third of a frozen
    dataclass's cost)."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    received_at: float


@dataclass
class BridgeStats:
    """Counters for metrics and tests."""

    messages_in: int = 0
    readings_out: int = 0
    records_out: int = 0
    deadlettered: int = 0
    produce_retries: int = 0
    records_refused: int = 0  # records Kafka refused for good (then split, shrunk or dead-lettered)
    reasons: ReasonLog = field(default_factory=ReasonLog)


@dataclass
class _Out:
    """One record to produce: readings of one partition (``groups``, each with the message it came
    from) or a dead-letter record."""

    topic: str
    partition: int | None
    value: bytes
    groups: list[tuple[dict[str, Any], Inbound]] = field(default_factory=list)
    readings: int = 0


@dataclass
class _Batch:
    records: list[_Out] = field(default_factory=list)
    deadletters: int = 0

    def deadletter_values(self) -> list[bytes]:
        """The dead-letter records of the batch, in order."""
        return [r.value for r in self.records if r.topic == topics.DEADLETTER]


class Bridge:
    """One bridge instance; run several for more throughput or availability."""

    def __init__(
        self,
        *,
        mqtt_settings: MqttSettings,
        bootstrap: str,
        client_id: str,
        shared_group: str = SHARED_GROUP,
        clock: Callable[[], float] = time.time,
        compression: str | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self._mqtt_settings = mqtt_settings
        self._max_request_bytes = max_request_bytes
        self._bootstrap = bootstrap
        self._client_id = mqtt_settings.client_id(client_id)  # <user>:<name>: only our user may take it
        self._subscription = f"$share/{shared_group}/{READINGS_TOPIC_FILTER}"
        self._clock = clock
        self._compression = compression
        self.stats = BridgeStats()
        # Bursts of messages, handed over from paho's thread once per read (see _on_burst_end).
        self._queue: asyncio.Queue[list[Inbound]] = asyncio.Queue()
        self._burst: list[Inbound] = []  # paho's thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _BridgeClient | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stopping = False
        self._kafka_started = False
        self._connect_failures = 0
        # received_at of the oldest message being forwarded (None: none is); and why it waits
        self._forwarding_since: float | None = None
        self.problem: str | None = None

    def oldest_unacknowledged_s(self, now: float | None = None) -> float:
        """How long the oldest message received and not yet acknowledged has waited (0: none)."""
        now = self._clock() if now is None else now
        oldest = [t for t in (self._forwarding_since, self._queued_since()) if t is not None]
        return max(0.0, now - min(oldest)) if oldest else 0.0

    def _queued_since(self) -> float | None:
        queued = getattr(self._queue, "_queue", None)  # asyncio.Queue's deque: peek, never take
        return queued[0][0].received_at if queued else None

    def health(self, now: float | None = None) -> dict[str, Any]:
        """Health for ``/healthz``: booleans must all be true for a 200.

        ``progressing`` is false once a message has waited ``STUCK_AFTER_S`` unacknowledged,
        whatever the connections say: a bridge that cannot forward is not healthy.
        """
        waited = self.oldest_unacknowledged_s(now)
        progressing = waited < STUCK_AFTER_S
        problem = self.problem
        if not progressing and problem is None:
            problem = f"a message has waited {waited:.0f} s unacknowledged (Kafka not taking records?)"
        return {
            "mqtt_connected": self.connected.is_set(),
            "subscribed": self.subscribed.is_set(),
            "kafka_started": self._kafka_started,
            "progressing": progressing,
            "oldest_unacked_s": round(waited, 1),
            "problem": problem,
            "client_id": self._client_id,
            "messages_in": self.stats.messages_in,
            "readings_out": self.stats.readings_out,
            "deadlettered": self.stats.deadlettered,
        }

    def metrics_text(self) -> str:
        """Prometheus exposition of this bridge's counters."""
        from stream.metrics import bridge_metrics, render

        return render(bridge_metrics(self.stats, connected=self.connected.is_set(),
                                     subscribed=self.subscribed.is_set()))

    # --- MQTT side (paho's thread) ---------------------------------------------------------------

    def _make_client(self) -> _BridgeClient:
        s = self._mqtt_settings
        client = mqtt_client(s, self._client_id, cls=_BridgeClient, manual_ack=True, max_inflight=100)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish_packet = self._received
        client.on_burst_end = self._on_burst_end
        return client

    def _connect_properties(self) -> Any:
        return session_properties(SESSION_EXPIRY_S, receive_maximum=RECEIVE_MAXIMUM)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            _LOGGER.error("MQTT connection refused: %s", reason)
            return
        _LOGGER.info("bridge %s connected to MQTT %s", self._client_id, self._mqtt_settings.url())
        self._connect_failures = 0
        self.connected.set()
        client.subscribe(self._subscription, qos=1)

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception says why (refused, TLS, DNS).
        self._connect_failures += 1
        if self._connect_failures % 10 == 1:
            _LOGGER.warning("bridge %s cannot connect to MQTT %s (attempt %d): %s; retrying", self._client_id,
                            self._mqtt_settings.url(), self._connect_failures, sys.exc_info()[1])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            _LOGGER.error("subscription to %s refused: %s (check the ACL)", self._subscription, reasons)
            return
        self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self._stopping:
            return
        _LOGGER.warning("bridge %s disconnected from MQTT: %s; reconnecting", self._client_id, reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # msg.topic raises on a topic that is not UTF-8, and an exception here would end paho's
        # network thread; decoded with replacement it fails the topic check and is dead-lettered.
        topic = msg._topic.decode("utf-8", "replace")
        self._received(msg.mid, msg.qos, topic, bytes(msg.payload))

    def _received(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        """A message read, by paho (``_on_message``) or from the buffer (``take_publish``)."""
        self._burst.append(Inbound(mid, qos, topic, payload, self._clock()))

    def _on_burst_end(self) -> None:
        # Waking the event loop (call_soon_threadsafe: a system call and a GIL hand-over) once per
        # message was an eighth of the bridge's CPU; once per burst of up to MAX_PACKETS_PER_READ.
        if self._burst:
            burst, self._burst = self._burst, []
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._queue.put_nowait, burst)

    # --- Kafka side (asyncio) --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set; unacknowledged messages stay with Mosquitto."""
        self._loop = asyncio.get_running_loop()
        producer = AIOKafkaProducer(
            **kafka_client_kwargs(self._bootstrap),
            client_id=self._client_id,
            acks="all",
            # A forward takes what arrived while the previous one was in flight: the longer each
            # takes, the fewer and bigger its records (one per partition). The broker's cost is per
            # batch: 50 ms instead of 20 cut Tansu's CPU per reading 2.3-2.5x at 30k readings/s
            # (RESULTS.md, "Broker cost per reading"); the latency to the worker did not move.
            linger_ms=LINGER_MS,
            max_batch_size=1024 * 1024,
            max_request_size=self._max_request_bytes,
            enable_idempotence=False,  # Tansu rejects idempotent producers; the sink is idempotent
            compression_type=self._compression,  # RPM_KAFKA_COMPRESSION; off by default (costs CPU)
        )
        await self._start_producer(producer, stop)
        client = self._make_client()
        self._client = client
        sender = self._heartbeat_sender(producer)
        beats = asyncio.ensure_future(sender.forever(self.heartbeat, stop))
        try:
            client.connect_async(
                self._mqtt_settings.host, self._mqtt_settings.port, keepalive=30,
                clean_start=False, properties=self._connect_properties(),
            )
            client.loop_start()
            await self._pump(producer, client, stop)
        finally:
            self._stopping = True
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            if stop.is_set():  # stopped on purpose: not to be reported as silent (a crash says nothing)
                await sender.last(self.heartbeat("stopping"))
            client.disconnect()
            client.loop_stop()
            await producer.stop()

    def heartbeat(self, state: str = "running") -> Heartbeat:
        """What this bridge tells ``rpm watchdog`` (see :mod:`rpm_core.technical`)."""
        health = self.health()
        healthy = all(v for v in health.values() if isinstance(v, bool))
        problem = health["problem"]
        if not healthy and problem is None:
            down = [k for k, v in health.items() if isinstance(v, bool) and not v]
            problem = f"not {', '.join(down)} (MQTT {self._mqtt_settings.url()}, Kafka {self._bootstrap})"
        return Heartbeat(component="bridge", instance=self._client_id, time=self._clock(), state=state,  # type: ignore[arg-type]
                         healthy=healthy, problem=problem, messages=self.stats.messages_in,
                         deadlettered=self.stats.deadlettered)

    def _heartbeat_sender(self, producer: AIOKafkaProducer) -> HeartbeatSender:
        """Heartbeats go unsigned (the bridge holds no key); one not sent for 15 s makes the watchdog
        raise tech.bridge_silent: that is the alarm."""

        async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
            await producer.send_and_wait(topics.HEARTBEATS, value, key=key, headers=headers)

        return HeartbeatSender(send, keys=None, what="this bridge", logger=_LOGGER)

    async def _start_producer(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                await producer.start()
                self._kafka_started = True
                return
            except KafkaError as exc:
                attempt += 1
                _LOGGER.warning("Kafka at %s not reachable (%s); retrying", self._bootstrap, exc)
                await asyncio.sleep(backoff_s(attempt))
        raise BridgeError("stopped before Kafka was reachable")

    async def _pump(self, producer: AIOKafkaProducer, client: _BridgeClient, stop: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                get = asyncio.ensure_future(self._queue.get())
                await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                items = get.result()
                self._drain(items, MAX_BATCH_MESSAGES)
                if not await self._forward(producer, items, stop):
                    break  # stopping: unacknowledged, so Mosquitto redelivers them
                client.ack_many([(item.mid, item.qos) for item in items])
        finally:
            stop_wait.cancel()

    def _drain(self, items: list[Inbound], limit: int) -> None:
        """Add the bursts already queued to ``items`` while it holds fewer than ``limit`` messages."""
        while len(items) < limit:
            try:
                items += self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break

    def _build(self, items: list[Inbound], partitions: int) -> _Batch:
        batch = _Batch()
        groups: dict[int, list[tuple[dict[str, Any], Inbound]]] = {}
        sizes: dict[int, int] = {}
        partition_of: dict[str, int] = {}
        for item in items:
            try:
                msg = parse_readings_message(item.payload, topic=item.topic, now=item.received_at)
            except Exception as exc:
                # A WireError is a bad message. Anything else is a defect of our validation: the
                # message still goes to the dead-letter topic (to replay once fixed), or it would
                # stay unacknowledged and stop every bridge it is delivered to, again and again.
                if isinstance(exc, WireError):
                    reason = exc.reason
                else:
                    reason = f"validation failed: {type(exc).__name__}"
                    _LOGGER.error("validating a readings message raised %s (a defect); it goes to %s",
                                  type(exc).__name__, topics.DEADLETTER)
                batch.records.append(self._deadletter(item, reason))
                batch.deadletters += 1
                continue
            part = partition_of.get(msg.patient)
            if part is None:
                part = partition_of[msg.patient] = topics.partition_for(msg.patient, partitions)
            if sizes.get(part, 0) + len(item.payload) > MAX_RECORD_BYTES:
                batch.records += _readings_records(part, groups.pop(part))
                sizes[part] = 0
            group = msg.to_group()
            group["patient"] = msg.patient
            groups.setdefault(part, []).append((group, item))
            sizes[part] = sizes.get(part, 0) + len(item.payload)
        for part, g in groups.items():
            batch.records += _readings_records(part, g)
        return batch

    def _deadletter(self, item: Inbound, reason: str) -> _Out:
        self.stats.reasons.note("bridge", reason, item.topic)
        record = deadletter_record(stage="bridge", reason=reason, source=item.topic, payload=item.payload,
                                   received_at=item.received_at)
        return _Out(topics.DEADLETTER, None, record)

    async def _forward(self, producer: AIOKafkaProducer, items: list[Inbound], stop: asyncio.Event) -> bool:
        """Produce ``items``; False if told to stop before Kafka took them all.

        Each record is sent and judged on its own (:func:`stream.kafka_errors.error_kind`): one
        Kafka refuses for good is split, shrunk or dead-lettered (:meth:`_refused`), never retried
        as it is, so it cannot hold up the messages behind it; the others are retried with backoff.
        """
        self._forwarding_since = min(item.received_at for item in items) if items else None
        try:
            pending: list[_Out] | None = None
            attempt = 0
            while pending is None or pending:
                if pending is None:  # the partition count comes from Kafka's metadata (cached)
                    try:
                        pending = self._build(items, len(await producer.partitions_for(topics.READINGS))).records
                    except KafkaError as exc:
                        attempt += 1
                        if not await self._wait_retry(exc, attempt, stop):
                            return False
                        continue
                pending, failure = await self._send(producer, pending)
                if failure is None:
                    attempt = 0
                    continue
                attempt += 1
                if not await self._wait_retry(failure, attempt, stop):
                    return False
            self.problem = None
            self.stats.messages_in += len(items)
            return True
        finally:
            self._forwarding_since = None

    async def _send(self, producer: AIOKafkaProducer, records: list[_Out]) -> tuple[list[_Out], BaseException | None]:
        """Send ``records``; return those to send again and the first error to wait on (None: none)."""
        sent: list[tuple[_Out, Any]] = []
        for out in records:
            try:
                sent.append((out, await producer.send(out.topic, value=out.value, partition=out.partition)))
            except KafkaError as exc:  # the client's own checks (size) and metadata timeouts
                sent.append((out, exc))
        results = await asyncio.gather(*(f for _o, f in sent if not isinstance(f, BaseException)),
                                       return_exceptions=True)
        outcomes = iter(results)
        again: list[_Out] = []
        failure: BaseException | None = None
        for out, future in sent:
            result = future if isinstance(future, BaseException) else next(outcomes)
            if not isinstance(result, BaseException):
                self._count(out)
                continue
            if not isinstance(result, KafkaError):
                raise result
            if error_kind(result) is ErrorKind.REFUSED:
                again += self._refused(out, result)
            else:
                again.append(out)
                failure = failure or result
        return again, failure

    def _count(self, out: _Out) -> None:
        if out.topic == topics.DEADLETTER:
            self.stats.deadlettered += 1
        else:
            self.stats.records_out += 1
            self.stats.readings_out += out.readings

    def _refused(self, out: _Out, exc: KafkaError) -> list[_Out]:
        """What to send instead of ``out``, which Kafka will never take (``exc``)."""
        self.stats.records_refused += 1
        why = describe(exc)
        if out.topic == topics.DEADLETTER:
            smaller = minimal_deadletter_record(out.value)
            if len(smaller) < len(out.value):
                _LOGGER.warning("Kafka refused a dead-letter record (%s); sending it without its payload", why)
                return [_Out(topics.DEADLETTER, None, smaller)]
            _LOGGER.error("Kafka refused a dead-letter record even without its payload (%s); it is dropped, "
                          "the message acknowledged: %s", why, out.value[:300])
            return []
        assert out.partition is not None
        if len(out.groups) > 1:
            _LOGGER.warning("Kafka refused a readings record of %d messages (%s); sending them one by one",
                            len(out.groups), why)
            return [r for group in out.groups for r in _readings_records(out.partition, [group])]
        [(_group, item)] = out.groups
        return [self._deadletter(item, f"Kafka refused the record carrying this message: {why}")]

    async def _wait_retry(self, exc: BaseException, attempt: int, stop: asyncio.Event) -> bool:
        """Note ``exc`` and wait before the next attempt; False if told to stop meanwhile.

        Not acknowledged to MQTT yet, so nothing is lost; redelivering is safe downstream.
        """
        self.stats.produce_retries += 1
        kind = error_kind(exc)
        if kind is ErrorKind.FORBIDDEN:
            self.problem = (f"Kafka refuses this bridge ({describe(exc)}): check its credentials and ACLs "
                            f"for {topics.READINGS} and {topics.DEADLETTER}")
            delay = FORBIDDEN_RETRY_S
            _LOGGER.error("%s; messages stay with Mosquitto, retrying in %.0f s", self.problem, delay)
        else:
            self.problem = f"Kafka produce failing: {describe(exc)}"
            delay = backoff_s(attempt)
            _LOGGER.warning("Kafka produce failed (attempt %d): %s; retrying", attempt, describe(exc))
        if stop.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        return not stop.is_set()


def _readings_records(partition: int, groups: list[tuple[dict[str, Any], Inbound]]) -> list[_Out]:
    """``groups`` as records of at most ``MAX_ENCODED_RECORD_BYTES`` each (halved until they fit; a
    single message's group always fits, see :data:`rpm_core.wire.MAX_MESSAGE_BYTES`)."""
    value = encode_readings_record(None, [g for g, _item in groups])
    if len(value) > MAX_ENCODED_RECORD_BYTES and len(groups) > 1:
        mid = len(groups) // 2
        return _readings_records(partition, groups[:mid]) + _readings_records(partition, groups[mid:])
    readings = sum(len(g["t"]) for g, _item in groups)
    return [_Out(topics.READINGS, partition, value, groups, readings)]


def claim_client_id(prefix: str = "rpm-bridge") -> tuple[str, Any]:
    """A client id that is stable across restarts yet unique among the bridges on this host.

    A persistent MQTT session only protects the messages in flight if the restarted bridge comes
    back under the same client id, and two live bridges with one id would keep kicking each other
    off. So each bridge takes the lowest free slot ``n`` with an ``flock`` that dies with its
    process (kill -9 included) and uses ``<host>-<n>`` (bound to the bridge's MQTT user as
    ``<user>:<host>-<n>``, see :meth:`rpm_core.settings.MqttSettings.client_id`).
    """
    import fcntl
    import os
    import socket
    import tempfile
    from pathlib import Path

    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / "rpm-bridge-slots"
    base.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    for n in range(1024):
        handle = (base / f"{prefix}-{n}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return f"{host}-{n}", handle
    raise BridgeError("no free bridge slot (1024 bridges on one host?)")


async def run_bridge(
    settings: Any, *, client_id: str | None = None, partitions: int = 8, health_port: int | None = None
) -> None:
    """``rpm bridge``: run until SIGTERM/SIGINT, then stop cleanly (unacked messages stay queued)."""
    import signal

    from stream.health import HealthServer

    bootstrap = settings.kafka_bootstrap()
    await topics.ensure_topics(bootstrap, partitions=partitions)
    lock = None
    if client_id is None:
        client_id, lock = claim_client_id()
    bridge = Bridge(mqtt_settings=settings.mqtt(), bootstrap=bootstrap, client_id=client_id,
                    compression=settings.kafka_compression_type())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = (HealthServer(bridge.health, metrics=bridge.metrics_text, port=health_port)
              if health_port is not None else None)
    try:
        if health is not None:
            await health.start()
            _LOGGER.info("bridge health on http://127.0.0.1:%d/healthz", health.port)
        await bridge.run(stop)
    finally:
        if health is not None:
            await health.stop()
        _LOGGER.info("bridge %s stopped: %s", client_id, bridge.stats)
        if lock is not None:
            lock.close()
