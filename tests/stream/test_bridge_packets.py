"""The bridge's own reading of PUBLISH packets gives what paho's gives, and leaves paho every
packet it does not handle (issue 20, goal 4).

Each stream of MQTT packets is read twice by the bridge's paho client from an in-memory socket:
with the bridge's fast path (``_BufferedSocket.take_publish``) and without it (every packet through
paho's ``_packet_read`` and ``on_message``). Both must hand the bridge the same messages, in the
same order, and end the same way (paho's error code on a malformed packet).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTErrorCode

from benchmarks.mqtt_packets import publish, varint
from rpm_core.settings import MqttSettings
from stream.bridge import Bridge, _BufferedSocket

NOW = 1_780_000_000.0


PINGRESP = b"\xd0\x00"
# payload format indicator (0x01) = 1 and a user property (0x26): paho decodes them, the fast path leaves them
PROPERTIES = b"\x01\x01" + b"\x26" + b"\x00\x01k" + b"\x00\x01v"


class MemorySocket:
    """Non-blocking: hands out ``data`` in the given chunk sizes, then raises BlockingIOError."""

    def __init__(self, data: bytes, chunks: list[int]) -> None:
        self.data = data
        self.pos = 0
        self.chunks = chunks

    def recv(self, bufsize: int) -> bytes:
        if self.pos >= len(self.data):
            raise BlockingIOError
        size = self.chunks.pop(0) if self.chunks else 65536
        out = self.data[self.pos : self.pos + min(bufsize, size)]
        self.pos += len(out)
        return out

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


def read_all(stream: bytes, chunks: list[int], *, fast: bool) -> tuple[list[tuple[Any, ...]], list[int], int]:
    """What the bridge receives from ``stream`` (mid, qos, topic, payload), loop_read's codes, and how
    many packets the fast path read."""
    bridge = Bridge(mqtt_settings=MqttSettings(host="localhost", port=1883), bootstrap="unused",
                    client_id="test", clock=lambda: NOW)
    client = bridge._make_client()
    taken = [0]
    if fast:
        received = client.on_publish_packet
        assert received is not None

        def counted(*packet: Any) -> None:
            taken[0] += 1
            received(*packet)

        client.on_publish_packet = counted
    else:
        client.on_publish_packet = None
    got: list[tuple[Any, ...]] = []

    def burst_end() -> None:
        got.extend((m.mid, m.qos, m.topic, m.payload) for m in bridge._burst)
        bridge._burst = []

    client.on_burst_end = burst_end
    sock = MemorySocket(stream, list(chunks))
    client._sock = _BufferedSocket(sock)
    codes: list[int] = []
    for _ in range(len(stream) + 2):  # every loop_read consumes at least a byte, or stops
        if client._sock is None:
            break
        rc = client.loop_read()
        codes.append(int(rc))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            break
        if sock.pos >= len(stream) and not client._sock.pending():
            break
    client._sock = None
    return got, codes, taken[0]


def test_the_packets_mosquitto_sends_are_read_without_paho_and_as_paho_reads_them() -> None:
    stream = b"".join(publish(f"rpm/v1/p/p{i}/readings".encode(), b'{"v":1,"n":%d}' % i, mid=i + 1)
                      for i in range(50))
    bridge = Bridge(mqtt_settings=MqttSettings(host="localhost", port=1883), bootstrap="unused",
                    client_id="test", clock=lambda: NOW)
    buffered = _BufferedSocket(MemorySocket(stream, []))
    buffered.recv(1)  # fills the buffer
    buffered._pos = 0
    assert buffered.take_publish() == (1, 1, "rpm/v1/p/p0/readings", b'{"v":1,"n":0}')
    fast, codes, taken = read_all(stream, [], fast=True)
    slow, slow_codes, _ = read_all(stream, [], fast=False)
    assert fast == slow and len(fast) == 50 and codes == slow_codes
    assert taken == 49  # paho reads the first (its first byte fills the buffer), the bridge the rest
    assert bridge._make_client().on_publish_packet is not None  # the live bridge uses the fast path


def test_packets_the_fast_path_leaves_go_through_paho() -> None:
    topic = b"rpm/v1/p/pA/readings"
    stream = b"".join([
        publish(topic, b"qos0", qos=0),
        publish(topic, b"dup and retain", mid=7, flags=0x09),
        publish(topic, b"with properties", mid=8, properties=PROPERTIES),
        PINGRESP,
        publish(topic, b"", mid=9),  # an empty payload: the bridge dead-letters it
        publish("rpm/v1/p/é/readings".encode(), b"utf-8 topic", mid=10),
        publish(topic, b"after", mid=12),
    ])
    fast, codes, taken = read_all(stream, [], fast=True)
    slow, slow_codes, _ = read_all(stream, [], fast=False)
    assert fast == slow and taken == 4  # all but the first, the one with properties and the PINGRESP
    assert (8, 1, "rpm/v1/p/pA/readings", b"with properties") in fast
    assert fast[-1] == (12, 1, "rpm/v1/p/pA/readings", b"after") and codes == slow_codes


def test_a_malformed_packet_ends_the_read_as_paho_ends_it() -> None:
    topic = b"rpm/v1/p/pA/readings"
    good = publish(topic, b"first", mid=1)
    body = (200).to_bytes(2, "big") + topic + b"\x00\x02\x00x"  # topic length beyond the packet
    bad = b"\x32" + varint(len(body)) + body
    for stream in (good + bad + good, good + b"\x32\xff\xff\xff\xff\x01" + good):  # 5-byte length
        fast, codes, _ = read_all(stream, [], fast=True)
        slow, slow_codes, _ = read_all(stream, [], fast=False)
        assert fast == slow and fast[0][3] == b"first"
        assert codes == slow_codes and codes[-1] != MQTTErrorCode.MQTT_ERR_SUCCESS


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=300), st.booleans(), st.integers(1, 65535)),
                      min_size=1, max_size=25),
    chunks=st.lists(st.integers(1, 700), max_size=60),
)
def test_packets_split_anywhere_across_reads_arrive_whole_and_in_order(
        messages: list[tuple[int, bytes, bool, int]], chunks: list[int]) -> None:
    stream = b"".join(publish(f"rpm/v1/p/p{i}/readings".encode(), payload, qos=qos, mid=mid,
                              properties=PROPERTIES if props else b"")
                      for i, (qos, payload, props, mid) in enumerate(messages))
    fast, codes, _ = read_all(stream, chunks, fast=True)
    slow, _, _ = read_all(stream, chunks, fast=False)
    assert fast == slow
    assert [m[3] for m in fast] == [payload for _q, payload, _p, _m in messages]
    assert codes[-1] == MQTTErrorCode.MQTT_ERR_SUCCESS


def test_a_topic_that_is_not_utf8_reaches_the_bridge_and_the_messages_after_it_too() -> None:
    """paho hands such a topic to on_message, where ``msg.topic`` raises: raised in the callback, the
    exception would end paho's network thread (nothing read after it, health still green). The
    bridge gets it with the bad bytes replaced (its topic check dead-letters it) and reads on."""
    topic = b"rpm/v1/p/pA/readings"
    stream = publish(b"rpm/v1/p/\xff\xfe/readings", b"bad topic", mid=3) + publish(topic, b"after", mid=4)
    for fast in (True, False):
        got, codes, _ = read_all(stream, [], fast=fast)
        assert got == [(3, 1, "rpm/v1/p/\ufffd\ufffd/readings", b"bad topic"), (4, 1, topic.decode(), b"after")]
        assert all(code == MQTTErrorCode.MQTT_ERR_SUCCESS for code in codes)


class SendingSocket(MemorySocket):
    """Records what is sent, and how many system calls it took."""

    def __init__(self) -> None:
        super().__init__(b"", [])
        self.sent = bytearray()
        self.calls = 0

    def send(self, buf: bytes | bytearray) -> int:
        self.calls += 1
        self.sent += buf
        return len(buf)


def _written(acks: list[tuple[int, int]], *, many: bool) -> SendingSocket:
    """The bytes the bridge's client writes acknowledging ``acks``: with ``ack_many``, or one paho ``ack`` each."""
    bridge = Bridge(mqtt_settings=MqttSettings(host="localhost", port=1883), bootstrap="unused",
                    client_id="test", clock=lambda: NOW)
    client = bridge._make_client()
    sock = SendingSocket()
    client._sock = sock
    if many:
        client.ack_many(acks)
    else:
        for mid, qos in acks:
            client.ack(mid, qos)
    while client._out_packet:
        assert client.loop_write() == MQTTErrorCode.MQTT_ERR_SUCCESS
    client._sock = None
    return sock


@given(st.lists(st.tuples(st.integers(1, 65535), st.sampled_from([0, 1, 1, 1, 2])), max_size=300))
@settings(max_examples=60, deadline=None)
def test_acknowledging_a_batch_writes_what_paho_writes_acking_each_message_in_the_same_order(
        acks: list[tuple[int, int]]) -> None:
    many, each = _written(acks, many=True), _written(acks, many=False)
    assert bytes(many.sent) == bytes(each.sent)
    assert len(many.sent) == 4 * sum(1 for _mid, qos in acks if qos in (1, 2))  # a PUBACK/PUBCOMP per message


def test_a_batch_of_pubacks_is_one_write_not_one_per_message() -> None:
    acks = [(mid, 1) for mid in range(1, 2001)]
    many = _written(acks, many=True)
    assert many.calls == 1 and _written(acks, many=False).calls == 2000
    assert many.sent[:4] == b"\x40\x02\x00\x01" and many.sent[-4:] == b"\x40\x02\x07\xd0"
