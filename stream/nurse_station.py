"""``rpm nurse-station --ward W``: the live alert screen of one ward, served over HTTP.

How it fits together::

    rpm.alerts ─┐                                ┌─▶ GET /api/events  (SSE, one per open page)
                ├─▶ AlertFeed ─▶ AlertBoard ─────┤
    rpm.alert-acks ┘ (aiokafka,   (state of every ├─▶ GET /api/alerts  (JSON snapshot)
                 from offset 0)   ward alert)     └─▶ GET /api/sparkline (InfluxDB, last hour)
    POST /api/ack ─▶ AIOKafkaProducer ─▶ rpm.alert-acks (key: patient) ─▶ worker ─▶ rpm.alerts

- **Never misses an alert.** The board is rebuilt at start from both topics read from the
  beginning, so it holds the state of every alert of the ward, not just what arrived while a
  page was open. Every change gets the next number of a monotonically increasing sequence; the
  SSE event id is ``<boot>-<seq>``. A reconnecting ``EventSource`` sends ``Last-Event-ID`` and
  gets exactly the alerts that changed after it; a reloaded page (or one whose id belongs to an
  earlier run of the server) gets a full snapshot first. Heartbeats every 15 s let the page notice
  a dead connection and reconnect.
- **Acknowledgements** are produced to ``rpm.alert-acks`` (see :mod:`stream.acks`); the alert moves
  to the history at once ("pending"), and shows "confirmed" once the worker's ``acknowledged``
  event comes back on ``rpm.alerts``. Other stations of the ward see the ack from the topic.
- **Login per station** (roster, scrypt hashes), server-side sessions in an HttpOnly,
  SameSite=Strict cookie, a per-session CSRF token on every POST, an Origin check on the login
  form, a strict Content-Security-Policy, and a small per-address login failure limit.

Logs carry alert ids, patient ids and station ids, never readings, names or passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import secrets
import signal
import string
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from rpm_core.errors import ConfigError
from rpm_core.roster import ALL_WARD, Roster, load_roster
from rpm_core.settings import Settings
from rpm_core.signing import KeyRing
from rpm_core.wire import METRICS, is_valid_id, loads_unique
from stream import topics
from stream.acks import Ack, AckDecodeError, decode_ack

_LOGGER = logging.getLogger(__name__)

SEVERITY_RANK: Final = {"info": 1, "warning": 2, "critical": 3}
STATES: Final = frozenset({"raised", "cleared", "acknowledged", "escalated"})
# Closed alerts stay in the history view for a day (one shift handover and then some).
HISTORY_KEEP_S: Final = 24 * 3600.0
# A nurse station is left logged in for a whole shift; idle sessions end after 12 h.
SESSION_IDLE_S: Final = 12 * 3600.0
# Proxies and NATs drop idle connections after ~30-60 s; a comment every 15 s keeps SSE alive
# and lets the page detect a dead stream (it reconnects after 40 s of silence).
SSE_HEARTBEAT_S: Final = 15.0
SSE_RETRY_MS: Final = 2000
# Five wrong passwords from one address within 5 minutes lock that address out for the rest of them.
LOGIN_MAX_FAILURES: Final = 5
LOGIN_WINDOW_S: Final = 300.0
# An ack stashed before its alert was read (topics replay in any order) waits at most this long.
PENDING_ACKS_MAX: Final = 10_000
# Clocks of station and worker hosts differ a little; an ack this much "before" a raise still counts.
ACK_CLOCK_SLACK_S: Final = 5.0
SPARKLINE_WINDOW: Final = "1h"
SPARKLINE_CACHE_S: Final = 30.0
COOKIE: Final = "rpm_station"
STATIC_PACKAGE: Final = "stream"
FEED_RETRY_MAX_S: Final = 10.0


# -- the board: state of every alert of the ward -----------------------------------------------------


@dataclass
class AlertView:
    """The current state of one alert, as a nurse station shows it."""

    alert_id: str
    patient: str
    rule: str
    metric: str
    severity: str
    state: str
    since: float
    raised_at: float
    updated_at: float
    message: str = ""
    value: float | None = None
    escalated: bool = False
    ack_by: str | None = None
    ack_at: float | None = None
    ack_station: str | None = None
    ack_confirmed: bool = False
    cleared_at: float | None = None
    raised_wall: float = 0.0
    seq: int = 0
    raise_seq: int = 0
    ack_seq: int = -1
    seen: set[tuple[Any, ...]] = field(default_factory=set, repr=False)

    @property
    def acknowledged(self) -> bool:
        """Whether someone acknowledged it after it was last raised."""
        return self.ack_seq > self.raise_seq

    @property
    def active(self) -> bool:
        """Shown in the active list: not cleared and not acknowledged."""
        return self.state != "cleared" and not self.acknowledged

    def to_client(self) -> dict[str, Any]:
        """The JSON the page renders."""
        return {
            "alert_id": self.alert_id, "patient": self.patient, "rule": self.rule, "metric": self.metric,
            "severity": self.severity, "state": self.display_state(), "active": self.active,
            "escalated": self.escalated and self.active, "since": self.since, "raised_at": self.raised_at,
            "updated_at": self.updated_at, "message": self.message, "value": self.value,
            "ack": ({"by": self.ack_by, "at": self.ack_at, "station": self.ack_station,
                     "confirmed": self.ack_confirmed} if self.acknowledged else None),
            "cleared_at": self.cleared_at, "seq": self.seq,
        }

    def display_state(self) -> str:
        """``cleared`` | ``acknowledged`` | ``escalated`` | ``raised``."""
        if self.state == "cleared":
            return "cleared"
        if self.acknowledged:
            return "acknowledged"
        return "escalated" if self.escalated else "raised"


def sort_active(views: Iterable[AlertView]) -> list[AlertView]:
    """Most severe first, then newest (latest raise) first."""
    return sorted(views, key=lambda v: (-SEVERITY_RANK.get(v.severity, 0), -v.raised_at, v.alert_id))


class AlertBoard:
    """Every alert of one ward, built from ``rpm.alerts`` and ``rpm.alert-acks`` events.

    Idempotent: a redelivered event changes nothing. Each change bumps :attr:`seq`.
    """

    def __init__(self, *, ward: str, roster: Roster, clock: Callable[[], float] = time.time) -> None:
        self.ward = ward
        self.roster = roster
        self.boot = secrets.token_hex(4)
        self.seq = 0
        self.alerts: dict[str, AlertView] = {}
        self.caught_up = False
        self.rejected = 0
        self._pending_acks: OrderedDict[str, Ack] = OrderedDict()
        self._clock = clock
        self._changed = asyncio.Event()

    # -- input ------------------------------------------------------------------------------------

    def apply_alert(self, doc: Any, *, wall: float | None = None) -> bool:
        """Apply one ``rpm.alerts`` event (decoded JSON); ``wall`` is the record's timestamp (s)."""
        event = _valid_event(doc)
        if event is None:
            self.rejected += 1
            return False
        if not self.roster.in_ward(event["patient"], self.ward):
            return False
        view = self.alerts.get(event["alert_id"])
        key = (event["state"], event["severity"], event["time"], event.get("by"))
        if view is not None and (key in view.seen or view.state == "cleared"):
            return False
        view = self._update(view, event, self._clock() if wall is None else wall)
        view.seen.add(key)
        self._take_pending_ack(view)
        return True

    def apply_ack(self, ack: Ack) -> bool:
        """Apply an acknowledgement request from ``rpm.alert-acks`` (from any station)."""
        if not self.roster.in_ward(ack.patient, self.ward):
            return False
        view = self.alerts.get(ack.alert_id)
        if view is None:
            self._pending_acks[ack.alert_id] = ack
            while len(self._pending_acks) > PENDING_ACKS_MAX:
                self._pending_acks.popitem(last=False)
            return False
        key = ("ack-request", ack.by, ack.at, ack.station)
        if key in view.seen or view.state == "cleared" or view.acknowledged:
            return False
        view.seen.add(key)
        view.ack_by, view.ack_at, view.ack_station, view.ack_confirmed = ack.by, ack.at, ack.station, False
        view.ack_seq = self._bump(view)
        return True

    def _take_pending_ack(self, view: AlertView) -> None:
        ack = self._pending_acks.get(view.alert_id)
        if ack is not None and ack.at >= view.raised_wall - ACK_CLOCK_SLACK_S:
            del self._pending_acks[view.alert_id]
            self.apply_ack(ack)

    def _update(self, view: AlertView | None, e: dict[str, Any], wall: float) -> AlertView:
        state, t = e["state"], float(e["time"])
        if view is None:
            view = AlertView(alert_id=e["alert_id"], patient=e["patient"], rule=e["rule"], metric=e["metric"],
                             severity=e["severity"], state=state, since=float(e.get("since") or t), raised_at=t,
                             updated_at=t, raised_wall=wall)
        view.updated_at = max(view.updated_at, t)
        if e.get("message"):
            view.message = e["message"]
        if e.get("value") is not None:
            view.value = float(e["value"])
        seq = self._bump(view)
        if state == "raised":
            view.state, view.severity, view.raised_at, view.raised_wall = "raised", e["severity"], t, wall
            view.escalated, view.raise_seq = False, seq
        elif state == "escalated":
            view.state, view.escalated, view.severity = "escalated", True, e["severity"]
        elif state == "acknowledged":
            view.state, view.ack_confirmed, view.ack_seq = "acknowledged", True, seq
            view.ack_by, view.ack_at = e.get("by") or view.ack_by, t
        else:
            view.state, view.cleared_at = "cleared", t
        return view

    def _bump(self, view: AlertView) -> int:
        self.seq += 1
        view.seq = self.seq
        self.alerts[view.alert_id] = view
        self.notify()
        return self.seq

    def mark_caught_up(self) -> None:
        """The feed has read everything that was in the topics when it started."""
        if not self.caught_up:
            self.caught_up = True
            self.notify()

    def notify(self) -> None:
        """Wake every waiting SSE stream."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- output -----------------------------------------------------------------------------------

    async def wait_change(self, seq: int, *, within_s: float) -> None:
        """Return once :attr:`seq` passed ``seq`` (or the status changed), or after ``within_s``."""
        if self.seq > seq:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._changed.wait()

    def changes_since(self, seq: int) -> list[AlertView]:
        """Alerts changed after ``seq``, in the order of their last change."""
        return sorted((v for v in self.alerts.values() if v.seq > seq), key=lambda v: v.seq)

    def active(self) -> list[AlertView]:
        """Open, unacknowledged alerts, most severe and newest first."""
        return sort_active(v for v in self.alerts.values() if v.active)

    def history(self, limit: int = 200) -> list[AlertView]:
        """Acknowledged or cleared alerts, latest change first."""
        closed = (v for v in self.alerts.values() if not v.active)
        return sorted(closed, key=lambda v: -v.seq)[:limit]

    def snapshot(self) -> dict[str, Any]:
        """Everything a freshly loaded page needs."""
        return {"ward": self.ward, "seq": self.seq, "event_id": self.event_id(self.seq),
                "caught_up": self.caught_up, "active": [v.to_client() for v in self.active()],
                "history": [v.to_client() for v in self.history()]}

    def event_id(self, seq: int) -> str:
        """The SSE id of change ``seq`` of this run of the server."""
        return f"{self.boot}-{seq}"

    def seq_of(self, event_id: str | None) -> int | None:
        """The sequence number in ``event_id`` if it is from this run and not from the future."""
        if not event_id:
            return None
        boot, _, number = event_id.partition("-")
        # ASCII digits only, and few: str.isdigit() also accepts "²" (which int() refuses) and int()
        # refuses more than 4300 digits; either would end the stream instead of sending a snapshot
        if boot != self.boot or not (number.isascii() and number.isdigit()) or len(number) > len(str(self.seq)):
            return None
        seq = int(number)
        return seq if seq <= self.seq else None

    def prune(self, now: float) -> int:
        """Forget closed alerts whose last change is older than ``HISTORY_KEEP_S``."""
        old = [k for k, v in self.alerts.items() if not v.active and v.updated_at < now - HISTORY_KEEP_S
               and (v.ack_at or 0) < now - HISTORY_KEEP_S]
        for k in old:
            del self.alerts[k]
        return len(old)


def _valid_event(doc: Any) -> dict[str, Any] | None:
    """``doc`` if it looks like an ``AlertEvent.to_dict()``, else None."""
    if not isinstance(doc, dict):
        return None
    metric, severity, state = doc.get("metric"), doc.get("severity"), doc.get("state")
    ok = (
        is_valid_id(doc.get("alert_id")) and is_valid_id(doc.get("patient")) and is_valid_id(doc.get("rule"))
        # str first: `in` raises TypeError for a list or a dict (unhashable), which stopped the feed
        and isinstance(metric, str) and metric in METRICS and isinstance(severity, str) and severity in SEVERITY_RANK
        and isinstance(state, str) and state in STATES
        and _finite(doc.get("time")) and (doc.get("since") is None or _finite(doc.get("since")))
        and (doc.get("value") is None or _finite(doc.get("value")))
        and isinstance(doc.get("message", ""), str) and (doc.get("by") is None or isinstance(doc.get("by"), str))
    )
    return doc if ok else None


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# -- the Kafka side ---------------------------------------------------------------------------------


class AlertFeed:
    """Reads ``rpm.alerts`` and ``rpm.alert-acks`` from the beginning into an :class:`AlertBoard`."""

    def __init__(self, board: AlertBoard, *, bootstrap: str) -> None:
        self.board = board
        self.bootstrap = bootstrap
        self.connected = False

    async def run(self) -> None:
        """Consume forever; restart the consumer (re-reading, idempotently) after errors."""
        from aiokafka.errors import KafkaError

        attempt = 0
        while True:
            try:
                await self._consume()
            except (KafkaError, OSError) as exc:
                self.connected = False
                attempt += 1
                delay = min(FEED_RETRY_MAX_S, 1.5 ** min(attempt, 10))
                _LOGGER.warning("alert feed lost Kafka (%s); retrying in %.0f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=200)
        await consumer.start()
        try:
            parts = await self._partitions(consumer)
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            self.connected = True
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for tp, records in batches.items():
                    for record in records:
                        self._apply(tp.topic, record.key, record.value, record.timestamp)
                if not self.board.caught_up and all(await _at_least(consumer, end)):
                    self.board.mark_caught_up()
                    _LOGGER.info("nurse station caught up: %d alerts of ward %s", len(self.board.alerts),
                                 self.board.ward)
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: Any) -> list[Any]:
        from aiokafka.structs import TopicPartition

        wanted = (topics.ALERTS, topics.ALERT_ACKS)
        waited = False
        while True:
            await consumer.topics()  # refresh metadata
            found = {t: consumer.partitions_for_topic(t) for t in wanted}
            if all(found.values()):
                return [TopicPartition(t, p) for t in wanted for p in sorted(found[t] or ())]
            if not waited:
                _LOGGER.warning("waiting for Kafka topics %s to exist (start a worker or rpm demo)", ", ".join(wanted))
                waited = True
            await asyncio.sleep(2.0)

    def _apply(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int | None) -> None:
        if value is None:
            return
        wall = timestamp_ms / 1000.0 if timestamp_ms and timestamp_ms > 0 else None
        if topic == topics.ALERTS:
            try:
                doc = loads_unique(value)
            except ValueError:  # not JSON, or a key named twice
                doc = None
            if not self.board.apply_alert(doc, wall=wall) and doc is None:
                _LOGGER.warning("ignored a record of %s that is not JSON", topic)
            return
        try:
            self.board.apply_ack(decode_ack(value, key=key))
        except AckDecodeError as exc:
            _LOGGER.warning("ignored an acknowledgement: %s", exc.reason)


async def _at_least(consumer: Any, end: dict[Any, int]) -> list[bool]:
    return [await consumer.position(tp) >= offset for tp, offset in end.items()]


class AckSender:
    """Produces acknowledgements to ``rpm.alert-acks`` (key: patient id), signed with ``keys``
    (the worker refuses an acknowledgement that does not verify, see :mod:`rpm_core.signing`)."""

    def __init__(self, *, bootstrap: str, keys: KeyRing | None = None) -> None:
        self.bootstrap = bootstrap
        self._keys = keys
        self._producer: Any = None

    async def start(self) -> None:
        """Connect the producer."""
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                          request_timeout_ms=10_000)
        await self._producer.start()

    async def send(self, ack: Ack) -> None:
        """Send one ack and wait until Kafka has it."""
        assert self._producer is not None, "start() first"
        value = bytes(ack)
        headers = self._keys.sign(topics.ALERT_ACKS, ack.key, value) if self._keys is not None else None
        await self._producer.send_and_wait(topics.ALERT_ACKS, value=value, key=ack.key, headers=headers)

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()


# -- sparklines -------------------------------------------------------------------------------------


class Sparklines:
    """Last-hour trend of one patient's metric as a small inline SVG, from InfluxDB ``vitals``."""

    def __init__(self, *, url: str | None, db: str, token: str = "") -> None:
        self.url = url.rstrip("/") if url else None
        self.db = db
        self.token = token
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def svg(self, patient: str, metric: str) -> str:
        """The sparkline (cached for ``SPARKLINE_CACHE_S``); an empty SVG without data or InfluxDB."""
        now = time.monotonic()
        hit = self._cache.get((patient, metric))
        if hit is not None and now - hit[0] < SPARKLINE_CACHE_S:
            return hit[1]
        points = await self._points(patient, metric)
        svg = render_sparkline(points, metric=metric)
        self._cache[(patient, metric)] = (now, svg)
        return svg

    async def _points(self, patient: str, metric: str) -> list[tuple[float, float]]:
        if self.url is None or not is_valid_id(patient) or metric not in METRICS:
            return []
        q = (f"SELECT mean(\"value\") FROM \"vitals\" WHERE \"patient\" = '{patient}' AND \"metric\" = '{metric}' "  # noqa: S608 (ids validated)
             f"AND time > now() - {SPARKLINE_WINDOW} GROUP BY time(1m) fill(none)")
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.get(f"{self.url}/query", params={"db": self.db, "q": q, "epoch": "s"},
                                         headers=headers) as resp:
                doc = await resp.json(loads=orjson.loads, content_type=None)
            return sparkline_points(doc)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            _LOGGER.warning("sparkline query failed: %s", type(exc).__name__)
            return []

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


