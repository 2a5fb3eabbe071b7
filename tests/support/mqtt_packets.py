"""MQTT v5 packets as a broker sends them to a subscriber, for the bridge's packet tests and
``benchmarks/bridge_cost.py`` (one encoder for both)."""

from __future__ import annotations


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
