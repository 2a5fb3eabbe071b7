"""MLLP (HL7 v2 Minimal Lower Layer Protocol, HL7 2.6 Appendix C): ``<VT> message <FS><CR>`` over TCP.

:class:`FrameReader` is the framing as a pure state machine (bytes in, whole messages out, junk
and oversize frames refused); :class:`MllpConnection` is one asyncio TCP connection that sends a
message and reads one answer frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

from hl7out.errors import MllpError

START: Final = b"\x0b"
END: Final = b"\x1c\x0d"
# An ACK is a few hundred bytes; a peer that sends a megabyte without ending its frame is broken.
MAX_FRAME_BYTES: Final = 1 << 20
READ_CHUNK_BYTES: Final = 65536
# A kept connection silent this long is probed by TCP keepalive, every KEEPALIVE_INTERVAL_S after.
KEEPALIVE_IDLE_S: Final = 20
KEEPALIVE_INTERVAL_S: Final = 10


def frame(text: str) -> bytes:
    """One MLLP frame of an ER7 message (UTF-8)."""
    body = text.encode("utf-8")
    if START in body or END[:1] in body:
        raise MllpError("a message may not contain the MLLP framing characters 0x0B or 0x1C")
    return START + body + END


class FrameReader:
    """Whole frames out of a byte stream; :class:`MllpError` on bytes outside a frame or an oversize frame."""

    def __init__(self, *, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[str]:
        """Add received bytes; return the messages completed by them."""
        self._buf += data
        out: list[str] = []
        while self._buf:
            if self._buf[:1] != START:
                raise MllpError(f"bytes outside an MLLP frame (starts with {bytes(self._buf[:1])!r}, not 0x0B)")
            end = self._buf.find(END)
            if end < 0:
                body = len(self._buf) - len(START) - (1 if self._buf.endswith(END[:1]) else 0)
                if body > self._max:
                    raise MllpError(f"an MLLP frame longer than {self._max} bytes")
                break
            try:
                out.append(self._buf[1:end].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise MllpError("an MLLP frame that is not UTF-8") from exc
            del self._buf[:end + len(END)]
        return out


def _keep_alive(sock: socket.socket | None) -> None:
    """TCP keepalive on a kept connection: a receiver whose host went away without closing it (power,
    network) is noticed in about :data:`KEEPALIVE_IDLE_S` + 3 x :data:`KEEPALIVE_INTERVAL_S`, not the
    kernel's default two hours (where the platform has these options)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                            ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class MllpConnection:
    """One TCP connection to an MLLP listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._frames = FrameReader()
        self._pending: list[str] = []

    @classmethod
    async def open(cls, host: str, port: int) -> MllpConnection:
        """Connect; :class:`MllpError` if the listener cannot be reached."""
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise MllpError(f"cannot connect to {host}:{port}: {exc}") from exc
        _keep_alive(writer.get_extra_info("socket"))
        return cls(reader, writer)

    async def exchange(self, text: str) -> str:
        """Send one message and return the next frame the peer sends (its ACK)."""
        try:
            self._writer.write(frame(text))
            await self._writer.drain()
            while not self._pending:
                data = await self._reader.read(READ_CHUNK_BYTES)
                if not data:
                    raise MllpError("the listener closed the connection before it answered")
                self._pending += self._frames.feed(data)
        except OSError as exc:
            raise MllpError(f"connection lost: {exc}") from exc
        return self._pending.pop(0)

    @property
    def closed(self) -> bool:
        """Whether the peer or we closed the connection."""
        return self._writer.is_closing() or self._reader.at_eof()

    async def close(self) -> None:
        """Close (errors on the way out do not matter)."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
