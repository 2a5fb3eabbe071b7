"""``rpm nurse-station --ward W``: the central station of one ward, served over HTTP.

How it fits together::

    rpm.alerts ─┐                                ┌─▶ GET /api/events  (SSE, one per open page, ping every 2 s)
                ├─▶ AlertFeed ─▶ AlertBoard ─────┤
    rpm.alert-acks ┘ (aiokafka,   (state of every ├─▶ GET /api/alerts  (JSON snapshot)
                 from offset 0)   ward alert,     ├─▶ GET /api/sparkline, /api/trend (InfluxDB, last hour)
                                  re-alarm tick)  └─▶ GET /api/overview (InfluxDB last values, trends)
    POST /api/ack ─▶ AIOKafkaProducer ─▶ rpm.alert-acks (key: patient) ─▶ worker ─▶ rpm.alerts
    POST /api/silence, /api/nurse; actions ─▶ AuditLog ─▶ InfluxDB station_audit
    logins, sign-ins, acks, silences, kiosks ─▶ AuditTrail ─▶ rpm.audit (hash-chained, signed)

- **Never misses an alert.** The board is rebuilt at start from both topics read from the
  beginning, so it holds the state of every alert of the ward, not just what arrived while a
  page was open. Every change gets the next number of a monotonically increasing sequence; the
  SSE event id is ``<boot>-<seq>``. A reconnecting ``EventSource`` sends ``Last-Event-ID`` and
  gets exactly the alerts that changed after it; a reloaded page (or one whose id belongs to an
  earlier run of the server) gets a full snapshot first. A ``ping`` event every 2 s lets the page
  turn the whole screen into a technical alarm when it hears nothing for 5 s.
- **Acknowledged is not resolved.** An acknowledgement is produced to ``rpm.alert-acks`` (see
  :mod:`rpm_core.acks`); the alert stays on the list, marked acknowledged ("pending" until the
  worker's ``acknowledged`` event comes back), until the worker's ``cleared``. Still open after the
  policy's re-alarm interval (``station:`` in the rules file, :mod:`rpm_core.alarm_policy`) or the
  nurse's recheck timer, it alarms again. Silences are limited by the same policy.
- **Technical alerts** (``kind: "technical"``) are accepted beside clinical ones, validated on
  their own contract, shown apart, never acknowledged, cleared by their producer.
- **Login per station** (roster, scrypt hashes), optional nurses with badge + PIN, server-side
  sessions in an HttpOnly, SameSite=Strict cookie, kiosk tokens that survive restarts
  (:mod:`station.kiosk`), a per-session CSRF token on every POST, an Origin check on the
  login form, a strict Content-Security-Policy, a lockout per station and client, and
  ``X-Forwarded-*`` believed only from ``--trusted-proxy`` peers.

Logs carry alert ids, patient ids, station ids and badge numbers, never readings, names or passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import ipaddress
import logging
import math
import os
import re
import secrets
import signal
import socket
import string
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from rpm_core import topics
from rpm_core.acks import Ack, AckDecodeError, decode_ack
from rpm_core.alarm_policy import AlarmPolicy, load_alarm_policy
from rpm_core.audit import AuditEvent, AuditTrail, config_load_event, os_user
from rpm_core.errors import ConfigError
from rpm_core.influx import query_async, result_series
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.passwords import KNOWN_WEAK
from rpm_core.roster import ALL_WARD, Roster, Ward, load_roster
from rpm_core.rules import default_rules_path, load_rules
from rpm_core.settings import InfluxAuth, Settings, influx_endpoint
from rpm_core.signing import KeyRing, SignatureError
from rpm_core.technical import (
    TECHNICAL_KIND,
    TECHNICAL_METRIC,
    Heartbeat,
    HeartbeatSender,
    TechnicalAlertError,
    decode_technical,
)
from rpm_core.wire import METRICS, is_valid_id, loads_unique
from station.audit import AuditEntry, AuditLog
from station.kiosk import KioskRegistry
from station.overview import Overview

_LOGGER = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SEVERITY_RANK: Final = {"info": 1, "warning": 2, "critical": 3}
STATES: Final = frozenset({"raised", "cleared", "acknowledged", "escalated"})
# Closed alerts stay in the history view for a day (one shift handover and then some).
HISTORY_KEEP_S: Final = 24 * 3600.0
# A nurse station is left logged in for a whole shift; idle sessions end after 12 h.
SESSION_IDLE_S: Final = 12 * 3600.0
# A heartbeat every 2 s keeps SSE alive through proxies and lets the page tell a dead stream: it
# turns the whole screen into a technical alarm after HEARTBEAT_DEADLINE_S without a word.
SSE_HEARTBEAT_S: Final = 2.0
HEARTBEAT_DEADLINE_S: Final = 5.0
# A ward screen (kiosk) with no live alert stream for this long is dark: its station's heartbeat says so.
DARK_AFTER_S: Final = 60.0
# How often the station looks for acknowledged alerts due to re-alarm and silences that ran out.
TICK_S: Final = 1.0
SSE_RETRY_MS: Final = 2000
# Five wrong passwords from one address within 5 minutes lock that address out for the rest of them.
# Five wrong passwords for one station from one client within 5 minutes lock that pair out; behind a
# trusted proxy the client is the forwarded address, so one mistyping screen cannot lock the ward out.
# One client gets at most 30 failures over all stations in that window (password spraying).
LOGIN_MAX_FAILURES: Final = 5
LOGIN_MAX_FAILURES_PER_CLIENT: Final = 30
LOGIN_WINDOW_S: Final = 300.0
FAILURE_KEYS_MAX: Final = 10_000
# Published or common passwords a station may not use (the example roster's among them): tried
# against each station's hash at start (rpm_core.passwords; hash-password checks a longer list).
WEAK_PASSWORDS: Final = KNOWN_WEAK
# An ack stashed before its alert was read (topics replay in any order) waits at most this long.
PENDING_ACKS_MAX: Final = 10_000
# Clocks of station and worker hosts differ a little; an ack this much "before" a raise still counts.
ACK_CLOCK_SLACK_S: Final = 5.0
SPARKLINE_WINDOW: Final = "1h"
# The patient detail shows the last three hours, in 3-minute means.
DETAIL_WINDOW_S: Final = 3 * 3600
SPARKLINE_CACHE_S: Final = 30.0
COOKIE: Final = "rpm_station"
KIOSK_COOKIE: Final = "rpm_kiosk"
# Chromium keeps a cookie at most 400 days; a kiosk token lives until it is revoked.
KIOSK_COOKIE_MAX_AGE_S: Final = 400 * 86400
NOTE_MAX: Final = 200
RECHECK_MAX_MIN: Final = 240
# mg/dL per mmol/L of glucose: its molar mass, 180.16 g/mol, over 10 (dL per L).
MG_DL_PER_MMOL_L: Final = 18.016
# At a shared station a nurse who signed in with badge and PIN is signed out after 10 minutes
# without an acknowledgement or silence (the next person must not act in their name).
NURSE_IDLE_S: Final = 600.0
STATIC_PACKAGE: Final = "station"
FEED_RETRY_MAX_S: Final = 10.0
# How often the alert feed looks for partitions rpm.alerts and rpm.alert-acks were given since it
# started (workers scaled out with more partitions): alerts on a partition it does not read never
# reach the screens, with the station healthy. A look that Kafka does not answer within
# PARTITIONS_WITHIN_S restarts the feed (which re-reads everything, idempotently).
PARTITIONS_RECHECK_S: Final = 60.0
PARTITIONS_WITHIN_S: Final = 30.0


# -- the board: state of every alert of the ward -----------------------------------------------------


@dataclass
class AlertView:
    """The current state of one alert, as a nurse station shows it.

    An acknowledged alert stays on the screen (marked with who and when) until the worker clears
    it; ``alarming`` is what calls for a nurse: open and not acknowledged (or re-alarmed since).
    A technical alert (``kind == "technical"``) cannot be acknowledged: it clears when its cause does.
    """

    alert_id: str
    patient: str | None
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
    kind: str = "clinical"
    wards: tuple[str, ...] = ()
    remedy: str = ""
    component: str = ""
    ack_by: str | None = None
    ack_at: float | None = None
    ack_station: str | None = None
    ack_note: str = ""
    ack_confirmed: bool = False
    cleared_at: float | None = None
    raised_wall: float = 0.0
    realarm_count: int = 0
    realarmed_at: float | None = None
    recheck_at: float | None = None
    silenced_until: float | None = None
    silenced_by: str | None = None
    silenced_station: str | None = None
    seq: int = 0
    raise_seq: int = 0
    ack_seq: int = -1
    realarm_seq: int = -1
    seen: set[tuple[Any, ...]] = field(default_factory=set, repr=False)

    @property
    def technical(self) -> bool:
        """A technical alert ("INOP"): the system cannot monitor someone, or a device has trouble."""
        return self.kind == "technical"

    @property
    def open(self) -> bool:
        """Not cleared: shown on the alarm list (acknowledged or not)."""
        return self.state != "cleared"

    @property
    def acknowledged(self) -> bool:
        """Whether someone acknowledged it after it was last raised or re-alarmed."""
        return not self.technical and self.ack_seq > max(self.raise_seq, self.realarm_seq)

    @property
    def alarming(self) -> bool:
        """Open and not acknowledged: it calls for a nurse (sound unless silenced)."""
        return self.open and not self.acknowledged

    @property
    def active(self) -> bool:
        """Shown in the alarm list (open); kept for callers of the earlier name."""
        return self.open

    @property
    def last_alarm(self) -> float:
        """When it last started to alarm (raise or re-alarm): newer goes higher in its band."""
        return max(self.raised_at, self.realarmed_at or 0.0)

    def silenced(self, now: float) -> bool:
        """Whether a nurse silenced it and the silence has not run out."""
        return self.silenced_until is not None and now < self.silenced_until

    def to_client(self, policy: AlarmPolicy | None = None) -> dict[str, Any]:
        """The JSON the page renders."""
        policy = policy or AlarmPolicy()
        due = self.realarm_due(policy)
        return {
            "alert_id": self.alert_id, "patient": self.patient, "rule": self.rule, "metric": self.metric,
            "kind": self.kind, "wards": list(self.wards), "remedy": self.remedy, "component": self.component,
            "severity": self.severity, "state": self.display_state(), "active": self.open, "open": self.open,
            "alarming": self.alarming, "escalated": self.escalated and self.open, "since": self.since,
            "raised_at": self.raised_at, "last_alarm": self.last_alarm,
            "updated_at": self.updated_at, "message": self.message, "value": self.value,
            "ack": ({"by": self.ack_by, "at": self.ack_at, "station": self.ack_station, "note": self.ack_note,
                     "confirmed": self.ack_confirmed, "realarm_at": due if self.open else None,
                     "recheck_at": self.recheck_at if self.open else None}
                    if self.acknowledged else None),
            "realarm_count": self.realarm_count, "realarmed_at": self.realarmed_at,
            "silenced": ({"until": self.silenced_until, "by": self.silenced_by, "station": self.silenced_station}
                         if self.silenced_until is not None and self.open else None),
            "silence_max_s": policy.silence_max_s(self.rule, self.severity, technical=self.technical),
            "cleared_at": self.cleared_at, "seq": self.seq,
        }

    def realarm_due(self, policy: AlarmPolicy) -> float | None:
        """When this acknowledged alert alarms again if still open: the policy's interval after the
        acknowledgement, or the nurse's recheck timer when that is sooner."""
        if self.technical or self.ack_at is None:
            return None
        after = policy.realarm_s(self.rule, self.severity)
        due = [t for t in (self.ack_at + after if after is not None else None, self.recheck_at) if t is not None]
        return min(due) if due else None

    def display_state(self) -> str:
        """``cleared`` | ``acknowledged`` | ``escalated`` | ``raised``."""
        if self.state == "cleared":
            return "cleared"
        if self.acknowledged:
            return "acknowledged"
        return "escalated" if self.escalated else "raised"


