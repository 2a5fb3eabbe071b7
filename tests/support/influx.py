"""InfluxQL helpers for assertions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rpm_app.services import influx_query


def series(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """The series of one InfluxQL query (fails on a query error)."""
    doc = influx_query(url, q, db=db)
    results: list[dict[str, Any]] = doc["results"]  # type: ignore[assignment]
    assert "error" not in results[0], results[0]
    out: list[dict[str, Any]] = results[0].get("series", [])
    return out


def rows(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """Every row of every series of a query, as dicts (tags merged in)."""
    out = []
    for s in series(url, db, q):
        for values in s["values"]:
            out.append({**s.get("tags", {}), **dict(zip(s["columns"], values, strict=True))})
    return out


def count_by(url: str, db: str, measurement: str, field: str, tag: str, where: str = "") -> dict[str, int]:
    """``count(field)`` grouped by ``tag``."""
    cond = f" WHERE {where}" if where else ""
    q = f'SELECT count("{field}") FROM "{measurement}"{cond} GROUP BY "{tag}"'
    return {s["tags"][tag]: int(s["values"][0][1]) for s in series(url, db, q)}


@dataclass
class FakeInflux:
    """An HTTP server answering ``/query`` with the next of ``pending`` (each as 200 JSON)."""

    url: str = ""
    pending: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fake_influx(answers: list[bytes]) -> AsyncIterator[FakeInflux]:
    """A :class:`FakeInflux` serving ``answers`` in turn, for malformed-answer tests."""
    fake = FakeInflux(pending=list(answers))

    async def query(_request: web.Request) -> web.Response:
        return web.Response(body=fake.pending.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_get("/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()