def sparkline_points(doc: Any) -> list[tuple[float, float]]:
    """The (time, value) points of an InfluxDB ``/query`` answer of one series; ``ValueError`` if it
    does not have that shape (null values, as ``fill(none)`` never writes, are skipped)."""
    results = (doc.get("results") or [{}]) if isinstance(doc, dict) else None
    if not isinstance(results, list) or not isinstance(results[0], dict):
        raise ValueError("InfluxDB answer without a list of result objects")
    series = results[0].get("series") or []
    if not series:
        return []
    rows = series[0].get("values") if isinstance(series, list) and isinstance(series[0], dict) else None
    if not isinstance(rows, list):
        raise ValueError("InfluxDB answer without a series of values")
    points = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 2:
            raise ValueError("InfluxDB series row is not [time, value]")
        t, v = row
        if v is None:
            continue
        if not (_finite(t) and _finite(v)):
            raise ValueError("InfluxDB series row holds a time or value that is not a finite number")
        points.append((float(t), float(v)))
    return points


def render_sparkline(points: list[tuple[float, float]], *, metric: str, width: int = 180, height: int = 44) -> str:
    """An SVG polyline of ``points`` (time, value), scaled to fit, with the last point marked."""
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{html.escape(metric)} trend, last hour">')
    if len(points) < 2:
        return head + (f'<text x="4" y="{height // 2 + 5}" fill="#9aa3ad" font-size="13">'
                       "no data in the last hour</text></svg>")
    ts, vs = [p[0] for p in points], [p[1] for p in points]
    t0, t1 = min(ts), max(ts)
    lo, hi = min(vs), max(vs)
    pad = max((hi - lo) * 0.1, 1e-9)
    lo, hi = lo - pad, hi + pad

    def xy(t: float, v: float) -> tuple[float, float]:
        x = 2 + (t - t0) / max(t1 - t0, 1e-9) * (width - 8)
        y = height - 2 - (v - lo) / (hi - lo) * (height - 4)
        return round(x, 1), round(y, 1)

    coords = " ".join(f"{x},{y}" for x, y in (xy(t, v) for t, v in points))
    lx, ly = xy(ts[-1], vs[-1])
    return (head + f'<polyline fill="none" stroke="#e8eef5" stroke-width="2" points="{coords}"/>'
            f'<circle cx="{lx}" cy="{ly}" r="3.5" fill="#ffd54f"/></svg>')