def sort_active(views: Iterable[AlertView]) -> list[AlertView]:
    """Alarming before acknowledged; then most severe, escalated, latest (re-)alarm first."""
    return sorted(views, key=lambda v: (not v.alarming, -SEVERITY_RANK.get(v.severity, 0), not v.escalated,
                                        -v.last_alarm, v.alert_id))


class SilenceRefused(ValueError):
    """A silence the policy does not allow (too long, or the alert is closed); ``str`` says why."""


@dataclass(frozen=True)
class Transition:
    """A change the station itself made (re-alarm, silence ended), for the audit."""

    action: str
    view: AlertView


class AlertBoard:
    """Every alert of one ward, built from ``rpm.alerts`` and ``rpm.alert-acks`` events.

    Idempotent: a redelivered event changes nothing. Each change bumps :attr:`seq`.
    :meth:`tick` re-alarms acknowledged alerts that are still open after the policy's interval.
    """

    def __init__(self, *, ward: str, roster: Roster, clock: Callable[[], float] = time.time,
                 policy: AlarmPolicy | None = None) -> None:
        self.ward = ward
        self.roster = roster
        self.policy = policy or AlarmPolicy()
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
        if not self._ours(event):
            return False
        view = self.alerts.get(event["alert_id"])
        key = (event["state"], event["severity"], event["time"], event.get("by"))
        if view is not None and (key in view.seen or not self._reopens(view, event)):
            return False
        view = self._update(view, event, self._clock() if wall is None else wall)
        view.seen.add(key)
        self._take_pending_ack(view)
        return True

    def _ours(self, event: dict[str, Any]) -> bool:
        patient = event.get("patient")
        if event.get("kind") != "technical":
            return isinstance(patient, str) and self.roster.in_ward(patient, self.ward)
        wards = event["wards"]
        return ("*" in wards or self.ward in wards or (patient is not None and self.roster.in_ward(patient, self.ward))
                or not self.roster.configured)

    @staticmethod
    def _reopens(view: AlertView, event: dict[str, Any]) -> bool:
        """Cleared is final for a clinical alert; a technical one may be raised again later."""
        if view.state != "cleared":
            return True
        return view.technical and event["state"] == "raised" and float(event["time"]) > (view.cleared_at or 0.0)

    def apply_ack(self, ack: Ack, *, note: str = "", recheck_s: float | None = None) -> bool:
        """Apply an acknowledgement request from ``rpm.alert-acks`` (from any station)."""
        if not self.roster.in_ward(ack.patient, self.ward):
            return False
        view = self.alerts.get(ack.alert_id)
        if view is None:
            self._pending_acks[ack.alert_id] = ack
            while len(self._pending_acks) > PENDING_ACKS_MAX:
                self._pending_acks.popitem(last=False)
            return False
        if view.patient != ack.patient:  # an ack in one patient's name for another's alert (a forged one)
            return False
        key = ("ack-request", ack.by, ack.at, ack.station)
        if key in view.seen or view.state == "cleared" or view.acknowledged or view.technical:
            return False
        view.seen.add(key)
        view.ack_by, view.ack_at, view.ack_station, view.ack_confirmed = ack.by, ack.at, ack.station, False
        view.ack_note = note
        view.recheck_at = ack.at + recheck_s if recheck_s else None
        view.silenced_until = None
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
            view = AlertView(alert_id=e["alert_id"], patient=e.get("patient"), rule=e["rule"], metric=e["metric"],
                             severity=e["severity"], state=state, since=float(e.get("since") or t), raised_at=t,
                             updated_at=t, raised_wall=wall, kind=e.get("kind") or "clinical")
        view.updated_at = max(view.updated_at, t)
        if e.get("message"):
            view.message = e["message"]
        if e.get("value") is not None:
            view.value = float(e["value"])
        if view.technical:
            view.wards, view.remedy, view.component = tuple(e["wards"]), e.get("remedy") or view.remedy, e["component"]
        seq = self._bump(view)
        if state == "raised":
            view.state, view.severity, view.raised_at, view.raised_wall = "raised", e["severity"], t, wall
            view.escalated, view.raise_seq, view.cleared_at = False, seq, None
        elif state == "escalated":
            view.state, view.escalated, view.severity = "escalated", True, e["severity"]
        elif state == "acknowledged":
            view.state, view.ack_confirmed, view.ack_seq = "acknowledged", True, seq
            view.ack_by, view.ack_at = e.get("by") or view.ack_by, t
        else:
            view.state, view.cleared_at, view.silenced_until = "cleared", t, None
        return view

    def _bump(self, view: AlertView) -> int:
        self.seq += 1
        view.seq = self.seq
        self.alerts[view.alert_id] = view
        self.notify()
        return self.seq

    # -- the station's own transitions -------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[Transition]:
        """Re-alarm acknowledged alerts still open after their interval; end silences that ran out."""
        now = self._clock() if now is None else now
        out: list[Transition] = []
        for view in list(self.alerts.values()):
            if not view.open:
                continue
            due = view.realarm_due(self.policy) if view.acknowledged else None
            if due is not None and now >= due:
                recheck = view.recheck_at is not None and due == view.recheck_at
                view.realarm_count += 1
                view.realarmed_at, view.recheck_at = now, None
                view.realarm_seq = self._bump(view)
                out.append(Transition("recheck" if recheck else "realarm", view))
            if view.silenced_until is not None and now >= view.silenced_until:
                view.silenced_until = None
                self._bump(view)
                out.append(Transition("silence_ended", view))
        return out

    def silence(self, alert_id: str, minutes: float, *, by: str, station: str, now: float | None = None) -> AlertView:
        """Silence an open alert for ``minutes`` (0: end the silence); :class:`SilenceRefused` beyond the floor."""
        now = self._clock() if now is None else now
        view = self.alerts.get(alert_id)
        if view is None or not view.open:
            raise SilenceRefused("this alert is not open on this ward")
        if not (math.isfinite(minutes) and minutes >= 0):
            raise SilenceRefused("minutes must be a number, 0 or more")
        limit = self.policy.silence_max_s(view.rule, view.severity, technical=view.technical)
        if minutes * 60.0 > limit + 1e-6:
            raise SilenceRefused(f"a {view.severity} {view.rule} alert can be silenced for at most "
                                 f"{limit / 60:g} min")
        view.silenced_until = now + minutes * 60.0 if minutes > 0 else None
        view.silenced_by, view.silenced_station = by, station
        self._bump(view)
        return view

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
        """Open alerts (acknowledged ones too, below the alarming ones), in screen order."""
        return sort_active(v for v in self.alerts.values() if v.open)

    def history(self, limit: int = 200) -> list[AlertView]:
        """Cleared alerts, latest change first."""
        closed = (v for v in self.alerts.values() if not v.open)
        return sorted(closed, key=lambda v: -v.seq)[:limit]

    def client(self, view: AlertView) -> dict[str, Any]:
        """``view`` as the page gets it (with this ward's alarm policy)."""
        return view.to_client(self.policy)

    def snapshot(self) -> dict[str, Any]:
        """Everything a freshly loaded page needs."""
        return {"ward": self.ward, "seq": self.seq, "event_id": self.event_id(self.seq),
                "caught_up": self.caught_up, "active": [self.client(v) for v in self.active()],
                "history": [self.client(v) for v in self.history()]}

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
        """Forget cleared alerts whose last change is older than ``HISTORY_KEEP_S``."""
        old = [k for k, v in self.alerts.items() if not v.open and v.updated_at < now - HISTORY_KEEP_S
               and (v.ack_at or 0) < now - HISTORY_KEEP_S]
        for k in old:
            del self.alerts[k]
        return len(old)


