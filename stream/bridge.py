"""The MQTT → Kafka bridge: ack to MQTT only after Kafka acked.

paho-mqtt runs its network loop in its own thread and hands every message (``manual_ack=True``)
to an asyncio loop that validates it, produces it to Kafka and, once Kafka acknowledged the
record, acknowledges the MQTT message with ``client.ack(mid, qos)``. Until then Mosquitto keeps
the message; if the bridge dies it is redelivered (at-least-once; the sink is idempotent).

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
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rpm_core.settings import MqttSettings
from rpm_core.wire import READINGS_TOPIC_FILTER, WireError, encode_readings_record, parse_readings_message
from stream import topics
from stream.deadletter import ReasonLog, deadletter_record
from stream.errors import BridgeError
from stream.sink import backoff_s

_LOGGER = logging.getLogger(__name__)

SHARED_GROUP: Final = "rpm-bridges"
# A week: a bridge that is away for longer than this has bigger problems than its queue.
SESSION_EXPIRY_S: Final = 7 * 24 * 3600
# Unacknowledged messages in flight towards us; beyond this Mosquitto queues (backpressure).
RECEIVE_MAXIMUM: Final = 4000
MAX_BATCH_MESSAGES: Final = 2000
# Keep coalesced records well below Kafka's 1 MiB default.
MAX_RECORD_BYTES: Final = 512 * 1024
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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _BridgeClient(mqtt.Client):
    """paho's client with buffered reads, every packet already received handled per wake-up
    (paho's ``loop_read`` handles one or a few per ``select``), PUBACKs sent in batches (paho
    wakes its network thread with a system call for every ``ack``), and ``on_burst_end`` called
    after each burst of packets read, so the bridge hands a burst's messages to its event loop
    with one wake-up instead of one per message."""

    _batch_thread: int | None = None
    on_burst_end: Callable[[], None] | None = None

    def ack_many(self, acks: list[tuple[int, int]]) -> None:
        """``ack(mid, qos)`` for each, waking the network thread once."""
        self._batch_thread = threading.get_ident()
        try:
            for mid, qos in acks:
                self.ack(mid, qos)
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
        try:
            for _ in range(max(max_packets, MAX_PACKETS_PER_READ)):
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            if self.on_burst_end is not None:
                self.on_burst_end()


@dataclass(frozen=True, slots=True)
class Inbound:
    """One MQTT message as received."""

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
    reasons: ReasonLog = field(default_factory=ReasonLog)


@dataclass
class _Batch:
    records: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, value)
    deadletters: list[tuple[str | None, bytes]] = field(default_factory=list)
    readings: int = 0


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
    ) -> None:
        self._mqtt_settings = mqtt_settings
        self._bootstrap = bootstrap
        self._client_id = client_id
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

    def health(self) -> dict[str, Any]:
        """Health for ``/healthz``: booleans must all be true for a 200."""
        return {
            "mqtt_connected": self.connected.is_set(),
            "subscribed": self.subscribed.is_set(),
            "kafka_started": self._kafka_started,
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
        client = _BridgeClient(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if s.username:
            client.username_pw_set(s.username, s.password.get() or None)
        context = s.ssl_context()
        if context is not None:
            client.tls_set_context(context)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(min_delay=1, max_delay=15)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_burst_end = self._on_burst_end
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        return props

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
        self._burst.append(Inbound(msg.mid, msg.qos, msg.topic, bytes(msg.payload), self._clock()))

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
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            linger_ms=20,  # fewer, bigger produce requests; a batch is one record per partition anyway
            max_batch_size=1024 * 1024,
            max_request_size=2 * 1024 * 1024,
            enable_idempotence=False,  # Tansu rejects idempotent producers; the sink is idempotent
            compression_type=self._compression,  # RPM_KAFKA_COMPRESSION; off by default (costs CPU)
        )
        await self._start_producer(producer, stop)
        client = self._make_client()
        self._client = client
        try:
            client.connect_async(
                self._mqtt_settings.host, self._mqtt_settings.port, keepalive=30,
                clean_start=False, properties=self._connect_properties(),
            )
            client.loop_start()
            await self._pump(producer, client, stop)
        finally:
            self._stopping = True
            client.disconnect()
            client.loop_stop()
            await producer.stop()

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
        groups: dict[int, list[dict[str, Any]]] = {}
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
                self.stats.reasons.note("bridge", reason, item.topic)
                record = deadletter_record(
                    stage="bridge", reason=reason, source=item.topic,
                    payload=item.payload, received_at=item.received_at,
                )
                batch.deadletters.append((None, record))
                continue
            part = partition_of.get(msg.patient)
            if part is None:
                part = partition_of[msg.patient] = topics.partition_for(msg.patient, partitions)
            if sizes.get(part, 0) + len(item.payload) > MAX_RECORD_BYTES:
                batch.records.append((part, encode_readings_record(None, groups.pop(part))))
                sizes[part] = 0
            group = msg.to_group()
            group["patient"] = msg.patient
            groups.setdefault(part, []).append(group)
            sizes[part] = sizes.get(part, 0) + len(item.payload)
            batch.readings += len(msg.samples)
        batch.records += [(part, encode_readings_record(None, g)) for part, g in groups.items()]
        return batch

    async def _forward(self, producer: AIOKafkaProducer, items: list[Inbound], stop: asyncio.Event) -> bool:
        """Produce ``items``; False if told to stop before Kafka took them."""
        attempt = 0
        batch: _Batch | None = None
        while True:
            try:
                if batch is None:  # the partition count comes from Kafka's metadata (cached)
                    batch = self._build(items, len(await producer.partitions_for(topics.READINGS)))
                futures = [await producer.send(topics.READINGS, value=v, partition=p) for p, v in batch.records]
                futures += [await producer.send(topics.DEADLETTER, value=v) for _k, v in batch.deadletters]
                await asyncio.gather(*futures)
                break
            except KafkaError as exc:
                # Not acknowledged to MQTT yet, so nothing is lost; redelivering is safe downstream.
                attempt += 1
                self.stats.produce_retries += 1
                _LOGGER.warning("Kafka produce failed (attempt %d): %s; retrying", attempt, exc)
                if stop.is_set():
                    return False
                await asyncio.sleep(backoff_s(attempt))
        self.stats.messages_in += len(items)
        self.stats.records_out += len(batch.records)
        self.stats.readings_out += batch.readings
        self.stats.deadlettered += len(batch.deadletters)
        return True


def claim_client_id(prefix: str = "rpm-bridge") -> tuple[str, Any]:
    """A client id that is stable across restarts yet unique among the bridges on this host.

    A persistent MQTT session only protects the messages in flight if the restarted bridge comes
    back under the same client id, and two live bridges with one id would keep kicking each other
    off. So each bridge takes the lowest free slot ``n`` with an ``flock`` that dies with its
    process (kill -9 included) and uses ``<prefix>-<host>-<n>``.
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
        return f"{prefix}-{host}-{n}", handle
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