# -- the web app ------------------------------------------------------------------------------------


@dataclass
class Session:
    """A logged-in station."""

    station: str
    csrf: str
    last_seen: float


@dataclass
class StationState:
    """What the handlers share."""

    board: AlertBoard
    roster: Roster
    sender: AckSender | None
    sparklines: Sparklines
    ward_name: str
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, list[float]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


STATE_KEY: Final = web.AppKey("station", StationState)


def _static_dir() -> Path:
    return Path(str(resources.files(STATIC_PACKAGE).joinpath("static")))


def _page(name: str) -> str:
    return (_static_dir() / name).read_text(encoding="utf-8")


SECURITY_HEADERS: Final = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: with it, browsers send "Origin: null" on our own form POSTs
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@web.middleware
async def _security_headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        _add_security_headers(exc.headers)
        raise
    if not resp.prepared:
        _add_security_headers(resp.headers)
    return resp


def _add_security_headers(headers: Any) -> None:
    for k, v in SECURITY_HEADERS.items():
        headers.setdefault(k, v)


def _session(request: web.Request) -> Session | None:
    st = request.app[STATE_KEY]
    token = request.cookies.get(COOKIE)
    sess = st.sessions.get(token or "")
    now = time.time()
    if sess is None or now - sess.last_seen > SESSION_IDLE_S:
        return None
    sess.last_seen = now
    return sess