def _valid_event(doc: Any) -> dict[str, Any] | None:
    """``doc`` if it looks like an ``AlertEvent.to_dict()`` or a technical alert, else None."""
    if not isinstance(doc, dict):
        return None
    kind = doc.get("kind")
    if kind == TECHNICAL_KIND:
        return _valid_technical(doc)
    if kind not in (None, "clinical"):
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


def _valid_technical(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The technical-alert contract, decoded by its own codec (:func:`rpm_core.technical.decode_technical`:
    ``rule`` ``tech.<code>``, only raised and cleared, ``patient`` an id or null, ``wards`` ids or
    ``"*"``, a known component, the id matching rule, scope and since), and no clinical fields
    (``metric`` ``"technical"``, no value, no ``by``). Returns the normalized document (texts cut
    to the codec's length), or None."""
    if doc.get("metric") != TECHNICAL_METRIC or doc.get("value") is not None or doc.get("by") is not None:
        return None
    try:
        return decode_technical(doc).to_dict()
    except TechnicalAlertError:
        return None


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# -- the Kafka side ---------------------------------------------------------------------------------


class AlertFeed:
    """Reads ``rpm.alerts`` and ``rpm.alert-acks`` from the beginning into an :class:`AlertBoard`."""

    def __init__(self, board: AlertBoard, *, bootstrap: str, keys: KeyRing | None = None) -> None:
        self.board = board
        self.bootstrap = bootstrap
        # With signing keys every record must verify: a forged "cleared" would hide a real alarm.
        self.keys = keys
        self.forged = 0
        self.connected = False

    async def run(self) -> None:
        """Consume forever; restart the consumer (re-reading, idempotently) after errors."""
        from aiokafka.errors import KafkaError

        attempt = 0
        while True:
            try:
                await self._consume()
            except (KafkaError, OSError, TimeoutError) as exc:
                self.connected = False
                attempt += 1
                delay = min(FEED_RETRY_MAX_S, 1.5 ** min(attempt, 10))
                _LOGGER.warning("alert feed lost Kafka (%s); retrying in %.0f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(**kafka_client_kwargs(self.bootstrap), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=200)
        await consumer.start()
        try:
            parts = await self._partitions(consumer)
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            self.connected = True
            recheck = time.monotonic() + PARTITIONS_RECHECK_S
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for tp, records in batches.items():
                    for record in records:
                        if self._verified(tp.topic, record.key, record.value, record.headers):
                            self._apply(tp.topic, record.key, record.value, record.timestamp)
                if time.monotonic() >= recheck:  # partitions added since: read them too, from their beginning
                    recheck = time.monotonic() + PARTITIONS_RECHECK_S
                    async with asyncio.timeout(PARTITIONS_WITHIN_S):
                        for topic in (topics.ALERTS, topics.ALERT_ACKS):
                            await topics.assign_every_partition(consumer, topic, new_at="beginning")
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
            found = await topics.partitions_now(consumer, *wanted)
            if all(found.values()):
                return [TopicPartition(t, p) for t in wanted for p in sorted(found[t])]
            if not waited:
                _LOGGER.warning("waiting for Kafka topics %s to exist (start a worker or rpm demo)", ", ".join(wanted))
                waited = True
            await asyncio.sleep(2.0)

    def _verified(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> bool:
        """Whether the record carries a valid signature (always, without keys); refused ones are counted."""
        if self.keys is None:
            return True
        try:
            self.keys.verify(topic, key, value, headers)
        except SignatureError as exc:
            self.forged += 1
            _LOGGER.warning("refused a record of %s: %s", topic, exc)
            return False
        return True

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


class Supervision:
    """The watchdog watched: its heartbeats' absence is a technical alarm on this screen.

    ``rpm watchdog`` raises technical alerts when a bridge or worker dies; nobody would notice if the
    watchdog itself died, or if Kafka stopped delivering to it and to us. So the station reads the
    watchdog's heartbeats (``rpm.heartbeats``) and, when none has arrived for ``timeout_s``, puts a
    technical alert of its own on the board (``tech.supervision_lost``, this screen only: nothing to
    sign or send); it clears when heartbeats come back. ``timeout_s`` 0: no supervision (a
    deployment without a watchdog, or tests of the station alone).
    """

    RULE: Final = "tech.supervision_lost"

    def __init__(self, board: AlertBoard, *, bootstrap: str, timeout_s: float,
                 clock: Callable[[], float] = time.time, keys: KeyRing | None = None) -> None:
        self.board = board
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self.keys = keys  # with keys, only a signed heartbeat is the watchdog's (anyone may write the topic)
        self.forged = 0
        self._clock = clock
        self.last_beat: float | None = None
        self._since = clock()
        self._raised: Any = None  # the TechnicalAlert on the board, if any

    def note_beat(self, value: bytes | None, headers: Any = None) -> None:
        """Take one ``rpm.heartbeats`` record."""
        from rpm_core.technical import HeartbeatSignatureError, TechnicalAlertError, read_heartbeat

        try:
            beat = read_heartbeat(self.keys, value, headers)
        except HeartbeatSignatureError as exc:
            self.forged += 1
            if self.forged == 1 or self.forged % 100 == 0:
                _LOGGER.warning("%s (%d so far): not taken as the watchdog's", exc, self.forged)
            return
        except TechnicalAlertError:
            return
        if beat.component == "watchdog" and beat.state == "running":
            self.last_beat = self._clock()

    def judge(self) -> None:
        """Raise or clear the alarm on the board as the heartbeats say."""
        from rpm_core.technical import EVERY_WARD, TechnicalAlert

        now = self._clock()
        silent_s = now - (self.last_beat if self.last_beat is not None else self._since)
        if silent_s > self.timeout_s and self._raised is None:
            seen = (f"for {silent_s:.0f} s" if self.last_beat is not None else
                    f"since this station started {silent_s:.0f} s ago")
            self._raised = TechnicalAlert(
                rule=self.RULE, scope="", severity="critical", state="raised", time=now, since=now,
                message=f"No word from rpm watchdog {seen}: if a worker or bridge stopped now, nobody would be "
                        "told. Kafka may be down, or the watchdog stopped.",
                remedy="Call technical support: check rpm watchdog (systemctl status rpm-watchdog) and Kafka.",
                component="watchdog", wards=(EVERY_WARD,))
            self.board.apply_alert(self._raised.to_dict(), wall=now)
            _LOGGER.error("no heartbeat from rpm watchdog %s: supervision lost", seen)
        elif silent_s <= self.timeout_s and self._raised is not None:
            self.board.apply_alert(self._raised.cleared(now).to_dict(), wall=now)
            self._raised = None
            _LOGGER.info("rpm watchdog reports again: supervision restored")

    async def run(self) -> None:
        """Judge every second, whatever Kafka does, while following the heartbeats."""
        follow = asyncio.ensure_future(self._follow())
        try:
            while True:
                await asyncio.sleep(1.0)
                self.judge()
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)

    async def _follow(self) -> None:
        """Read the heartbeats from now on; retry Kafka (or a topic not created yet) forever."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        while True:
            consumer = AIOKafkaConsumer(**kafka_client_kwargs(self.bootstrap), group_id=None, enable_auto_commit=False,
                                        fetch_max_wait_ms=500)
            try:
                await consumer.start()
                async with asyncio.timeout(30):
                    await topics.assign_every_partition(consumer, topics.HEARTBEATS)
                recheck = time.monotonic() + 60.0
                while True:
                    batches = await consumer.getmany(timeout_ms=1000)
                    for records in batches.values():
                        for record in records:
                            self.note_beat(record.value, record.headers)
                    if time.monotonic() >= recheck:  # the topic given more partitions: read them too
                        recheck = time.monotonic() + 60.0
                        async with asyncio.timeout(30):
                            await topics.assign_every_partition(consumer, topics.HEARTBEATS)
            except (KafkaError, OSError, TimeoutError) as exc:
                _LOGGER.warning("supervision cannot read %s (%s); retrying", topics.HEARTBEATS, type(exc).__name__)
                await asyncio.sleep(FEED_RETRY_MAX_S)
            finally:
                with contextlib.suppress(KafkaError, OSError):  # a consumer that never started stops quietly
                    await consumer.stop()


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

        self._producer = AIOKafkaProducer(**kafka_client_kwargs(self.bootstrap), acks="all", linger_ms=0,
                                          request_timeout_ms=10_000)
        await self._producer.start()

    async def send(self, ack: Ack) -> None:
        """Send one ack and wait until Kafka has it."""
        assert self._producer is not None, "start() first"
        value = bytes(ack)
        headers = self._keys.sign(topics.ALERT_ACKS, ack.key, value) if self._keys is not None else None
        await self._producer.send_and_wait(topics.ALERT_ACKS, value=value, key=ack.key, headers=headers)

    def heartbeats(self) -> HeartbeatSender:
        """The station's heartbeats to ``rpm.heartbeats`` (for ``rpm watchdog``), signed with ``keys``,
        through this producer (once started)."""
        async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
            assert self._producer is not None, "start() first"
            await self._producer.send_and_wait(topics.HEARTBEATS, value=value, key=key, headers=headers)

        return HeartbeatSender(send, keys=self._keys, what="this station", logger=_LOGGER)

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()


# -- sparklines -------------------------------------------------------------------------------------


class Sparklines:
    """Last-hour trend of one patient's metric as a small inline SVG, from InfluxDB ``vitals``.

    ``thresholds`` are drawn as dashed lines (from the rules: see :func:`rule_thresholds`).
    """

    def __init__(self, *, url: str | None, db: str, auth: InfluxAuth | None = None,
                 thresholds: Mapping[str, Sequence[Threshold]] | None = None, glucose_unit: str = "mg/dL") -> None:
        self.glucose_unit = glucose_unit
        self.url, self._auth = influx_endpoint(url, auth)
        self.db = db
        self.thresholds: Mapping[str, Sequence[Threshold]] = thresholds or {}
        self._cache: dict[tuple[str, str, str | None, bool], tuple[float, str]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def svg(self, patient: str, metric: str, *, rule: str | None = None, large: bool = False) -> str:
        """The sparkline (cached for ``SPARKLINE_CACHE_S``); an empty SVG without data or InfluxDB.

        ``rule``: draw only that rule's thresholds (an alert's card); else every rule's of ``metric``.
        """
        now = time.monotonic()
        key = (patient, metric, rule, large)
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < SPARKLINE_CACHE_S:
            return hit[1]
        points = await self._points(patient, metric, large=large)
        lines = [t for t in self.thresholds.get(metric, ()) if rule is None or t.rule == rule]
        if metric == "glucose" and self.glucose_unit == "mmol/L":
            points = [(t, v / MG_DL_PER_MMOL_L) for t, v in points]
            lines = [Threshold(t.rule, t.severity, t.value / MG_DL_PER_MMOL_L) for t in lines]
        size: dict[str, Any] = {"width": 560, "height": 190, "window_s": DETAIL_WINDOW_S} if large else {}
        svg = render_sparkline(points, metric=metric, thresholds=lines, now=time.time(),
                               digits=1 if metric == "glucose" and self.glucose_unit == "mmol/L" else None, **size)
        self._cache[key] = (now, svg)
        return svg

    async def _points(self, patient: str, metric: str, *, large: bool = False) -> list[tuple[float, float]]:
        if self.url is None or not is_valid_id(patient) or metric not in METRICS:
            return []
        q = (f"SELECT mean(\"value\") FROM \"vitals\" WHERE \"patient\" = '{patient}' AND \"metric\" = '{metric}' "  # noqa: S608 (ids validated)
             f"AND time > now() - {f'{DETAIL_WINDOW_S}s' if large else SPARKLINE_WINDOW} "
             f"GROUP BY time({'3m' if large else '1m'}) fill(none)")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            doc = await query_async(self._session, self.url, q, db=self.db, auth=self._auth, epoch="s")
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
    series = result_series(doc)
    if not series:
        return []
    rows = series[0]["values"]
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


@dataclass(frozen=True)
class Threshold:
    """A threshold line of a rule: ``value`` at ``severity``."""

    rule: str
    severity: str
    value: float


def rule_thresholds(ruleset: Any) -> dict[str, list[Threshold]]:
    """Threshold lines per metric of the enabled ``threshold`` rules of a detectors ``RuleSet``."""
    out: dict[str, list[Threshold]] = {}
    for rule in getattr(ruleset, "rules", ()):
        if getattr(rule, "type", "") != "threshold" or not rule.enabled:
            continue
        for level in rule.levels:
            out.setdefault(rule.metric, []).append(Threshold(rule.name, level.severity.label, float(level.threshold)))
    return out


def _ago_label(seconds: float) -> str:
    return f"−{seconds / 60:g} min" if seconds <= 3600 else f"−{seconds / 3600:g} h"


_SEVERITY_COLOUR: Final = {"critical": "#ff5252", "warning": "#ffb300", "info": "#42a5f5"}


def render_sparkline(points: list[tuple[float, float]], *, metric: str, width: int = 280, height: int = 78,
                     thresholds: Sequence[Threshold] = (), now: float | None = None,
                     window_s: float = 3600.0, digits: int | None = None) -> str:
    """An SVG of ``points`` (time, value) over the last ``window_s`` up to ``now``: the value scale
    (lowest and highest) on the left, a time axis (−60 min … now) below, the ``thresholds`` as dashed
    lines in their severity's colour, the last point marked. Drawn from numbers only."""
    span = "hour" if window_s <= 3600 else f"{window_s / 3600:g} hours"
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{html.escape(metric)} trend, last {span}">')
    if len(points) < 2:
        return head + (f'<text x="4" y="{height // 2 + 5}" fill="#9aa3ad" font-size="13">'
                       f"no data in the last {span}</text></svg>")
    left, bottom, top = 34, 14, 4
    t1 = max(p[0] for p in points) if now is None else max(now, max(p[0] for p in points))
    t0 = t1 - window_s
    vs = [p[1] for p in points] + [t.value for t in thresholds]
    lo, hi = min(vs), max(vs)
    pad = max((hi - lo) * 0.08, 0.1 if digits else 1.0)
    lo, hi = lo - pad, hi + pad

    def x(t: float) -> float:
        return round(left + max(0.0, t - t0) / window_s * (width - left - 4), 1)

    def y(v: float) -> float:
        return round(height - bottom - (v - lo) / (hi - lo) * (height - bottom - top), 1)

    digits = digits if digits is not None else 2 if metric == "rr_interval" else 0
    parts = [head, f'<rect x="{left}" y="{top}" width="{width - left - 4}" height="{height - bottom - top}" '
                   'fill="none" stroke="#2c363f"/>']
    parts += [f'<line x1="{left}" x2="{width - 4}" y1="{y(th.value)}" y2="{y(th.value)}" '
              f'stroke="{_SEVERITY_COLOUR.get(th.severity, "#9aa3ad")}" stroke-dasharray="4 3" stroke-width="1.2">'
              f"<title>{html.escape(th.rule)} {th.severity} {th.value:g}</title></line>" for th in thresholds]
    parts += [f'<text x="{width - 6}" y="{y(th.value) - 2}" fill="{_SEVERITY_COLOUR.get(th.severity, "#9aa3ad")}" '
              f'font-size="10" text-anchor="end">{th.value:.{digits}f}</text>' for th in thresholds]
    parts += [f'<text x="{left - 3}" y="{y(v) + 4}" fill="#9aa3ad" font-size="11" text-anchor="end">'
              f"{v:.{digits}f}</text>" for v in (lo + pad, hi - pad)]
    for frac, label in ((0.0, _ago_label(window_s)), (0.5, _ago_label(window_s / 2)), (1.0, "now")):
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        parts.append(f'<text x="{x(t0 + frac * window_s)}" y="{height - 2}" fill="#9aa3ad" font-size="10" '
                     f'text-anchor="{anchor}">{label}</text>')
    inside = [(t, v) for t, v in points if t >= t0]
    coords = " ".join(f"{x(t)},{y(v)}" for t, v in inside)
    parts.append(f'<polyline fill="none" stroke="#e8eef5" stroke-width="2" points="{coords}"/>')
    if inside:
        parts.append(f'<circle cx="{x(inside[-1][0])}" cy="{y(inside[-1][1])}" r="3.5" fill="#ffd54f"/>')
    return "".join(parts) + "</svg>"


# -- the web app ------------------------------------------------------------------------------------


@dataclass
class Session:
    """A logged-in station (``kiosk``: the id of the kiosk token it came from)."""

    station: str
    csrf: str
    last_seen: float
    kiosk: str | None = None
    nurse: str | None = None
    nurse_seen: float = 0.0

    def nurse_now(self, now: float) -> str | None:
        """The signed-in nurse, unless idle for longer than ``NURSE_IDLE_S``."""
        if self.nurse is not None and now - self.nurse_seen > NURSE_IDLE_S:
            self.nurse = None
        return self.nurse


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
    refusals_noted: dict[str, float] = field(default_factory=dict)  # lockouts already in rpm.audit
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    audit: AuditLog | None = None
    kiosks: KioskRegistry | None = None
    overview: Overview | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    trail: AuditTrail | None = None  # rpm.audit: the tamper-evident record of people's actions
    # Ward screens (kiosks): live alert streams open per kiosk id, and when the last one closed.
    screens: dict[str, int] = field(default_factory=dict)
    screen_left: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def record(self, action: str, view: AlertView | None = None, *, station: str | None = None, by: str = "",
               note: str = "", minutes: float = 0.0, user: str | None = None) -> None:
        """Queue one audit entry: InfluxDB ``station_audit`` (if any) and, for people's actions, ``rpm.audit``."""
        if self.audit is not None:
            self.audit.record(AuditEntry(
                action=action, ward=self.board.ward, alert_id=view.alert_id if view else "",
                patient=view.patient if view else None, station=station, kind=view.kind if view else "clinical",
                rule=view.rule if view else "", severity=view.severity if view else "", by=by, note=note,
                minutes=minutes, at=time.time(), user=user))
        if action in TRAIL_ACTIONS:
            detail: dict[str, str | int | bool] = {"ward": self.board.ward, "station": station or ""}
            if by:
                detail["by"] = by
            if note:
                detail["note"] = note
            if minutes:
                detail["minutes"] = str(minutes)
            self.trail_event(action, actor=user or station or "?", target=view.alert_id if view else "",
                             patient=(view.patient or "") if view else "", detail=detail)

    def trail_event(self, action: str, *, actor: str, outcome: str = "success", target: str = "",
                    patient: str = "", detail: Mapping[str, str | int | bool] | None = None) -> None:
        """Record a person's action in ``rpm.audit`` (nothing without Kafka)."""
        if self.trail is not None:
            self.trail.record(AuditEvent(action=action, actor=actor, outcome=outcome, target=target,
                                         patient=patient, detail=dict(detail or {})))


STATE_KEY: Final = web.AppKey("station", StationState)
# What people did (rpm.audit); the station's own re-alarms and ended silences stay in station_audit.
TRAIL_ACTIONS: Final = frozenset({"ack", "silence", "unsilence", "kiosk_issued", "kiosk_revoked", "nurse_sign_in"})


def parse_trusted_proxies(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses or networks (``127.0.0.1``, ``10.0.0.0/8``) of reverse proxies whose
    ``X-Forwarded-Proto/For/Host`` the station believes; :class:`ConfigError` naming a bad one."""
    out = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ConfigError(f"trusted proxy {item!r} is not an IP address or network (e.g. 127.0.0.1, "
                                  "10.0.0.0/8)") from exc
    return tuple(out)


def _trusted(networks: tuple[IPNetwork, ...], addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _forwarded_client(networks: tuple[IPNetwork, ...], header: str) -> str | None:
    """The right-most address of ``X-Forwarded-For`` that is not one of our proxies (the client)."""
    for item in reversed([h.strip() for h in header.split(",")][-16:]):
        try:
            ip = ipaddress.ip_address(item)
        except ValueError:
            return None  # a malformed chain: believe none of it
        if not any(ip in net for net in networks):
            return str(ip)
    return None


_HOST_RE: Final = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


@web.middleware
async def _behind_proxy(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """Behind a trusted reverse proxy: the scheme, client address and host it forwards.

    Only a peer listed with ``--trusted-proxy`` is believed; anyone else's ``X-Forwarded-*`` is ignored.
    """
    networks = request.app[STATE_KEY].trusted_proxies
    if not networks or not _trusted(networks, request.remote):
        return await handler(request)
    changes: dict[str, Any] = {}
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if proto in ("http", "https"):
        changes["scheme"] = proto
    client = _forwarded_client(networks, request.headers.get("X-Forwarded-For", ""))
    if client:
        changes["remote"] = client
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    if host and _HOST_RE.fullmatch(host):
        changes["host"] = host
    return await handler(request.clone(**changes) if changes else request)


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
        return _kiosk_session(st, request.cookies.get(KIOSK_COOKIE), now)
    sess.last_seen = now
    return sess


def _kiosk_session(st: StationState, token: str | None, now: float) -> Session | None:
    """The session of a valid kiosk token (made on first use, so it survives a server restart)."""
    if st.kiosks is None or not token:
        return None
    kiosk = st.kiosks.verify(token)
    entry = st.roster.stations.get(kiosk.station) if kiosk else None
    if kiosk is None or entry is None or entry.ward != st.board.ward:
        return None
    key = f"kiosk:{kiosk.id}"
    sess = st.sessions.get(key)
    if sess is None:
        sess = st.sessions[key] = Session(station=kiosk.station, csrf=secrets.token_urlsafe(32), last_seen=now,
                                          kiosk=kiosk.id)
        _LOGGER.info("kiosk %s of station %s reconnected", kiosk.id, kiosk.station)
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


def _recent(st: StationState, key: str, now: float) -> int:
    recent = [t for t in st.failures.get(key, []) if now - t < LOGIN_WINDOW_S]
    if recent:
        st.failures[key] = recent
    else:
        st.failures.pop(key, None)
    return len(recent)


def _locked_out(st: StationState, station: str, client: str, now: float) -> bool:
    """Too many wrong passwords for this station from this client, or from this client at all."""
    return (_recent(st, f"{station[:64]}|{client}", now) >= LOGIN_MAX_FAILURES
            or _recent(st, f"*|{client}", now) >= LOGIN_MAX_FAILURES_PER_CLIENT)


def _known_or_hashed(name: str, known: Mapping[str, object]) -> str:
    """``name`` when it is a known station or badge, else ``unknown:<hash>``: a password typed into
    the name field by mistake must not land in the audit trail, yet repeated attempts still match."""
    if name in known:
        return name
    return f"unknown:{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _audit_failure(st: StationState, action: str, who: str, detail: dict[str, str | int | bool]) -> None:
    st.trail_event(action, actor=who, outcome="failure", target=who, detail=detail)


def _first_refusal(st: StationState, key: str, now: float) -> bool:
    """Whether a locked-out attempt for ``key`` is the first of its lockout window (then it is recorded)."""
    last = st.refusals_noted.get(key)
    if last is not None and now - last < LOGIN_WINDOW_S:
        return False
    st.refusals_noted[key] = now
    while len(st.refusals_noted) > FAILURE_KEYS_MAX:
        st.refusals_noted.pop(next(iter(st.refusals_noted)))
    return True


def _count_failure(st: StationState, station: str, client: str, now: float) -> None:
    for key in (f"{station[:64]}|{client}", f"*|{client}"):
        st.failures.setdefault(key, []).append(now)
    while len(st.failures) > FAILURE_KEYS_MAX:  # bounded memory under a flood of made-up names
        st.failures.pop(next(iter(st.failures)))


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login: station + password → session cookie."""
    st = request.app[STATE_KEY]
    if not _same_origin(request):
        raise web.HTTPForbidden(text="cross-site login refused")
    addr, now = request.remote or "?", time.time()
    form = await _form(request)
    station, password = str(form.get("station", "")).strip(), str(form.get("password", ""))
    if _locked_out(st, station, addr, now):
        if _first_refusal(st, f"{station[:64]}|{addr}", now):  # a flood is recorded once per window
            _audit_failure(st, "login", _known_or_hashed(station, st.roster.stations),
                           {"ward": st.board.ward, "client": addr, "locked_out": True})
        return _login_page("Too many wrong passwords. Wait 5 minutes, then try again.", status=429)
    entry = await asyncio.to_thread(st.roster.check_login, station, password)
    if entry is None or entry.ward != st.board.ward:
        _count_failure(st, station, addr, now)
        _LOGGER.warning("failed nurse-station login for station %r from %s", station[:64], addr)
        _audit_failure(st, "login", _known_or_hashed(station, st.roster.stations),
                       {"ward": st.board.ward, "client": addr})
        return _login_page("Wrong station or password.", status=401)
    kiosk_token, kiosk_id = None, None
    if form.get("kiosk"):
        if st.kiosks is None:
            return _login_page("This station server keeps no kiosk tokens (start it with --state-dir). "
                               "Log in without the kiosk box.", status=400)
        kiosk, kiosk_token = st.kiosks.issue(entry.id, label=str(form.get("label", "")))
        kiosk_id = kiosk.id
        st.record("kiosk_issued", station=entry.id, note=kiosk.id)
    token = secrets.token_urlsafe(32)
    st.sessions[token] = Session(station=entry.id, csrf=secrets.token_urlsafe(32), last_seen=now, kiosk=kiosk_id)
    st.trail_event("login", actor=entry.id, target=entry.id,
                   detail={"ward": st.board.ward, "client": addr, "kiosk": kiosk_id or ""})
    _LOGGER.info("station %s logged in from %s%s", entry.id, addr, " as a kiosk" if kiosk_token else "")
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.secure, path="/")
    if kiosk_token:
        resp.set_cookie(KIOSK_COOKIE, kiosk_token, httponly=True, samesite="Strict", secure=request.secure,
                        path="/", max_age=KIOSK_COOKIE_MAX_AGE_S)
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
        st.trail_event("logout", actor=sess.station, target=sess.station, detail={"ward": st.board.ward})
        if st.kiosks is not None:  # a kiosk cookie of this station, whichever session it came with
            kiosk = st.kiosks.verify(request.cookies.get(KIOSK_COOKIE))
            if kiosk is not None and kiosk.station == sess.station and st.kiosks.revoke(kiosk.id):
                st.sessions.pop(f"kiosk:{kiosk.id}", None)
                st.record("kiosk_revoked", station=sess.station, note=kiosk.id)
    resp = web.Response(status=303, headers={"Location": "/login"})
    resp.del_cookie(COOKIE, path="/", samesite="Strict")
    resp.del_cookie(KIOSK_COOKIE, path="/", samesite="Strict")
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
                              "ward": st.board.ward, "ward_name": st.ward_name, "csrf": sess.csrf,
                              "kiosk": sess.kiosk is not None, "heartbeat_s": SSE_HEARTBEAT_S,
                              "nurses": bool(st.roster.nurses), "nurse": _nurse_info(st, sess),
                              "glucose_unit": _glucose_unit(st),
                              "heartbeat_deadline_s": HEARTBEAT_DEADLINE_S},
                             dumps=lambda d: orjson.dumps(d).decode())


