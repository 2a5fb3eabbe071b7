"""A test-only proxy that gives InfluxDB 1.6 the v2 write endpoint.

It maps ``POST /api/v2/write?bucket=db/rp&precision=…`` onto ``POST /write?db=db&rp=rp&precision=…``,
exactly the mapping InfluxDB 1.8 does itself, and passes the status and body back. With it the
sink's v2 path (influxdb-client's async write API) runs against the same real server as the v1
path. Only the write endpoint exists here; anything else answers 404.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web


class V2Proxy:
    """``async with V2Proxy(influx_url) as url:`` — ``url`` speaks ``/api/v2/write``."""

    def __init__(self, influx_url: str) -> None:
        self._influx = influx_url.rstrip("/")
        self._runner: web.AppRunner | None = None
        self.requests = 0

    async def _write(self, request: web.Request) -> web.Response:
        self.requests += 1
        bucket = request.query.get("bucket", "")
        db, _, rp = bucket.partition("/")
        params = {"db": db, "precision": request.query.get("precision", "ns")}
        if rp:
            params["rp"] = rp
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        async with aiohttp.ClientSession() as session, session.post(
            f"{self._influx}/write", params=params, data=body
        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type or "application/json")

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