def _require(request: web.Request) -> Session:
    sess = _session(request)
    if sess is None:
        raise web.HTTPUnauthorized(text='{"error": "log in first"}', content_type="application/json")
    return sess


def _check_csrf(request: web.Request, sess: Session) -> None:
    if not _csrf_ok(request.headers.get("X-CSRF-Token", ""), sess):
        raise web.HTTPForbidden(text='{"error": "missing or wrong CSRF token"}', content_type="application/json")


def _csrf_ok(token: str, sess: Session) -> bool:
    """Whether ``token`` is the session's CSRF token. A header with bytes that are not UTF-8 arrives
    with surrogate escapes, which ``str.encode`` refuses (UnicodeEncodeError): such a token is wrong."""
    return token.isascii() and secrets.compare_digest(token.encode(), sess.csrf.encode())


async def _form(request: web.Request) -> Mapping[str, object]:
    """The posted form; 400 when it cannot be parsed (e.g. a urlencoded body that is not UTF-8)."""
    try:
        return await request.post()
    except ValueError as exc:  # UnicodeDecodeError, a malformed multipart body
        raise web.HTTPBadRequest(text="malformed form") from exc


def _same_origin(request: web.Request) -> bool:
    """Whether a form POST comes from our own page (login CSRF): Origin, else Sec-Fetch-Site."""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return origin == f"{request.scheme}://{request.host}"
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def _login_page(error: str = "", status: int = 200) -> web.Response:
    text = string.Template(_page("login.html")).safe_substitute(error=html.escape(error))
    return web.Response(text=text, content_type="text/html", status=status)


