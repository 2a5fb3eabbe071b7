"""The nurse station's HTTP side against real Kafka (Tansu): login, CSRF, SSE catch-up, acknowledgements.

The station runs in-process here (the same app ``rpm nurse-station`` serves); the alert events are
the detectors' own ``AlertEvent`` dicts produced to ``rpm.alerts``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from rpm_app.services import Stack
from rpm_core.acks import decode_ack
from rpm_core.audit import AuditTrail, decode_entry, read_log
from rpm_core.roster import Roster, default_roster, hash_password
from rpm_core.topics import ensure_topics
from station.kiosk import KioskRegistry
from station.nurse_station import (
    AckSender,
    AlertBoard,
    AlertFeed,
    Sparklines,
    StationState,
    create_app,
    parse_trusted_proxies,
)
from tests.people.support import event, produce, produce_events, read_topic, until
from tests.support.influx import fake_influx

pytestmark = pytest.mark.services

PASSWORD = "night-shift-7"


@pytest.fixture(scope="module")
def roster() -> Roster:
    return default_roster({"desk-1": hash_password(PASSWORD)})


@contextlib.asynccontextmanager
async def station(stack: Stack, roster: Roster, *, influx_url: str | None = None, kiosks: KioskRegistry | None = None,
                  trusted: tuple[str, ...] = (), ward: str = "all", trail: AuditTrail | None = None,
                  states: list[StationState] | None = None) -> AsyncIterator[tuple[str, AlertBoard]]:
    """Run a station in this event loop (with ``trail``: writing rpm.audit); yields its base URL and
    board (and appends its state to ``states``)."""
    bootstrap = stack.settings.kafka_bootstrap()
    board = AlertBoard(ward=ward, roster=roster)
    sender = AckSender(bootstrap=bootstrap)
    await sender.start()
    sparks = Sparklines(url=influx_url or stack.settings.influx_url, db=stack.settings.influx_db)
    state = StationState(board=board, roster=roster, sender=sender, sparklines=sparks, ward_name="All patients",
                         kiosks=kiosks, trusted_proxies=parse_trusted_proxies(trusted), trail=trail)
    if states is not None:
        states.append(state)
    if trail is not None:
        await trail.start()
        trail_writer = asyncio.create_task(trail.run())
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
        if trail is not None:
            assert await trail.drain(within_s=30)
            trail_writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trail_writer
            await trail.stop()
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
                if name != "ping":  # the heartbeat
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
        assert view.open and not view.alarming and view.ack_by == "Ana Lima", "acknowledged stays on the list"
    # A new run of the station rebuilds the same state from the topics alone.
    async with station(stack, roster) as (url, board), client() as http:
        await login(http, url)
        async with http.get(f"{url}/api/alerts") as resp:
            snap = await resp.json()
        assert snap["history"] == []
        [row] = snap["active"]
        assert row["state"] == "acknowledged" and row["ack"]["by"] == "Ana Lima" and not row["alarming"]


# --- hostile input: always a 4xx (or a fresh snapshot), never a 5xx, and the station keeps serving ------

# Each field of a request replaced by each kind of JSON value (as in tests/security/test_fuzz_inputs.py).
HOSTILE_JSON = ["null", "true", "0", "-1.5", "18446744073709551615", "1180591620717411303424", "1e400", "NaN",
                '""', '"x"', "[]", '["x"]', "{}", '{"a": []}', "[[[]]]"]


async def raw_http(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` (bytes as written, so headers may hold any byte) and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


def cookie_header(http: aiohttp.ClientSession) -> bytes:
    return b"; ".join(f"{c.key}={c.value}".encode() for c in http.cookie_jar)


async def test_hostile_requests_get_a_4xx_and_the_station_keeps_serving(stack: Stack, roster: Roster) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    await ensure_topics(bootstrap, partitions=2)
    raised = event("p0008", "tachycardia")
    await produce_events(bootstrap, [raised])
    async with station(stack, roster) as (url, board), client() as http:
        await login(http, url)
        async with http.get(f"{url}/api/session") as resp:
            csrf = (await resp.json())["csrf"]
        cookie = cookie_header(http)
        # A CSRF token header that is not UTF-8 arrives surrogate-escaped; encode() raised (500)
        for path in (b"/api/ack", b"/logout"):
            status, _ = await raw_http(url, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nCookie: " + cookie
                                       + b"\r\nX-CSRF-Token: \xff\xfe" + csrf.encode()
                                       + b"\r\nContent-Type: application/json\r\nContent-Length: 2"
                                       + b"\r\nConnection: close\r\n\r\n{}")
            assert status == 403, path
        # Form bodies that are not UTF-8, or not multipart at all (a UnicodeDecodeError was a 500)
        for content_type, body in [("application/x-www-form-urlencoded", b"station=desk-1&password=\xff"),
                                   ("application/x-www-form-urlencoded", b"station=\xc3&csrf=" + csrf.encode()),
                                   ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; "
                                    b'name="password"\r\n\r\n\xff\xfe\r\n--b--\r\n'),
                                   ("multipart/form-data; boundary=b", b"garbage"),
                                   ("multipart/form-data", b"--\r\n\r\n")]:
            async with http.post(f"{url}/login", data=body, headers={"Content-Type": content_type, "Origin": url},
                                 allow_redirects=False) as resp:
                assert 400 <= resp.status < 500, (content_type, body, resp.status)
        # Acknowledgements with each field of the body replaced by each kind of JSON value
        headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
        alert_id, by = orjson.dumps(raised["alert_id"]).decode(), '"Ana"'
        bodies = [*HOSTILE_JSON, *(f'{{"alert_id": {v}, "by": {by}}}' for v in HOSTILE_JSON),
                  *(f'{{"alert_id": {alert_id}, "by": {v}}}' for v in HOSTILE_JSON if v != '"x"'),
                  f'{{"by": {by}}}', f'{{"alert_id": {alert_id}}}', "{" * 5000, "\ud800"]
        for body in bodies:
            async with http.post(f"{url}/api/ack", data=body.encode(errors="surrogatepass"), headers=headers) as resp:
                assert resp.status in (400, 404), (body[:60], resp.status, await resp.text())
        assert board.alerts[raised["alert_id"]].alarming, "no hostile body acknowledged the alert"
        # Silences and notes likewise: each field of each kind, minutes at and past the floor
        minutes = [v for v in HOSTILE_JSON if v != "0"]  # 0 is valid: it ends a silence
        for body in [*HOSTILE_JSON, *(f'{{"alert_id": {alert_id}, "by": {by}, "minutes": {v}}}' for v in minutes),
                     *(f'{{"alert_id": {alert_id}, "by": {v}, "minutes": 5}}' for v in HOSTILE_JSON if v != '"x"'),
                     f'{{"alert_id": {alert_id}, "by": {by}, "minutes": 30.000001}}',
                     f'{{"alert_id": {alert_id}, "by": "{"x" * 65}", "minutes": 5}}']:
            async with http.post(f"{url}/api/silence", data=body.encode(errors="surrogatepass"),
                                 headers=headers) as resp:
                assert resp.status in (400, 404, 409), (body[:60], resp.status, await resp.text())
        assert board.alerts[raised["alert_id"]].silenced_until is None, "no hostile body silenced the alert"
        big = ("null", "18446744073709551615", "1180591620717411303424")  # null: no timer; big: refused below
        for recheck in [*(v for v in HOSTILE_JSON if v not in big), "241", "0", "-5", "1e400", big[1]]:
            body = f'{{"alert_id": {alert_id}, "by": {by}, "recheck_min": {recheck}}}'
            async with http.post(f"{url}/api/ack", data=body, headers=headers) as resp:
                assert resp.status == 400, (recheck, resp.status)
        for note in [*HOSTILE_JSON[:5], '"' + "n" * 201 + '"', '"line\nbreak"', '"\u0000"']:
            async with http.post(f"{url}/api/ack", data=f'{{"alert_id": {alert_id}, "by": {by}, "note": {note}}}',
                                 headers=headers) as resp:
                assert resp.status == 400, (note[:30], resp.status)
        # SSE resume ids that are not ids of this run: a fresh snapshot (int() once raised and cut the stream)
        for last in (f"{board.boot}-\u00b2", f"{board.boot}-{'9' * 5000}", f"{board.boot}-\u0661", f"{board.boot}-",
                     f"{board.boot}-1-1", "-", "x" * 4000):
            for how in ({"headers": {"Last-Event-ID": last}}, {"params": {"last": last}}):
                async with http.get(f"{url}/api/events", **how) as resp:  # type: ignore[arg-type]
                    assert resp.status == 200
                    [(_id, name, snap)] = await sse_events(resp, 1)
                    assert name == "snapshot" and snap["active"], last[:20]
        # Still serving: the real acknowledgement goes through
        async with http.post(f"{url}/api/ack", json={"alert_id": raised["alert_id"], "by": "Ana"},
                             headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 202


async def test_malformed_alert_records_do_not_stop_the_alert_feed(stack: Stack, roster: Roster) -> None:
    """A list as severity once raised TypeError in the feed task: the board stopped changing."""
    bootstrap = stack.settings.kafka_bootstrap()
    await ensure_topics(bootstrap, partitions=2)
    good = event("p0009", "bradycardia", value=41.0)
    hostile = [{**good, "severity": []}, {**good, "state": {}}, {**good, "metric": ["heart_rate"]},
               {**good, "by": []}, {**good, "severity": {"warning": 1}, "state": ["raised"]}]
    async with station(stack, roster) as (url, board), client() as http:
        await produce(bootstrap, "rpm.alerts", [(b"p0009", orjson.dumps(d)) for d in hostile]
                      + [(b"p0009", b"not json"), (b"p0009", b"[]")])
        await produce(bootstrap, "rpm.alert-acks", [(b"p0009", orjson.dumps({"v": 1, "alert_id": good["alert_id"],
                                                                             "patient": "p0009", "by": [],
                                                                             "at": 1764100000.0, "station": []}))])
        await produce_events(bootstrap, [good])
        await until(lambda: good["alert_id"] in board.alerts)
        assert board.rejected == len(hostile) + 2
        assert board.alerts[good["alert_id"]].active
        await login(http, url)
        async with http.get(f"{url}/api/alerts") as resp:
            assert [a["alert_id"] for a in (await resp.json())["active"]] == [good["alert_id"]]


async def test_a_sparkline_from_a_malformed_influxdb_answer_is_empty_not_an_error(stack: Stack, roster: Roster
                                                                                   ) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    await ensure_topics(bootstrap, partitions=2)
    answers = [b"[]", b'{"results": "x"}', b'{"results": [[]]}', b'{"results": [{"series": {"a": 1}}]}',
               b'{"results": [{"series": [{"values": [[1, 2, 3]]}]}]}',  # ValueError (unpacking) was a 500
               b'{"results": [{"series": [{"values": [[1, [2]], [2, 3]]}]}]}', b'{"results": [{"series": [[]]}]}',
               b'{"results": [{"series": [{"values": [["t", "v"], [null, 1]]}]}]}', b'{"results": [{"series": [{}]}]}']
    events = [event(f"q{i:04d}", "tachycardia") for i in range(len(answers))]  # one alert each: no cache hit
    await produce_events(bootstrap, events)
    async with fake_influx(answers) as influx, station(stack, roster, influx_url=influx.url) as (url, board), \
            client() as http:
        await until(lambda: len(board.alerts) == len(events))
        await login(http, url)
        for e, answer in zip(events, answers, strict=True):
            async with http.get(f"{url}/api/sparkline", params={"alert_id": e["alert_id"]}) as resp:
                assert resp.status == 200, (answer, resp.status)
                assert "no data in the last hour" in await resp.text()


async def test_a_kiosk_token_survives_a_restart_and_forged_or_revoked_ones_do_not(stack: Stack, roster: Roster,
                                                                                   tmp_path: Path) -> None:
    await ensure_topics(stack.settings.kafka_bootstrap(), partitions=2)
    async with station(stack, roster) as (url, _board), client() as http:
        async with http.post(f"{url}/login", data={"station": "desk-1", "password": PASSWORD, "kiosk": "1"},
                             allow_redirects=False, headers={"Origin": url}) as resp:
            assert resp.status == 400 and "--state-dir" in await resp.text(), "no state dir: no kiosk, said"
    async with station(stack, roster, kiosks=KioskRegistry(tmp_path)) as (url, _board), client() as http:
        async with http.post(f"{url}/login", data={"station": "desk-1", "password": PASSWORD, "kiosk": "1"},
                             allow_redirects=False, headers={"Origin": url}) as resp:
            assert resp.status == 303
            cookie = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith("rpm_kiosk="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=34560000" in cookie
        kiosk_token = next(c.value for c in http.cookie_jar if c.key == "rpm_kiosk")
    # A restart: a new process, a new session store; the same state directory.
    async with station(stack, roster, kiosks=KioskRegistry(tmp_path)) as (url, _board), client() as http:
        async def session_with(token: str) -> int:
            http.cookie_jar.clear()
            http.cookie_jar.update_cookies({"rpm_kiosk": token})
            async with http.get(f"{url}/api/session") as resp:
                return resp.status

        assert await session_with(kiosk_token) == 200
        async with http.get(f"{url}/api/session") as resp:
            assert (await resp.json())["kiosk"] is True
        body, _, sig = kiosk_token.rpartition("~")
        forged = [body.replace("desk-1", "desk-2") + "~" + sig, body + "~" + sig[:-2] + "AA", body + "~",
                  "k1~x~desk-1~1~" + sig, kiosk_token + "~", "é" * 10, "x" * 401, KioskRegistry(tmp_path / "other")
                  .issue("desk-1")[1]]
        for token in forged:
            assert await session_with(token) == 401, token[:40]
        kiosk_id = kiosk_token.split("~")[1]
        assert KioskRegistry(tmp_path).revoke(kiosk_id), "revoked from another process (the CLI)"
        assert await session_with(kiosk_token) == 401, "revoked: out at once, in the running server"
        assert not KioskRegistry(tmp_path).revoke(kiosk_id), "revoking twice says so"
    # Logging out on a kiosk screen ends its token too (a screen leaving the ward does not stay in).
    async with station(stack, roster, kiosks=KioskRegistry(tmp_path)) as (url, _board), client() as http:
        async with http.post(f"{url}/login", data={"station": "desk-1", "password": PASSWORD, "kiosk": "1"},
                             allow_redirects=False, headers={"Origin": url}) as resp:
            assert resp.status == 303
        token = next(c.value for c in http.cookie_jar if c.key == "rpm_kiosk")
        async with http.get(f"{url}/api/session") as resp:
            csrf = (await resp.json())["csrf"]
        async with http.post(f"{url}/logout", data={"csrf": csrf}, allow_redirects=False) as resp:
            assert resp.status == 303
        async with client() as other:
            other.cookie_jar.update_cookies({"rpm_kiosk": token})
            async with other.get(f"{url}/api/session") as resp:
                assert resp.status == 401


async def test_behind_a_trusted_tls_proxy_login_works_the_cookie_is_secure_and_lockout_is_per_station_and_client(
        stack: Stack, roster: Roster, tmp_path: Path) -> None:
    from tests.security.pki import TestCA, write_server_files
    from tests.support.tlsproxy import TlsProxy

    await ensure_topics(stack.settings.kafka_bootstrap(), partitions=2)
    cert, key = write_server_files(TestCA.create("ward CA"), tmp_path, dns=["localhost"], ips=("127.0.0.1",))

    async def login_via(proxy: str, http: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        async with http.post(f"{proxy}/login", data={"station": "desk-1", "password": PASSWORD}, ssl=False,
                             allow_redirects=False, headers={"Origin": proxy}) as resp:
            await resp.read()
            return resp

    # Without the setting (or trusting another address) the proxy's headers are not believed: the
    # browser's https Origin does not match http, so the login is refused, as before.
    # (each client closes before its proxy stops, so no TLS connection is left half-closed)
    for trusted in ((), ("10.9.9.9",)):
        async with station(stack, roster, trusted=trusted) as (url, _board):
            with TlsProxy(url, cert, key) as proxy:
                async with client() as via:
                    resp = await login_via(proxy, via)
                    assert resp.status == 403, trusted
    async with station(stack, roster, trusted=("127.0.0.1",)) as (url, _board), client() as http:
        with TlsProxy(url, cert, key) as proxy:
            async with client() as via:
                resp = await login_via(proxy, via)
                assert resp.status == 303
                cookie = resp.headers["Set-Cookie"]
                assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
                async with via.get(f"{proxy}/api/session", ssl=False) as session:
                    assert session.status == 200

        # Lockout per station and client: the forwarded client, not the proxy's address.
        async def attempt(client_ip: str, station_id: str, password: str) -> int:
            async with http.post(f"{url}/login", data={"station": station_id, "password": password},
                                 allow_redirects=False, headers={"Origin": url, "X-Forwarded-For": client_ip}) as r:
                return r.status

        for _ in range(5):
            assert await attempt("198.51.100.7", "desk-1", "guess") == 401
        assert await attempt("198.51.100.7", "desk-1", PASSWORD) == 429, "that screen is locked for this station"
        assert await attempt("198.51.100.8", "desk-1", PASSWORD) == 303, "the rest of the ward is not"
        for _ in range(5):
            assert await attempt("198.51.100.9", "desk-9", "guess") == 401
        assert await attempt("198.51.100.9", "desk-1", PASSWORD) == 303, "a typo'd station name locks only itself"
        for bad in ("not-an-ip", "198.51.100.7, x", "", ",,,"):
            assert await attempt(bad, "desk-1", "guess") == 401  # a malformed chain: the peer's address counts
        assert await attempt("127.0.0.1", "desk-1", PASSWORD) == 303, "four failures so far from the peer itself"


def test_example_and_common_station_passwords_are_refused(tmp_path: Path) -> None:
    import subprocess

    from rpm_core.errors import ConfigError
    from rpm_core.roster import load_roster
    from station.nurse_station import refuse_weak_passwords
    from tests.support.procs import rpm_argv

    example = load_roster(Path(__file__).resolve().parents[2] / "roster.yaml")
    with pytest.raises(ConfigError, match="example or common password"):
        refuse_weak_passwords(example, "north")
    refuse_weak_passwords(default_roster({"desk-1": hash_password(PASSWORD)}), "all")
    for weak, why in (("change-me-north", "published or common"), ("short", "at least 10")):
        done = subprocess.run(rpm_argv("nurse-station", "hash-password", "--stdin"), input=weak + "\n",
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1 and why in done.stderr and "scrypt$" not in done.stdout


async def test_with_nurses_in_the_roster_only_a_signed_in_nurse_acts_and_in_their_own_name(stack: Stack) -> None:
    from rpm_core.roster import parse_roster

    fast = {"n": 16, "r": 1, "p": 1}
    roster = parse_roster(f"""version: 1
