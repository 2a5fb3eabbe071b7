"""Naive MQTT → Kafka bridge: one Kafka record per MQTT message, MQTT ack after the Kafka ack.

What a developer writes first with paho-mqtt (v2 API, MQTT v5) and aiokafka: paho's network loop
runs in its own thread (``loop_start``) with ``manual_ack=True``; every message is handed to the
asyncio loop, produced to Kafka as is (key: the patient id from the topic, ``acks="all"``, a few
ms of linger so aiokafka batches) and acknowledged to Mosquitto (``client.ack``) once Kafka has
acknowledged it. A persistent session (clean start off) keeps what Mosquitto queues while the
bridge is away. No validation, no coalescing: that is the worker's business here.

Run: ``python -m benchmarks.peers.naive.bridge --mqtt-url mqtt://u:p@host:port --kafka host:port
--topic naive.readings [--ready-file path]``. The ready file is written once the broker has
acknowledged the subscription (SUBACK): Mosquitto drops QoS 1 messages nobody subscribes to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rpm_core.settings import MqttSettings
from rpm_core.wire import READINGS_TOPIC_FILTER

_LOGGER = logging.getLogger("naive.bridge")

SESSION_EXPIRY_S: Final = 3600
LINGER_MS: Final = 5


class NaiveBridge:
    """paho (thread) → asyncio → aiokafka, one record per message, ack after Kafka acked."""

    def __init__(self, *, mqtt_settings: MqttSettings, kafka_bootstrap: str, topic: str,
                 ready_file: Path | None = None, client_id: str | None = None) -> None:
        self._mqtt = mqtt_settings
        self._bootstrap = kafka_bootstrap
        self._topic = topic
        self._ready_file = ready_file
        self._client_id = client_id or f"naive-bridge-{os.getpid()}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: AIOKafkaProducer | None = None
        self._client: mqtt.Client | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.forwarded = 0
        self.failed = 0

    # --- paho thread -------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            _LOGGER.error("MQTT connect refused: %s", reason)
            return
        client.subscribe(READINGS_TOPIC_FILTER, qos=1)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[Any],
                      _props: Any) -> None:
        if any(r.is_failure for r in reasons):
            _LOGGER.error("subscription refused: %s", reasons)
            return
        _LOGGER.warning("subscribed to %s", READINGS_TOPIC_FILTER)
        if self._ready_file is not None:
            self._ready_file.write_text("ready\n")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._forward, msg.topic, msg.payload, msg.mid, msg.qos)

    # --- asyncio loop ------------------------------------------------------------------------------

    def _forward(self, topic: str, payload: bytes | bytearray, mid: int, qos: int) -> None:
        task = asyncio.get_running_loop().create_task(self._send(topic, payload, mid, qos))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, topic: str, payload: bytes | bytearray, mid: int, qos: int) -> None:
        assert self._producer is not None
        assert self._client is not None
        patient = topic.split("/")[3]  # rpm/v1/p/<patient>/readings
        try:
            delivered = await self._producer.send(self._topic, bytes(payload), key=patient.encode())
            await delivered
        except Exception:
            # Not acked: Mosquitto redelivers it when the session reconnects.
            self.failed += 1
            _LOGGER.exception("Kafka send failed; MQTT message %d left unacknowledged", mid)
            return
        self._client.ack(mid, qos)
        self.forwarded += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set, then drain what is in flight."""
        self._loop = asyncio.get_running_loop()
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", linger_ms=LINGER_MS)
        await self._producer.start()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._mqtt.client_id(self._client_id),
                             protocol=mqtt.MQTTv5, manual_ack=True)
        self._client = client
        if self._mqtt.username:
            client.username_pw_set(self._mqtt.username, self._mqtt.password.get() or None)
        if self._mqtt.tls:
            context = self._mqtt.ssl_context()
            assert context is not None
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect(self._mqtt.host, self._mqtt.port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        try:
            await stop.wait()
        finally:
            client.disconnect()
            client.loop_stop()
            if self._pending:
                await asyncio.wait(list(self._pending), timeout=10)
            await self._producer.stop()
            _LOGGER.warning("bridge stopped: %d forwarded, %d failed", self.forwarded, self.failed)


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge = NaiveBridge(
        mqtt_settings=MqttSettings.from_url(args.mqtt_url), kafka_bootstrap=args.kafka, topic=args.topic,
        ready_file=Path(args.ready_file) if args.ready_file else None, client_id=args.client_id,
    )
    await bridge.run(stop)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m benchmarks.peers.naive.bridge``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mqtt-url", default=os.environ.get("NAIVE_MQTT_URL", ""), help="mqtt://user:pass@host:port")
    parser.add_argument("--kafka", default=os.environ.get("NAIVE_KAFKA", "127.0.0.1:9092"),
                        help="bootstrap servers host:port (kafka://host:port accepted)")
    parser.add_argument("--topic", default=os.environ.get("NAIVE_TOPIC", "naive.readings"))
    parser.add_argument("--ready-file", default=None, help="written after the subscription is acknowledged")
    parser.add_argument("--client-id", default=None)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    args.kafka = args.kafka.removeprefix("kafka://")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