async def login_form(request: web.Request) -> web.StreamResponse:
    """GET /login."""
    if _session(request) is not None:
        raise web.HTTPSeeOther("/")
    return _login_page()


def _locked_out(st: StationState, addr: str, now: float) -> bool:
    recent = [t for t in st.failures.get(addr, []) if now - t < LOGIN_WINDOW_S]
    st.failures[addr] = recent
    return len(recent) >= LOGIN_MAX_FAILURES


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login: station + password → session cookie."""
    st = request.app[STATE_KEY]
    if not _same_origin(request):
        raise web.HTTPForbidden(text="cross-site login refused")
    addr, now = request.remote or "?", time.time()
    if _locked_out(st, addr, now):
        return _login_page("Too many wrong passwords. Wait 5 minutes, then try again.", status=429)
    form = await _form(request)
    station, password = str(form.get("station", "")).strip(), str(form.get("password", ""))
    entry = await asyncio.to_thread(st.roster.check_login, station, password)
    if entry is None or entry.ward != st.board.ward:
        st.failures.setdefault(addr, []).append(now)
        _LOGGER.warning("failed nurse-station login for station %r from %s", station[:64], addr)
        return _login_page("Wrong station or password.", status=401)
    token = secrets.token_urlsafe(32)
    st.sessions[token] = Session(station=entry.id, csrf=secrets.token_urlsafe(32), last_seen=now)
    _LOGGER.info("station %s logged in from %s", entry.id, addr)
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.secure, path="/")
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout (CSRF token in the form or header)."""
    st = request.app[STATE_KEY]
    sess = _session(request)
    if sess is not None:
        form = await _form(request)
        token = request.headers.get("X-CSRF-Token") or str(form.get("csrf", ""))
        if not _csrf_ok(token, sess):
            raise web.HTTPForbidden(text="missing or wrong CSRF token")
        st.sessions.pop(request.cookies.get(COOKIE, ""), None)
    resp = web.Response(status=303, headers={"Location": "/login"})
    resp.del_cookie(COOKIE, path="/", samesite="Strict")
    return resp


