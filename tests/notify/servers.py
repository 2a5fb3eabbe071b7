"""Test servers of the notifier tests: a webhook receiver that verifies signatures with its own HMAC code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

WEBHOOK_SECRET = "test-webhook-secret-0123456789"


# --- webhook -----------------------------------------------------------------------------------------


@dataclass
class Hook:
    """One verified request."""

    path: str
    doc: dict[str, Any]
    delivery: str
    received: float


class WebhookReceiver:
    """``async with WebhookReceiver() as hooks:`` — an aiohttp server that verifies signatures itself.

    ``fail[path] = n`` answers 503 to the next ``n`` requests on ``path``. Unsigned, badly signed or
    stale requests are answered 401 and counted in ``rejected``.
    """

    def __init__(self, secret: str = WEBHOOK_SECRET) -> None:
        self._secret = secret.encode()
        self._runner: web.AppRunner | None = None
        self.hooks: list[Hook] = []
        self.rejected = 0
        self.fail: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.url = ""

    def _verified(self, request: web.Request, body: bytes) -> bool:
        # Independent of notify.channels.webhook: HMAC-SHA256 over "<timestamp>." + body.
        timestamp = request.headers.get("X-RPM-Timestamp", "")
        signature = request.headers.get("X-RPM-Signature", "")
        expected = "sha256=" + hmac.new(self._secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
        return fresh and hmac.compare_digest(expected, signature)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts[request.path] = self.attempts.get(request.path, 0) + 1
        if not self._verified(request, body):
            self.rejected += 1
            return web.Response(status=401)
        if self.fail.get(request.path, 0) > 0:
            self.fail[request.path] -= 1
            return web.Response(status=503)
        self.hooks.append(Hook(request.path, orjson.loads(body), request.headers["X-RPM-Delivery"], time.time()))
        return web.Response(status=204)

    def on(self, path: str) -> list[Hook]:
        """The verified requests on ``path``."""
        return [h for h in self.hooks if h.path == path]

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def wait_for(predicate: Any, *, within: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate()`` in the event loop until true; fail naming ``what`` (a deadline, not a speed test)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