def _ward(st: StationState) -> Ward | None:
    return st.roster.wards.get(st.board.ward) if st.roster.configured else None


def _glucose_unit(st: StationState) -> str:
    ward = _ward(st)
    return ward.glucose_unit if ward is not None else "mg/dL"


def _nurse_info(st: StationState, sess: Session) -> dict[str, str] | None:
    nurse_id = sess.nurse_now(time.time())
    nurse = st.roster.nurses.get(nurse_id) if nurse_id else None
    return {"id": nurse.id, "name": nurse.name} if nurse else None


async def alerts(request: web.Request) -> web.Response:
    """GET /api/alerts: the snapshot the page starts from."""
    _require(request)
    return web.json_response(request.app[STATE_KEY].board.snapshot(), dumps=lambda d: orjson.dumps(d).decode())


def _json_error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(text=orjson.dumps({"error": message}).decode(), content_type="application/json")


async def _json_body(request: web.Request, sess: Session) -> dict[str, Any]:
    """The posted JSON object (CSRF checked); 415/400 otherwise."""
    _check_csrf(request, sess)
    if request.content_type != "application/json":
        raise _json_error(web.HTTPUnsupportedMediaType, "send JSON")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _json_error(web.HTTPBadRequest, "send a JSON object") from exc
    if not isinstance(body, dict) or not isinstance(body.get("alert_id"), str):
        raise _json_error(web.HTTPBadRequest, "send a JSON object with alert_id")
    return body


