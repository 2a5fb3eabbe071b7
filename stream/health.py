"""A tiny HTTP endpoint for the bridge (the worker has Faust's web server): health and metrics.

``GET /healthz`` answers 200 with a JSON body when every check passes and 503 otherwise, so a
supervisor, a load balancer or ``rpm demo`` can wait for "subscribed and connected" before sending.
``GET /metrics`` serves Prometheus metrics when a ``metrics`` callable is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from stream.metrics import CONTENT_TYPE

Check = Callable[[], dict[str, Any]]
Render = Callable[[], str]


class HealthServer:
    """Serves ``/healthz`` on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, check: Check, *, metrics: Render | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._check = check
        self._metrics = metrics
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.port = port

    async def _healthz(self, _request: web.Request) -> web.Response:
        status = self._check()
        ok = all(v for k, v in status.items() if isinstance(v, bool))
        return web.Response(status=200 if ok else 503, body=orjson.dumps(status), content_type="application/json")

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        assert self._metrics is not None
        return web.Response(body=self._metrics().encode(), headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        """Start serving."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