async def index(request: web.Request) -> web.StreamResponse:
    """GET /: the alert screen (or the login page)."""
    if _session(request) is None:
        raise web.HTTPSeeOther("/login")
    return web.Response(text=_page("index.html"), content_type="text/html")


async def session_info(request: web.Request) -> web.Response:
    """GET /api/session: who is logged in, the ward, and the CSRF token for POSTs."""
    sess = _require(request)
    st = request.app[STATE_KEY]
    entry = st.roster.stations.get(sess.station)
    return web.json_response({"station": sess.station, "station_name": (entry.name if entry else "") or sess.station,
                              "ward": st.board.ward, "ward_name": st.ward_name, "csrf": sess.csrf},
                             dumps=lambda d: orjson.dumps(d).decode())


async def alerts(request: web.Request) -> web.Response:
    """GET /api/alerts: the snapshot the page starts from."""
    _require(request)
    return web.json_response(request.app[STATE_KEY].board.snapshot(), dumps=lambda d: orjson.dumps(d).decode())


async def acknowledge(request: web.Request) -> web.Response:
    """POST /api/ack ``{"alert_id", "by"}`` → ``rpm.alert-acks``; 202 once Kafka has it."""
    sess = _require(request)
    _check_csrf(request, sess)
    st = request.app[STATE_KEY]
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text='{"error": "send JSON"}', content_type="application/json")
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("alert_id"), str):
            raise AckDecodeError("send a JSON object with alert_id and by")
        view = st.board.alerts.get(body["alert_id"])
        if view is None:
            raise web.HTTPNotFound(text='{"error": "no such alert on this ward"}', content_type="application/json")
        ack = Ack(alert_id=view.alert_id, patient=view.patient, by=body.get("by", ""), at=time.time(),
                  station=sess.station)
    except (orjson.JSONDecodeError, AckDecodeError) as exc:
        reason = exc.reason if isinstance(exc, AckDecodeError) else "send a JSON object with alert_id and by"
        raise web.HTTPBadRequest(text=orjson.dumps({"error": reason}).decode(),
                                 content_type="application/json") from exc
    if st.sender is None:
        raise web.HTTPServiceUnavailable(text='{"error": "no Kafka producer"}', content_type="application/json")
    try:
        await st.sender.send(ack)
    except Exception as exc:  # aiokafka raises many kinds; the nurse must see that it did not go out
        _LOGGER.error("acknowledgement of alert %s could not be sent: %s", ack.alert_id, type(exc).__name__)
        raise web.HTTPServiceUnavailable(text='{"error": "could not reach Kafka; try again"}',
                                         content_type="application/json") from exc
    st.board.apply_ack(ack)
    _LOGGER.info("alert %s of patient %s acknowledged at station %s", ack.alert_id, ack.patient, ack.station)
    return web.json_response({"status": "sent", "alert_id": ack.alert_id}, status=202)


