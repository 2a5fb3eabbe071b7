"""MQTT v5 packets, encoded and split by hand: one implementation for the bridge's packet tests
(``tests/stream/test_bridge_packets.py``: what a broker sends a subscriber),
``benchmarks/bridge_cost.py`` and the load generator's publisher (``benchmarks/loadgen.py``)."""

from __future__ import annotations

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"  # normal disconnection, no reason code, no properties
PUBACK = 0x40
CONNACK = 0x20
PINGRESP = 0xD0
SERVER_DISCONNECT = 0xE0


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (the remaining length, a property length)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 1, flags: int = 0,
            properties: bytes = b"") -> bytes:
    """A PUBLISH packet (MQTT v5); ``flags``: DUP (0x08) and RETAIN (0x01) bits."""
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += varint(len(properties)) + properties + payload
    return bytes([0x30 | qos << 1 | flags]) + varint(len(body)) + body


def _str16(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def connect(client_id: str, *, username: str | None = None, password: str | None = None, keepalive: int = 60,
            clean_start: bool = True) -> bytes:
    """A CONNECT packet (MQTT v5, no will, no properties)."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0) | (0x02 if clean_start else 0)
    body = _str16(b"MQTT") + bytes([5, flags]) + keepalive.to_bytes(2, "big") + varint(0) + _str16(client_id.encode())
    if username is not None:
        body += _str16(username.encode())
    if password is not None:
        body += _str16(password.encode())
    return b"\x10" + varint(len(body)) + body


def split(buf: bytes | bytearray, start: int = 0) -> tuple[list[tuple[int, bytes]], int]:
    """The whole packets in ``buf`` from ``start``: ``([(first byte, body), …], end of the last one)``;
    a packet cut off at the end of ``buf`` is left for the next call."""
    out: list[tuple[int, bytes]] = []
    pos, end = start, len(buf)
    while end - pos >= 2:
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= end:
                return out, pos
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if byte < 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("malformed remaining length")
        if i + length > end:
            break
        out.append((buf[pos], bytes(buf[i:i + length])))
        pos = i + length
    return out, pos