def _note(body: dict[str, Any]) -> str:
    """The optional free-text note of an acknowledgement: printable, at most ``NOTE_MAX`` characters."""
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > NOTE_MAX or not all(ch.isprintable() for ch in note):
        raise _json_error(web.HTTPBadRequest, f"note must be printable text of at most {NOTE_MAX} characters")
    return note.strip()


def _acting(st: StationState, sess: Session, body: dict[str, Any]) -> tuple[str, str | None]:
    """(name, nurse id) of who acts: the signed-in nurse when the roster has nurses (403 otherwise),
    else the name typed on the page (``by``; checked by the caller)."""
    if not st.roster.nurses:
        by = body.get("by", "")
        return (by if isinstance(by, str) else ""), None
    now = time.time()
    nurse_id = sess.nurse_now(now)
    nurse = st.roster.nurses.get(nurse_id) if nurse_id else None
    if nurse is None:
        raise web.HTTPForbidden(text='{"error": "sign in with your badge number and PIN first", "need_nurse": true}',
                                content_type="application/json")
    sess.nurse_seen = now
    return nurse.name, nurse.id


async def nurse_sign_in(request: web.Request) -> web.Response:
    """POST /api/nurse ``{"nurse", "pin"}``: the nurse acting at this station (``{}``: sign out)."""
    sess = _require(request)
    st = request.app[STATE_KEY]
    _check_csrf(request, sess)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _json_error(web.HTTPBadRequest, "send a JSON object") from exc
    if body == {}:
        sess.nurse = None
        return web.json_response({"nurse": None})
    nurse_id, pin = (body.get("nurse"), body.get("pin")) if isinstance(body, dict) else (None, None)
    if not isinstance(nurse_id, str) or not isinstance(pin, str) or not 0 < len(pin) <= 64 or not is_valid_id(nurse_id):
        raise _json_error(web.HTTPBadRequest, "send nurse (badge number) and pin")
    client, now = request.remote or "?", time.time()
    if _locked_out(st, f"nurse:{nurse_id}", client, now):
        raise _json_error(web.HTTPTooManyRequests, "too many wrong PINs: wait 5 minutes")
    nurse = await asyncio.to_thread(st.roster.check_nurse, nurse_id, pin, st.board.ward)
    if nurse is None:
        _count_failure(st, f"nurse:{nurse_id}", client, now)
        _audit_failure(st, "nurse_sign_in", _known_or_hashed(nurse_id, st.roster.nurses),
                       {"ward": st.board.ward, "station": sess.station, "client": client})
        _LOGGER.warning("failed nurse sign-in for badge %r at station %s", nurse_id[:64], sess.station)
        # 403, not 401: the station's session is fine (a 401 means "log in again" to the page)
        raise _json_error(web.HTTPForbidden, "wrong badge number or PIN")
    sess.nurse, sess.nurse_seen = nurse.id, now
    st.record("nurse_sign_in", station=sess.station, by=nurse.name, user=nurse.id)
    _LOGGER.info("nurse %s signed in at station %s", nurse.id, sess.station)
    return web.json_response({"nurse": {"id": nurse.id, "name": nurse.name}})