wards:
  north: {{patients: [p0050]}}
  south: {{patients: [p0051]}}
stations:
  desk-1: {{ward: north, password_hash: "{hash_password(PASSWORD, **fast)}"}}
nurses:
  "4711": {{name: Ana Lima, pin_hash: "{hash_password('482913', **fast)}", wards: [north]}}
  "4712": {{name: Ben Okoro, pin_hash: "{hash_password('739120', **fast)}", wards: [south]}}
""")
    bootstrap = stack.settings.kafka_bootstrap()
    await ensure_topics(bootstrap, partitions=2)
    raised = event("p0050", "tachycardia", value=130.0)
    await produce_events(bootstrap, [raised])
    board_ward = "north"
    trail = AuditTrail(bootstrap=bootstrap, keys=None, via="nurse-station")

    async with station(stack, roster, ward=board_ward, trail=trail) as (url, board), client() as http:
        await login(http, url)
        async with http.get(f"{url}/api/session") as resp:
            info = await resp.json()
        assert info["nurses"] is True and info["nurse"] is None
        headers = {"X-CSRF-Token": info["csrf"]}
        ack = {"alert_id": raised["alert_id"], "by": "Someone Else", "note": "Called patient"}

        async def post(path: str, body: object) -> tuple[int, dict[str, object]]:
            async with http.post(f"{url}{path}", json=body, headers=headers) as r:
                return r.status, await r.json()

        status, body = await post("/api/ack", ack)
        assert status == 403 and body["need_nurse"], "the station login alone cannot acknowledge"
        assert (await post("/api/silence", {**ack, "minutes": 5}))[0] == 403
        assert (await post("/api/nurse", {"nurse": "4711", "pin": "000000"}))[0] == 403
        assert (await post("/api/nurse", {"nurse": "4712", "pin": "739120"}))[0] == 403, "not a nurse of this ward"
        assert (await post("/api/nurse", {"nurse": "9999", "pin": "739120"}))[0] == 403
        for bad in ({"nurse": 4711, "pin": "482913"}, {"nurse": "4711"}, {"nurse": "47 11", "pin": "1"},
                    {"nurse": "4711", "pin": "9" * 65}, [], "x"):
            assert (await post("/api/nurse", bad))[0] == 400, bad
        status, body = await post("/api/nurse", {"nurse": "4711", "pin": "482913"})
        assert status == 200 and body["nurse"] == {"id": "4711", "name": "Ana Lima"}
        assert (await post("/api/ack", ack))[0] == 202
        records = await read_topic(bootstrap, "rpm.alert-acks", want=1)
        [mine] = [a for a in (decode_ack(v, key=k) for k, v in records) if a.patient == "p0050"]
        assert mine.by == "Ana Lima", "the signed-in nurse, not the name in the request"
        assert board.alerts[raised["alert_id"]].ack_note == "Called patient"
        assert (await post("/api/nurse", {}))[0] == 200
        assert (await post("/api/silence", {**ack, "minutes": 5}))[0] == 403, "signed out: no more acting"
        for _ in range(4):
            assert (await post("/api/nurse", {"nurse": "4711", "pin": "111111"}))[0] == 403
        assert (await post("/api/nurse", {"nurse": "4711", "pin": "482913"}))[0] == 429, "five wrong PINs: locked"
    # the audit trail names the nurse who signed in and acted, and every failed sign-in
    entries = [decode_entry(r.value) for r in await read_log(bootstrap)]
    sign_ins = [(e["actor"], e["outcome"]) for e in entries if e["action"] == "nurse_sign_in"]
    unknown = sign_ins[2][0]  # badge 9999 is nobody's: recorded by a hash, in case a PIN was typed there
    assert sign_ins[:4] == [("4711", "failure"), ("4712", "failure"), (unknown, "failure"), ("4711", "success")]
    assert unknown.startswith("unknown:") and "9999" not in unknown
    assert sign_ins[4:] == [("4711", "failure")] * 4, "the locked-out attempt is refused before the PIN is tried"
    (acked,) = [e for e in entries if e["action"] == "ack"]
    assert (acked["actor"], acked["patient"], acked["target"]) == ("4711", "p0050", raised["alert_id"])
    assert acked["detail"]["by"] == "Ana Lima" and acked["detail"]["station"] == "desk-1"
    said = str([(e["actor"], e["target"], e["detail"]) for e in entries])
    assert "482913" not in said and "000000" not in said and "111111" not in said, "PINs are never recorded"


async def _produce_altered(bootstrap: str, keys: Any, original: dict[str, Any], altered: bytes) -> None:
    """A record carrying the signature of ``original`` but the value ``altered``."""
    from aiokafka import AIOKafkaProducer

    headers = keys.sign("rpm.alerts", b"p0080", orjson.dumps(original))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("rpm.alerts", value=altered, key=b"p0080", headers=headers)
    finally:
        await producer.stop()


async def test_with_signing_keys_a_forged_record_neither_raises_nor_hides_an_alarm(stack: Stack,
                                                                                   roster: Roster) -> None:
    """Anyone who reaches Kafka could write a ``cleared`` that hides a real alarm: the station refuses
    records that do not verify (no signature, another key, altered), counting them."""
    from rpm_core.signing import KeyRing

    bootstrap = stack.settings.kafka_bootstrap()
    await ensure_topics(bootstrap, partitions=2)
    keys, other = KeyRing.generate("k1"), KeyRing.generate("k1")
    real = event("p0080", "glucose_low", severity="critical", metric="glucose", value=45.0)
    cleared = event("p0080", "glucose_low", severity="critical", metric="glucose", state="cleared",
                    time=real["time"] + 900, value=90.0)
    fake = event("p0081", "bradycardia", severity="critical", value=30.0)
    await produce_events(bootstrap, [real], keys=keys)
    await produce_events(bootstrap, [cleared], keys=None)                      # unsigned
    await produce_events(bootstrap, [cleared, fake], keys=other)              # signed with another key
    await _produce_altered(bootstrap, keys, cleared, orjson.dumps({**cleared, "message": "all fine"}))  # altered
    board = AlertBoard(ward="all", roster=roster)
    feed = AlertFeed(board, bootstrap=bootstrap, keys=keys)
    task = asyncio.create_task(feed.run())
    try:
        await until(lambda: board.caught_up)
        assert real["alert_id"] in board.alerts and board.alerts[real["alert_id"]].open, "the forged cleared did not"
        assert fake["alert_id"] not in board.alerts, "a forged alarm is not shown"
        assert feed.forged == 4
        await produce_events(bootstrap, [cleared], keys=keys)
        await until(lambda: not board.alerts[real["alert_id"]].open)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_ward_screen_whose_browser_went_away_is_dark_in_the_stations_heartbeat_after_a_minute(
        stack: Stack, roster: Roster, tmp_path: Path) -> None:
    """A kiosk (the ward's wall screen) shows alerts only while its browser holds the live stream; a
    closed browser, a computer off or a network down show nothing, and only the station can tell."""
    import time

    from station.nurse_station import DARK_AFTER_S, dark_screens

    await ensure_topics(stack.settings.kafka_bootstrap(), partitions=2)
    states: list[StationState] = []
    async with station(stack, roster, kiosks=KioskRegistry(tmp_path), states=states) as (url, _board), \
            client() as http:
        state = states[0]
        async with http.post(f"{url}/login", data={"station": "desk-1", "password": PASSWORD, "kiosk": "1",
                                                   "label": "north wall"},
                             allow_redirects=False, headers={"Origin": url}) as resp:
            assert resp.status == 303
        [kiosk] = KioskRegistry(tmp_path).kiosks()
        later = time.time() + DARK_AFTER_S + 1
        assert dark_screens(state, later) == [f"north wall ({kiosk.id})"], "issued, never shown: dark"
        async with http.get(f"{url}/api/events") as stream:
            await stream.content.readline()  # the stream is open
            assert dark_screens(state, later) == [], "its live stream is open: it shows the alerts"
        await until(lambda: not state.screens.get(kiosk.id))
        left = time.time()
        assert dark_screens(state, left + DARK_AFTER_S - 5) == [], "a reload is not a dark screen"
        assert dark_screens(state, left + DARK_AFTER_S + 1) == [f"north wall ({kiosk.id})"]
        assert KioskRegistry(tmp_path).revoke(kiosk.id)
        assert dark_screens(state, left + DARK_AFTER_S + 1) == [], "a revoked screen is out of service"
