"""The end-to-end benchmark's load generator against real Mosquitto (issue 20): its own MQTT
publisher offers what a paho client offered, and every reading it reports is one that arrived."""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from benchmarks import loadgen, mqtt_packets
from rpm_app.services import MqttCredentials, ServiceProcess, TlsFiles, start_mosquitto
from rpm_core.mqtt_client import mqtt_client
from rpm_core.mqtt_users import BRIDGE_USER, SIMULATOR_USER
from rpm_core.settings import MqttSettings
from rpm_core.wire import parse_readings_message, readings_topic
from tests.security.pki import TestCA, write_server_files

WAIT_S = 60.0  # a generous bound for things to arrive, not a speed requirement


class Broker:
    def __init__(self, svc: ServiceProcess, creds: MqttCredentials) -> None:
        self.svc = svc
        self.creds = creds

    def url(self, user: str) -> str:
        return self.creds.url(user, self.svc.host, self.svc.port)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto as the benchmark starts it, with a TLS listener beside (a test CA, ``localhost``)."""
    creds = MqttCredentials.generate([BRIDGE_USER, SIMULATOR_USER])
    ca = TestCA.create("rpm loadgen test CA")
    cert, key = write_server_files(ca, tmp_path / "server", dns=["localhost"])
    svc = start_mosquitto(tmp_path / "mosquitto", creds=creds,
                          tls=TlsFiles(cert, key, ca.write_ca(tmp_path / "ca.pem")))
    try:
        yield Broker(svc, creds)
    finally:
        svc.stop()


class Subscriber:
    """Every readings message Mosquitto delivers, as the bridge's user receives it (QoS 1)."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt_client(MqttSettings.from_url(broker.url(BRIDGE_USER)), "loadgen-test-sink", reconnect=False)
        self.client.on_connect = lambda c, *a: c.subscribe(readings_topic("+"), qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.svc.host, broker.svc.port)
        self.client.loop_start()
        assert subscribed.wait(WAIT_S), "no SUBACK"

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.qos))

    def wait_for(self, n: int) -> list[tuple[str, bytes, int]]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    break
            time.sleep(0.05)
        time.sleep(0.2)  # anything beyond n (which would be wrong) has time to show up
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def settle(pub: loadgen.Publisher[Any]) -> list[tuple[Any, int]]:
    done: list[tuple[Any, int]] = []
    deadline = time.monotonic() + WAIT_S
    while pub.backlog() and time.monotonic() < deadline:
        done += pub.poll(0.1)
    return done


def test_split_waits_for_whole_packets() -> None:
    stream = b"".join(mqtt_packets.publish(f"t/{i}".encode(), b"x" * (i * 40), mid=i + 1) for i in range(6))
    stream += b"\x40\x02\x00\x07" + b"\x40\x03\x00\x08\x10"  # two PUBACKs, the second with reason code 16
    whole, end = mqtt_packets.split(stream)
    assert end == len(stream)
    assert [kind for kind, _ in whole] == [0x32] * 6 + [0x40, 0x40]
    assert whole[-1][1] == b"\x00\x08\x10"
    for cut in range(len(stream)):  # any read boundary: the same packets, none twice, none cut
        first, pos = mqtt_packets.split(stream[:cut])
        rest, rest_end = mqtt_packets.split(stream, pos)
        assert first + rest == whole
        assert rest_end == len(stream)


def test_publisher_delivers_every_message_once_within_its_window(broker: Broker) -> None:
    sub = Subscriber(broker)
    pub: loadgen.Publisher[int] = loadgen.connect(broker.url(SIMULATOR_USER), "test", inflight=3)
    try:
        sent = [(readings_topic(f"p{i % 7}"), orjson.dumps({"n": i, "pad": "y" * (i * 37)})) for i in range(200)]
        for i, (topic, payload) in enumerate(sent):
            pub.publish(topic, payload, i)
        pub.flush()
        assert len(pub.inflight) == 3  # the rest wait for PUBACKs, as with paho's max_inflight_messages
        assert len(pub.queued) == 197
        done = settle(pub)
        assert sorted(done) == [(i, 0) for i in range(200)]  # each acknowledged once, with success
        got = sub.wait_for(200)
        assert got == [(topic, payload, 1) for topic, payload in sent]  # same topics, payloads, QoS 1, order
    finally:
        pub.close()
        sub.close()


