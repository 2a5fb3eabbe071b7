"""A test-only TLS-terminating reverse proxy, as nginx in front of the nurse station would be.

It accepts HTTPS, forwards each request over HTTP to the upstream with the original ``Host`` and
``X-Forwarded-Proto: https``, ``X-Forwarded-For: <client>`` (appended to what the client sent, as
nginx's ``$proxy_add_x_forwarded_for`` does), and streams the answer back unbuffered (SSE). It runs
in a thread of its own with its own event loop, so a synchronous (Playwright) test can use it.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from types import TracebackType

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te",
                         "content-length", "host"})


class TlsProxy:
    """``with TlsProxy(upstream, cert, key) as url:`` — ``url`` is ``https://127.0.0.1:<port>``."""

    def __init__(self, upstream: str, cert: Path, key: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.load_cert_chain(str(cert), str(key))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="tls-proxy")
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None
        self.url = ""

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self.http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Host"] = request.host
        headers["X-Forwarded-Proto"] = "https"
        before = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{before}, {request.remote}" if before else str(request.remote)
        async with self.http.request(request.method, self.upstream + request.rel_url.path_qs, headers=headers,
                                     data=await request.read(), allow_redirects=False) as up:
            # a multidict: two Set-Cookie headers must stay two
            resp = web.StreamResponse(status=up.status, headers=CIMultiDict(
                (k, v) for k, v in up.headers.items() if k.lower() not in HOP_HEADERS))
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def _start(self) -> str:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl).start()
        return f"https://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()
        for _ in range(3):  # closed transports finish closing in callbacks of this loop: let them run
            await asyncio.sleep(0)

    def __enter__(self) -> str:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self.url

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