async def acknowledge(request: web.Request) -> web.Response:
    """POST /api/ack ``{"alert_id", "by", "note"?}`` → ``rpm.alert-acks``; 202 once Kafka has it."""
    sess = _require(request)
    st = request.app[STATE_KEY]
    body = await _json_body(request, sess)
    note = _note(body)
    recheck = body.get("recheck_min")
    if recheck is not None and (not _finite(recheck) or not 0 < float(recheck) <= RECHECK_MAX_MIN):  # type: ignore[arg-type]
        raise _json_error(web.HTTPBadRequest, f"recheck_min must be minutes, more than 0 and at most {RECHECK_MAX_MIN}")
    by, user = _acting(st, sess, body)
    try:
        view = st.board.alerts.get(body["alert_id"])
        if view is None:
            raise web.HTTPNotFound(text='{"error": "no such alert on this ward"}', content_type="application/json")
        if view.technical or view.patient is None:
            raise _json_error(web.HTTPConflict, "a technical alarm cannot be acknowledged: it clears when its "
                                                "cause is fixed (you may silence it)")
        ack = Ack(alert_id=view.alert_id, patient=view.patient, by=by, at=time.time(), station=sess.station)
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
    st.board.apply_ack(ack, note=note, recheck_s=float(recheck) * 60.0 if recheck is not None else None)
    st.record("ack", view, station=sess.station, by=ack.by, note=note, user=user,
              minutes=float(recheck) if recheck is not None else 0.0)
    _LOGGER.info("alert %s of patient %s acknowledged at station %s", ack.alert_id, ack.patient, ack.station)
    return web.json_response({"status": "sent", "alert_id": ack.alert_id}, status=202)


