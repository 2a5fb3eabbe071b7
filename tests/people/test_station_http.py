"""The nurse station's HTTP side against real Kafka (Tansu): login, CSRF, SSE catch-up, acknowledgements.

The station runs in-process here (the same app ``rpm nurse-station`` serves); the alert events are
the detectors' own ``AlertEvent`` dicts produced to ``rpm.alerts``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from rpm_core.roster import Roster, default_roster, hash_password
from rpm_core.services import Stack
from stream.acks import decode_ack
from stream.nurse_station import AckSender, AlertBoard, AlertFeed, Sparklines, StationState, create_app
from stream.topics import ensure_topics
from tests.people.support import event, produce_events, read_topic, until

pytestmark = pytest.mark.services

PASSWORD = "night-shift-7"


@pytest.fixture(scope="module")
def roster() -> Roster:
    return default_roster({"desk-1": hash_password(PASSWORD)})


@contextlib.asynccontextmanager
async def station(stack: Stack, roster: Roster) -> AsyncIterator[tuple[str, AlertBoard]]:
    """Run a station in this event loop; yields its base URL and board."""
    bootstrap = stack.settings.kafka_bootstrap()
    board = AlertBoard(ward="all", roster=roster)
    sender = AckSender(bootstrap=bootstrap)
    await sender.start()
    sparks = Sparklines(url=stack.settings.influx_url, db=stack.settings.influx_db)
    state = StationState(board=board, roster=roster, sender=sender, sparklines=sparks, ward_name="All patients")
    runner = web.AppRunner(create_app(state), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    feed = asyncio.create_task(AlertFeed(board, bootstrap=bootstrap).run())
    try:
        await until(lambda: board.caught_up)
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", board
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        await runner.cleanup()
        await sender.stop()
        await sparks.close()


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=30))


async def login(http: aiohttp.ClientSession, url: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
    async with http.post(f"{url}/login", data={"station": "desk-1", "password": password},
                         allow_redirects=False, headers={"Origin": url}) as resp:
        await resp.read()
        return resp


async def sse_events(resp: aiohttp.ClientResponse, want: int) -> list[tuple[str | None, str, Any]]:
    """Read ``want`` SSE events (id, event, data) from an open response."""
    out: list[tuple[str | None, str, Any]] = []
    eid, name, data = None, "message", ""
    async with asyncio.timeout(20):
        while len(out) < want:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                out.append((eid, name, orjson.loads(data)))
                eid, name, data = None, "message", ""
    return out


async def test_login_is_required_refuses_wrong_passwords_and_sets_a_strict_cookie(stack: Stack, roster: Roster
                                                                                   ) -> None:
    await ensure_topics(stack.settings.kafka_bootstrap(), partitions=2)
    async with station(stack, roster) as (url, _board), client() as http:
        async with http.get(f"{url}/", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/login"
        async with http.get(f"{url}/api/alerts") as resp:
            assert resp.status == 401
        wrong = await login(http, url, "guess")
        assert wrong.status == 401 and "rpm_station" not in wrong.cookies
        async with http.post(f"{url}/login", data={"station": "desk-1", "password": PASSWORD},
                             headers={"Origin": "http://evil.example"}, allow_redirects=False) as resp:
            assert resp.status == 403, "login CSRF: a cross-site form post is refused"
        ok = await login(http, url)
        assert ok.status == 303
        cookie = ok.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with http.get(f"{url}/") as resp:
            page = await resp.text()
            assert resp.status == 200 and "/static/app.js" in page
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
        async with http.post(f"{url}/api/ack", json={"alert_id": "x", "by": "Ana"}) as resp:
            assert resp.status == 403, "no CSRF token, no acknowledgement"
        async with http.get(f"{url}/static/style.css") as resp:
            assert resp.status == 200


async def test_too_many_wrong_passwords_lock_the_address_out(stack: Stack, roster: Roster) -> None:
    await ensure_topics(stack.settings.kafka_bootstrap(), partitions=2)
    async with station(stack, roster) as (url, _board), client() as http:
        for _ in range(5):
            assert (await login(http, url, "guess")).status == 401
        assert (await login(http, url)).status == 429, "locked even with the right password"


async def test_sse_snapshot_live_events_and_catch_up_after_a_drop(stack: Stack, roster: Roster) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    await ensure_topics(bootstrap, partitions=2)
    before = [event("p0001"), event("p0002", "glucose_low", severity="critical", metric="glucose", value=48.0)]
    await produce_events(bootstrap, before)
    async with station(stack, roster) as (url, board), client() as http:
        await login(http, url)
        async with http.get(f"{url}/api/events") as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            [(snap_id, name, snap)] = await sse_events(resp, 1)
            assert name == "snapshot" and snap["caught_up"]
            assert [a["patient"] for a in snap["active"]] == ["p0002", "p0001"], "critical first"
            await produce_events(bootstrap, [event("p0003")])
            [(live_id, name, live)] = await sse_events(resp, 1)
            assert name == "alert" and live["patient"] == "p0003" and live_id != snap_id
        # The page is gone (network drop); meanwhile one alert clears and another is raised.
        await produce_events(bootstrap, [event("p0001", state="cleared", time=before[0]["time"] + 900, value=100.0),
                                         event("p0004")])
        await until(lambda: board.seq >= 5)
        async with http.get(f"{url}/api/events", headers={"Last-Event-ID": live_id}) as resp:
            caught_up = await sse_events(resp, 2)
        assert [(n, d["patient"], d["state"]) for _i, n, d in caught_up] == [
            ("alert", "p0001", "cleared"), ("alert", "p0004", "raised")], "exactly what was missed, in order"


async def test_acknowledge_produces_the_ack_record_and_survives_a_station_restart(stack: Stack, roster: Roster
                                                                                  ) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    await ensure_topics(bootstrap, partitions=2)
    raised = event("p0007", "bradycardia", value=44.0)
    await produce_events(bootstrap, [raised])
    async with station(stack, roster) as (url, board), client() as http:
        await login(http, url)
        async with http.get(f"{url}/api/session") as resp:
            csrf = (await resp.json())["csrf"]
        headers = {"X-CSRF-Token": csrf}
        async with http.post(f"{url}/api/ack", json={"alert_id": raised["alert_id"], "by": ""},
                             headers=headers) as resp:
            assert resp.status == 400 and "name" in (await resp.json())["error"]
        async with http.post(f"{url}/api/ack", json={"alert_id": "nope", "by": "Ana"}, headers=headers) as resp:
            assert resp.status == 404
        async with http.post(f"{url}/api/ack", json={"alert_id": raised["alert_id"], "by": " Ana Lima "},
                             headers=headers) as resp:
            assert resp.status == 202
        [(key, value)] = await read_topic(bootstrap, "rpm.alert-acks")
        ack = decode_ack(value, key=key)
        assert (key, ack.alert_id, ack.patient, ack.by, ack.station) == (
            b"p0007", raised["alert_id"], "p0007", "Ana Lima", "desk-1")
        view = board.alerts[raised["alert_id"]]
        assert not view.active and view.ack_by == "Ana Lima"
    # A new run of the station rebuilds the same state from the topics alone.
    async with station(stack, roster) as (url, board), client() as http:
        await login(http, url)
        async with http.get(f"{url}/api/alerts") as resp:
            snap = await resp.json()
        assert snap["active"] == []
        [row] = snap["history"]
        assert row["state"] == "acknowledged" and row["ack"]["by"] == "Ana Lima"