def test_over_tls_too(broker: Broker, tmp_path: Path) -> None:
    """``mqtts://``: the same, through non-blocking TLS reads and writes (several records per read)."""
    sub = Subscriber(broker)
    plain = MqttSettings.from_url(broker.url(SIMULATOR_USER))
    tls = MqttSettings.from_url(f"mqtts://localhost:{broker.svc.tls_port}", ca_file=str(tmp_path / "ca.pem"))
    pub: loadgen.Publisher[int] = loadgen.Publisher(tls.with_user(SIMULATOR_USER, plain.password.get()), "tls",
                                                    inflight=1000)
    pub.connect()
    try:
        sent = [(readings_topic(f"p{i % 5}"), orjson.dumps({"n": i, "pad": "z" * 900})) for i in range(600)]
        for i, (topic, payload) in enumerate(sent):
            pub.publish(topic, payload, i)
        pub.flush()
        assert sorted(settle(pub)) == [(i, 0) for i in range(600)]
        assert sub.wait_for(600) == [(topic, payload, 1) for topic, payload in sent]
    finally:
        pub.close()
        sub.close()
    rogue = TestCA.create("rpm loadgen test CA").write_ca(tmp_path / "rogue.pem")
    other = MqttSettings.from_url(f"mqtts://localhost:{broker.svc.tls_port}", ca_file=str(rogue))
    with pytest.raises(ssl.SSLCertVerificationError):  # the certificate is checked: it is TLS
        loadgen.Publisher(other.with_user(SIMULATOR_USER, plain.password.get()), "rogue", inflight=1).connect()


def test_without_a_subscriber_mosquitto_answers_16(broker: Broker) -> None:
    pub: loadgen.Publisher[str] = loadgen.connect(broker.url(SIMULATOR_USER), "test16")
    try:
        pub.publish(readings_topic("p1"), b"{}", "only")
        pub.flush()
        assert settle(pub) == [("only", loadgen.RC_NO_MATCHING_SUBSCRIBERS)]
    finally:
        pub.close()


def test_a_wrong_password_is_refused(broker: Broker) -> None:
    url = broker.url(SIMULATOR_USER)
    bad = url.replace(url.split("://", 1)[1].split("@", 1)[0], f"{SIMULATOR_USER}:wrong")
    with pytest.raises(ConnectionError, match="refused"):
        loadgen.connect(bad, "test-bad")


def test_every_reading_counted_is_one_that_arrived(broker: Broker) -> None:
    sub = Subscriber(broker)
    try:
        # two samples per message: a probe sends every ~0.9 s, so 2 s bring each probe a crossing
        spec = loadgen.LoadSpec(mqtt_url=broker.url(SIMULATOR_USER), rate=4_000, duration_s=2.0, prefix="t",
                                probe_every=10, processes=2, samples_per_message=2)
        res = loadgen.run_load(spec)
        assert res.errors == []
        got = sub.wait_for(res.messages)
        assert len(got) == res.messages
        arrived: Counter[str] = Counter()
        crossings = 0
        for topic, payload, qos in got:
            assert qos == 1
            msg = parse_readings_message(payload, topic=topic, now=time.time() + 1)
            arrived.update(msg.metric)
            crossings += msg.value[-1] == loadgen.PROBE_HR and msg.metric[-1] == "heart_rate"
        assert res.published == res.acked_total == sum(arrived.values())
        assert {m: n for m, n in res.acked.items() if n} == dict(arrived)
        assert res.rejected_messages == res.failed_messages == 0
        assert res.crossings == crossings > 0
        assert res.processes == 2
    finally:
        sub.close()