async def silence(request: web.Request) -> web.Response:
    """POST /api/silence ``{"alert_id", "minutes", "by"}``: no sound for that alert for a while (0: end it).

    The alert stays on the screen; the policy's ``silence_max`` is the limit (409 beyond it).
    """
    sess = _require(request)
    st = request.app[STATE_KEY]
    body = await _json_body(request, sess)
    by, user = _acting(st, sess, body)
    raw_minutes = body.get("minutes")
    if not _finite(raw_minutes) or not isinstance(by, str) or not 0 < len(by.strip()) <= 64 or not by.isprintable():
        raise _json_error(web.HTTPBadRequest, "send minutes (a number) and by (your name, 1-64 characters)")
    minutes = float(raw_minutes)  # type: ignore[arg-type]  # _finite: an int or float
    try:
        view = st.board.silence(body["alert_id"], minutes, by=by.strip(), station=sess.station)
    except SilenceRefused as exc:
        raise _json_error(web.HTTPConflict, str(exc)) from exc
    st.record("silence" if view.silenced_until else "unsilence", view, station=sess.station, by=by.strip(),
              minutes=minutes, user=user)
    _LOGGER.info("alert %s silenced for %g min at station %s", view.alert_id, minutes, sess.station)
    return web.json_response(st.board.client(view), dumps=lambda d: orjson.dumps(d).decode())


async def sparkline(request: web.Request) -> web.Response:
    """GET /api/sparkline?alert_id=…: the last hour of the alert's metric, as SVG."""
    _require(request)
    st = request.app[STATE_KEY]
    view = st.board.alerts.get(request.query.get("alert_id", ""))
    if view is None or view.patient is None:
        raise web.HTTPNotFound(text="no such alert on this ward")
    svg = await st.sparklines.svg(view.patient, view.metric, rule=view.rule)
    return web.Response(text=svg, content_type="image/svg+xml")


async def overview(request: web.Request) -> web.Response:
    """GET /api/overview: a tile per patient of the ward (current values, trend, data age, device)."""
    _require(request)
    st = request.app[STATE_KEY]
    tiles = await st.overview.tiles() if st.overview is not None else {}
    ward = st.roster.wards.get(st.board.ward) if st.roster.configured else None
    if ward is not None:
        patients = sorted(ward.patients)
    else:  # ward "all": every patient with data or an alert
        patients = sorted(set(tiles) | {v.patient for v in st.board.alerts.values() if v.patient})
    error = st.overview.error if st.overview is not None else "no InfluxDB configured"
    beds = ward.beds if ward is not None else {}
    body = {"now": time.time(), "error": error,
            "patients": [{"patient": p, **tiles.get(p, {}),
                          **({"bed": beds[p].bed, "name": beds[p].name} if p in beds else {})} for p in patients]}
    return web.json_response(body, dumps=lambda d: orjson.dumps(d).decode())