async def sparkline(request: web.Request) -> web.Response:
    """GET /api/sparkline?alert_id=…: the last hour of the alert's metric, as SVG."""
    _require(request)
    st = request.app[STATE_KEY]
    view = st.board.alerts.get(request.query.get("alert_id", ""))
    if view is None:
        raise web.HTTPNotFound(text="no such alert on this ward")
    svg = await st.sparklines.svg(view.patient, view.metric)
    return web.Response(text=svg, content_type="image/svg+xml")


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 once the board has caught up with Kafka."""
    board = request.app[STATE_KEY].board
    return web.json_response({"caught_up": board.caught_up, "alerts": len(board.alerts)},
                             status=200 if board.caught_up else 503)


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {orjson.dumps(data).decode()}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """GET /api/events: Server-Sent Events; catches up from ``Last-Event-ID`` (or ``?last=``)."""
    _require(request)
    st = request.app[STATE_KEY]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no", **{k: v for k, v in SECURITY_HEADERS.items()
                                                                       if k != "Cache-Control"}})
    await resp.prepare(request)
    # ConnectionResetError: the page went away (closed, reloaded, network); it catches up when back.
    with contextlib.suppress(ConnectionResetError):
        await _stream_changes(request, resp, st)
    return resp


async def _stream_changes(request: web.Request, resp: web.StreamResponse, st: StationState) -> None:
    """Write the snapshot or the missed changes, then every change as it happens, until stopped."""
    board = st.board
    await resp.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
    seq = board.seq_of(request.headers.get("Last-Event-ID") or request.query.get("last"))
    if seq is None:
        seq = board.seq
        await resp.write(_sse("snapshot", board.snapshot(), board.event_id(seq)))
    caught_up = board.caught_up
    while not st.stopping.is_set():
        if _session(request) is None:
            await resp.write(_sse("logout", {}))
            break
        for view in board.changes_since(seq):
            await resp.write(_sse("alert", view.to_client(), board.event_id(view.seq)))
        seq = max(seq, board.seq)
        if board.caught_up != caught_up:
            caught_up = board.caught_up
            await resp.write(_sse("status", {"caught_up": caught_up}))
        await board.wait_change(seq, within_s=SSE_HEARTBEAT_S)
        if board.seq == seq and board.caught_up == caught_up:
            await resp.write(b": ping\n\n")


def create_app(state: StationState) -> web.Application:
    """The aiohttp application of one station."""
    app = web.Application(middlewares=[_security_headers], client_max_size=64 * 1024)
    app[STATE_KEY] = state
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/session", session_info)
    app.router.add_get("/api/alerts", alerts)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/ack", acknowledge)
    app.router.add_get("/api/sparkline", sparkline)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", _static_dir(), show_index=False)

    async def on_shutdown(_app: web.Application) -> None:
        state.stopping.set()
        state.board.notify()

    app.on_shutdown.append(on_shutdown)
    return app


# -- running it -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StationOptions:
    """How to run one nurse station."""

    ward: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    roster: str | None = None


def resolve_ward(roster: Roster, ward: str | None) -> str:
    """The ward to serve; :class:`ConfigError` naming the fix when it cannot work."""
    if not roster.configured:
        if ward not in (None, ALL_WARD):
            raise ConfigError(f"ward {ward!r} needs a roster (RPM_ROSTER or --roster); without one the only "
                              f"ward is {ALL_WARD!r}")
        ward = ALL_WARD
    elif ward is None:
        if len(roster.wards) != 1:
            raise ConfigError(f"choose a ward with --ward (one of: {', '.join(sorted(roster.wards))})")
        ward = next(iter(roster.wards))
    elif ward not in roster.wards:
        raise ConfigError(f"ward {ward!r} is not in {roster.source}; wards: {', '.join(sorted(roster.wards))}")
    if not any(s.ward == ward for s in roster.stations.values()):
        raise ConfigError(
            f"no station can log in to ward {ward!r}. Create a password hash with "
            "`rpm nurse-station hash-password`, then either add a station with that password_hash to the "
            "roster (RPM_ROSTER), or without a roster set RPM_NURSE_CREDENTIALS=<station>=<hash>"
        )
    return ward


async def serve(settings: Settings, roster: Roster, options: StationOptions,
                on_ready: Callable[[str], None] | None = None) -> None:
    """Run the station until SIGINT/SIGTERM."""
    ward = resolve_ward(roster, options.ward)
    bootstrap = settings.kafka_bootstrap()
    board = AlertBoard(ward=ward, roster=roster)
    sender = AckSender(bootstrap=bootstrap, keys=settings.key_ring())
    sparklines = Sparklines(url=settings.influx_url, db=settings.influx_db, token=settings.influx_token.get())
    state = StationState(board=board, roster=roster, sender=sender, sparklines=sparklines,
                         ward_name=roster.wards[ward].name if ward in roster.wards else ward)
    runner = web.AppRunner(create_app(state), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sender.start()
        await web.TCPSite(runner, options.host, options.port).start()
        url = f"http://{options.host}:{runner.addresses[0][1]}/"
        _LOGGER.info("nurse station for ward %s at %s", ward, url)
        if on_ready:
            on_ready(url)
        async with asyncio.TaskGroup() as tg:
            feed = tg.create_task(AlertFeed(board, bootstrap=bootstrap).run(), name="alert-feed")
            pruner = tg.create_task(_prune_forever(board), name="prune")
            await stop.wait()
            feed.cancel()
            pruner.cancel()
    finally:
        await runner.cleanup()
        await sender.stop()
        await sparklines.close()


async def _prune_forever(board: AlertBoard) -> None:
    while True:
        await asyncio.sleep(600)
        board.prune(time.time())


def run_station(settings: Settings, options: StationOptions,
                on_ready: Callable[[str, str], None] | None = None) -> int:
    """``rpm nurse-station``: load the roster, check the ward, serve until interrupted.

    ``on_ready(ward, url)`` is called once the page is served (the CLI prints it).
    """
    roster = load_roster(options.roster)
    ward = resolve_ward(roster, options.ward)
    asyncio.run(serve(settings, roster, options, on_ready=(lambda url: on_ready(ward, url)) if on_ready else None))
    return 0