async def trend_svg(request: web.Request) -> web.Response:
    """GET /api/trend?patient=…&metric=…: the last hour of one metric of a patient of this ward, as SVG."""
    _require(request)
    st = request.app[STATE_KEY]
    patient, metric = request.query.get("patient", ""), request.query.get("metric", "")
    if not is_valid_id(patient) or metric not in METRICS or not st.roster.in_ward(patient, st.board.ward):
        raise web.HTTPNotFound(text="no such patient or metric on this ward")
    return web.Response(text=await st.sparklines.svg(patient, metric, large=True), content_type="image/svg+xml")


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 once the board has caught up with Kafka."""
    st = request.app[STATE_KEY]
    board = st.board
    audit = ({"written": st.audit.written, "failed": st.audit.failed, "problem": st.audit.problem}
             if st.audit else None)
    trail = ({"written": st.trail.written, "failed": st.trail.failed, "lost": st.trail.lost,
              "problem": st.trail.problem} if st.trail else None)
    return web.json_response({"caught_up": board.caught_up, "alerts": len(board.alerts), "audit": audit,
                              "audit_trail": trail},
                             status=200 if board.caught_up else 503)


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {orjson.dumps(data).decode()}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """GET /api/events: Server-Sent Events; catches up from ``Last-Event-ID`` (or ``?last=``)."""
    sess = _require(request)
    st = request.app[STATE_KEY]
    if sess.kiosk is not None:  # a ward screen: while no stream of it is open, it shows nothing
        st.screens[sess.kiosk] = st.screens.get(sess.kiosk, 0) + 1
        try:
            return await _events(request, st)
        finally:
            st.screens[sess.kiosk] -= 1
            if not st.screens[sess.kiosk]:
                st.screen_left[sess.kiosk] = time.time()
    return await _events(request, st)


async def _events(request: web.Request, st: StationState) -> web.StreamResponse:
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
            await resp.write(_sse("alert", board.client(view), board.event_id(view.seq)))
        seq = max(seq, board.seq)
        if board.caught_up != caught_up:
            caught_up = board.caught_up
            await resp.write(_sse("status", {"caught_up": caught_up}))
        await board.wait_change(seq, within_s=SSE_HEARTBEAT_S)
        if board.seq == seq and board.caught_up == caught_up:
            # an event, not a comment: EventSource hides comments from the page, which must hear it
            await resp.write(b"event: ping\ndata: {}\n\n")


def create_app(state: StationState) -> web.Application:
    """The aiohttp application of one station."""
    app = web.Application(middlewares=[_behind_proxy, _security_headers], client_max_size=64 * 1024)
    app[STATE_KEY] = state
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/session", session_info)
    app.router.add_get("/api/alerts", alerts)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/ack", acknowledge)
    app.router.add_post("/api/silence", silence)
    app.router.add_post("/api/nurse", nurse_sign_in)
    app.router.add_get("/api/sparkline", sparkline)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/trend", trend_svg)
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
    state_dir: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    # no heartbeat of rpm watchdog for this long: a technical alarm on the screen (0: not watched)
    supervision_timeout_s: float = 45.0


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


def _rules_path(settings: Settings) -> Path:
    """The rules file the workers use (``RPM_RULES``), else the built-in one, said in the log."""
    path = Path(settings.rules_path)
    if path.is_file():
        return path
    _LOGGER.warning("rules file %s not found: re-alarm intervals, silence limits and threshold lines come from "
                    "the built-in rules; set RPM_RULES to the workers' file", path)
    return default_rules_path()


def refuse_weak_passwords(roster: Roster, ward: str) -> None:
    """:class:`ConfigError` when a station of ``ward`` logs in with a published or common password
    (:data:`WEAK_PASSWORDS`, the example roster's among them)."""
    for station in roster.stations.values():
        if station.ward == ward and any(station.password.verify(p) for p in WEAK_PASSWORDS):
            raise ConfigError(f"station {station.id!r} uses an example or common password: make a new one with "
                              "`rpm nurse-station hash-password` and replace its hash")


async def serve(settings: Settings, roster: Roster, options: StationOptions,
                on_ready: Callable[[str], None] | None = None) -> None:
    """Run the station until SIGINT/SIGTERM."""
    ward = resolve_ward(roster, options.ward)
    bootstrap = settings.kafka_bootstrap()
    rules_path = _rules_path(settings)
    board = AlertBoard(ward=ward, roster=roster, policy=load_alarm_policy(rules_path))
    keys = settings.key_ring()
    if keys is None:
        _LOGGER.warning("no RPM_SIGNING_KEYS_FILE: alerts are shown and acknowledgements sent without signatures")
    sender = AckSender(bootstrap=bootstrap, keys=keys)
    influx_url, influx_auth = influx_endpoint(settings.influx_url, settings.influx_auth())
    sparklines = Sparklines(url=influx_url, db=settings.influx_db, auth=influx_auth,
                            thresholds=rule_thresholds(load_rules(rules_path)),
                            glucose_unit=roster.wards[ward].glucose_unit if roster.configured else "mg/dL")
    audit = AuditLog(url=influx_url, db=settings.influx_db, auth=influx_auth)
    trail = AuditTrail(bootstrap=bootstrap, keys=keys, via="nurse-station")
    tiles = Overview(url=influx_url, db=settings.influx_db, auth=influx_auth)
    state = StationState(board=board, roster=roster, sender=sender, sparklines=sparklines,
                         ward_name=roster.wards[ward].name if ward in roster.wards else ward, audit=audit,
                         kiosks=KioskRegistry(options.state_dir) if options.state_dir else None, overview=tiles,
                         trusted_proxies=parse_trusted_proxies(options.trusted_proxies), trail=trail)
    runner = web.AppRunner(create_app(state), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sender.start()
        await trail.start()
        await _audit_logins(trail, roster, bootstrap=bootstrap, keys=keys)
        await web.TCPSite(runner, options.host, options.port).start()
        url = f"http://{options.host}:{runner.addresses[0][1]}/"
        _LOGGER.info("nurse station for ward %s at %s", ward, url)
        if on_ready:
            on_ready(url)
        alert_feed = AlertFeed(board, bootstrap=bootstrap, keys=keys)
        instance = f"{socket.gethostname()}:{runner.addresses[0][1]}"
        heartbeats = sender.heartbeats()
        async with asyncio.TaskGroup() as tg:
            feed = tg.create_task(alert_feed.run(), name="alert-feed")
            pruner = tg.create_task(_prune_forever(board), name="prune")
            ticker = tg.create_task(tick_forever(state), name="tick")
            writer = tg.create_task(audit.run(), name="audit")
            trail_writer = tg.create_task(trail.run(), name="audit-trail")
            beats = tg.create_task(heartbeats.forever(lambda: station_heartbeat(state, alert_feed, instance=instance)),
                                   name="heartbeats")
            tasks = [feed, pruner, ticker, writer, trail_writer, beats]
            if options.supervision_timeout_s > 0:
                tasks.append(tg.create_task(Supervision(board, bootstrap=bootstrap, keys=keys,
                                                        timeout_s=options.supervision_timeout_s).run(),
                                            name="supervision"))
            await stop.wait()
            await audit.drain()
            await trail.drain()
            for task in tasks:
                task.cancel()
        await heartbeats.last(station_heartbeat(state, alert_feed, instance=instance, status="stopping"))
    finally:
        await runner.cleanup()
        await sender.stop()
        await trail.stop()
        await sparklines.close()
        await tiles.close()


async def _audit_logins(trail: AuditTrail, roster: Roster, *, bootstrap: str, keys: KeyRing | None) -> None:
    """Record which station logins and nurse PINs this station starts with (``roster.loaded`` /
    ``roster.changed``: a station's password or a nurse's PIN added, replaced or removed)."""
    from rpm_core.roster import CREDENTIALS_ENV

    def read() -> tuple[str, bytes]:
        if roster.source is not None and Path(roster.source).is_file():
            return roster.source, Path(roster.source).read_bytes()
        return CREDENTIALS_ENV, os.environ.get(CREDENTIALS_ENV, "").encode()

    target, content = await asyncio.to_thread(read)
    trail.record(await config_load_event(bootstrap, keys, "roster", target, content, actor=os_user()))


def dark_screens(state: StationState, now: float) -> list[str]:
    """This ward's live kiosks (not revoked) with no alert stream open for ``DARK_AFTER_S``: the
    browser closed, its computer off or its network down. By label and id, at most 50."""
    from rpm_core.technical import MAX_DARK_SCREENS, MAX_SCREEN_NAME_CHARS

    if state.kiosks is None:
        return []
    dark = []
    for kiosk in state.kiosks.kiosks():
        entry = state.roster.stations.get(kiosk.station)
        if kiosk.revoked is not None or entry is None or entry.ward != state.board.ward:
            continue
        since = max(state.screen_left.get(kiosk.id, state.started), kiosk.issued)
        if not state.screens.get(kiosk.id) and now - since >= DARK_AFTER_S:
            name = f"{kiosk.label} ({kiosk.id})" if kiosk.label else kiosk.id
            dark.append(name[-MAX_SCREEN_NAME_CHARS:])
    return dark[:MAX_DARK_SCREENS]


def station_heartbeat(state: StationState, feed: AlertFeed, *, instance: str, status: str = "running",
                      now: float | None = None) -> Heartbeat:
    """The station's heartbeat: unhealthy while its alert feed cannot read Kafka (its screens show no
    new alert); a warning (``problem`` while healthy) while what people do at it is not all recorded
    (``rpm.audit`` or InfluxDB ``station_audit`` failing, or entries lost lately)."""
    problems = [p for p in (state.trail.problem if state.trail else None,
                            state.audit.problem if state.audit else None) if p]
    if not feed.connected:
        problems.insert(0, "its alert feed cannot read rpm.alerts from Kafka, so its screens show no new alert")
    now = time.time() if now is None else now
    return Heartbeat(component="station", instance=instance, time=now, state=status,  # type: ignore[arg-type]
                     healthy=feed.connected, problem="; ".join(problems) or None,
                     messages=state.board.seq, ward=state.board.ward, dark_screens=tuple(dark_screens(state, now)))


async def tick_forever(state: StationState) -> None:
    """Every ``TICK_S``: re-alarm what is due, end silences that ran out, audit both."""
    while True:
        await asyncio.sleep(TICK_S)
        if not state.board.caught_up:
            continue  # an interval is judged on the whole history, not half of it
        for change in state.board.tick():
            state.record(change.action, change.view)
            if change.action == "realarm":
                _LOGGER.info("alert %s of patient %s alarms again (acknowledged, still open)",
                             change.view.alert_id, change.view.patient)


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
    refuse_weak_passwords(roster, ward)
    parse_trusted_proxies(options.trusted_proxies)
    asyncio.run(serve(settings, roster, options, on_ready=(lambda url: on_ready(ward, url)) if on_ready else None))
    return 0
