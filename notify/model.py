"""The frozen models a routes file parses into (see :mod:`notify.loader` and ``docs/routing.md``).

Everything here is plain data plus a few pure helpers (time windows, matching); nothing reads files,
the environment or the network. Times are UTC epoch seconds; time windows are evaluated in their
own time zone, so "22:00-07:00 Europe/Berlin" follows daylight saving.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

SEVERITY_RANK: Final = {"info": 1, "warning": 2, "critical": 3}
ChannelType = Literal["nurse_station", "webhook", "email", "edge_agent"]
CHANNEL_TYPES: Final[tuple[ChannelType, ...]] = ("nurse_station", "webhook", "email", "edge_agent")
GROUP_BY_LABELS: Final = ("patient", "rule", "metric", "severity")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY: Final = 24 * 60


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window ``start``-``end`` (minutes after local midnight) on some weekdays, in ``tz``.

    ``end`` before ``start`` crosses midnight (22:00-07:00); the weekday is the one the window starts on.
    ``start == end`` is the whole day.
    """

    name: str
    start_min: int
    end_min: int
    days: frozenset[int]  # 0 = Monday
    tz: ZoneInfo

    def contains(self, t: float) -> bool:
        """Whether the instant ``t`` lies in the window."""
        return self._window_end(t) is not None

    def end_after(self, t: float) -> float:
        """When the window that contains ``t`` ends (``t`` itself if it does not contain it)."""
        end = self._window_end(t)
        return t if end is None else end

    def _window_end(self, t: float) -> float | None:
        local = dt.datetime.fromtimestamp(t, self.tz)
        minute = local.hour * 60 + local.minute + local.second / 60.0
        length = (self.end_min - self.start_min) % MINUTES_PER_DAY or MINUTES_PER_DAY
        for back in (0, 1):  # a window that crosses midnight started yesterday
            day = local.date() - dt.timedelta(days=back)
            since_start = minute + back * MINUTES_PER_DAY - self.start_min
            if day.weekday() in self.days and 0 <= since_start < length:
                start = dt.datetime.combine(day, dt.time(self.start_min // 60, self.start_min % 60), self.tz)
                return (start + dt.timedelta(minutes=length)).timestamp()
        return None


@dataclass(frozen=True, slots=True)
class Matcher:
    """What an alert must be to take a route; ``None`` matches anything, a set any of its members."""

    wards: frozenset[str] | None = None
    patients: frozenset[str] | None = None
    rules: frozenset[str] | None = None
    severities: frozenset[str] | None = None
    metrics: frozenset[str] | None = None
    min_severity: str | None = None
    during: tuple[TimeWindow, ...] = ()
    not_during: tuple[TimeWindow, ...] = ()

    def matches(self, *, patient: str, ward: str | None, rule: str, severity: str, metric: str, at: float) -> bool:
        """Whether an alert with these labels, routed at ``at``, matches."""
        labels_ok = (
            _member(self.wards, ward)
            and _member(self.patients, patient)
            and _member(self.rules, rule)
            and _member(self.severities, severity)
            and _member(self.metrics, metric)
            and (self.min_severity is None or SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity])
        )
        if not labels_ok:
            return False
        if self.during and not any(w.contains(at) for w in self.during):
            return False
        return not any(w.contains(at) for w in self.not_during)


def _member(allowed: frozenset[str] | None, value: str | None) -> bool:
    return allowed is None or (value is not None and value in allowed)


# A host name (RFC 1123 labels) or an IP address; nothing else may follow `allow_http_host:`.
_HOST_RE: Final = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def http_host_problem(host: str) -> str | None:
    """Why ``host`` cannot be an ``allow_http_host`` (a plain host name or IP address), or None."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != host.lower() or not _HOST_RE.fullmatch(host):
            return "write one host name (lower case) or IP address, without scheme, port, path or wildcards"
    return None


def webhook_url_problem(url: str, allow_http_host: str | None = None) -> str | None:
    """Why ``url`` may not be a webhook's, or None.

    ``https://`` (lower case) with a host and no user information, fragment, white space or
    backslash; ``http://`` only when ``allow_http_host`` names exactly its host (a pager gateway on
    the same host, a test receiver on 127.0.0.1). Health data must not cross a network in clear,
    and ``https://pager@evil.example`` or ``http://127.0.0.1.evil.example`` are not what they seem.
    """
    if any(ch.isspace() or not ch.isprintable() for ch in url) or "\\" in url:
        return "white space, control characters or backslashes in the URL"
    scheme, sep, _rest = url.partition("://")
    if not sep or scheme not in ("https", "http"):
        what = "write the scheme in lower case" if scheme.lower() in ("https", "http") else "not an http(s) URL"
        return f"{what}: https://host/path"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL (host or port)"
    if "@" in parts.netloc:
        return "no user information (user:password@) in a webhook URL: the HMAC secret authenticates us"
    if parts.fragment or "#" in url:
        return "no fragment (#…) in a webhook URL"
    host = parts.hostname or ""
    if not host or (port is not None and not 0 < port < 65536):
        return "the URL needs a host (and a port of 1-65535 if any)"
    if scheme == "http":
        if allow_http_host is None:
            return ("plain http:// sends health data unencrypted: use https://, or allow it for exactly this host "
                    f"with `allow_http_host: {host}`")
        if host != allow_http_host.lower():
            return f"plain http:// is allowed only to {allow_http_host!r}, not to {host!r}"
    return None


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One way of reaching a receiver. Fields beyond ``type`` and ``name`` belong to some types only.

    - ``nurse_station``: nothing (the station shows ``rpm.alerts`` live; the receipt says so);
    - ``webhook``: ``url`` (``https://``; ``http://`` only to ``allow_http_host``), ``secret_env`` (the
      variable holding the HMAC key);
    - ``email``: ``to`` (addresses; the server is the file's ``smtp:``);
    - ``edge_agent``: ``messages`` (rule → the text the patient reads), ``default_message``.
    """

    type: ChannelType
    name: str
    receiver: str
    url: str | None = None
    secret_env: str | None = None
    to: tuple[str, ...] = ()
    messages: Mapping[str, str] = field(default_factory=dict)
    default_message: str | None = None
    recipient: str | None = None  # a label for the audit ("on-call nurse phone"); default: derived
    allow_http_host: str | None = None  # webhook: plain http:// allowed to exactly this host

    @property
    def tag(self) -> str:
        """The ``channel`` tag of its audit points: ``<receiver>.<name>``."""
        return f"{self.receiver}.{self.name}"


@dataclass(frozen=True, slots=True)
class Receiver:
    """A named set of channels notified together."""

    name: str
    channels: tuple[ChannelSpec, ...]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of an escalation chain: notify ``receiver`` once ``after_s`` passed since the chain began."""

    after_s: float
    receiver: str


@dataclass(frozen=True, slots=True)
class Escalation:
    """Who is notified, in order, while an alert stays unacknowledged."""

    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Timing:
    """Grouping and repetition of one route (Alertmanager's meaning)."""

    group_by: tuple[str, ...] = ("patient",)
    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 4 * 3600.0


@dataclass(frozen=True, slots=True)
class Route:
    """A node of the routing tree; children are tried in order, the first match wins unless ``continue_``."""

    id: str
    matcher: Matcher
    escalation: Escalation
    timing: Timing
    quiet_hours: tuple[TimeWindow, ...] = ()
    continue_: bool = False
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True, slots=True)
class InhibitRule:
    """While an alert of severity ``source`` is open, alerts of ``targets`` with equal ``equal`` labels are held."""

    source: str
    targets: frozenset[str]
    equal: tuple[str, ...] = ("patient",)


@dataclass(frozen=True, slots=True)
class Digest:
    """A read-only caregiver summary: daily at ``daily_at`` (minutes after midnight) and/or on critical alerts."""

    name: str
    receiver: str
    matcher: Matcher
    daily_at_min: int | None
    on_critical: bool
    tz: ZoneInfo


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """The mail relay of ``email`` channels; credentials are named by variable, never written in the file."""

    host: str
    port: int = 587
    starttls: bool = True
    sender: str = "rpm-alerts@localhost"
    username_env: str | None = None
    password_env: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """Retries and timeouts of every channel."""

    retries: int = 3
    timeout_s: float = 10.0
    backoff_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Routes:
    """A whole routes file."""

    route: Route
    receivers: Mapping[str, Receiver]
    escalations: Mapping[str, Escalation]
    inhibit: tuple[InhibitRule, ...] = ()
    digests: tuple[Digest, ...] = ()
    smtp: SmtpServer | None = None
    delivery: Delivery = Delivery()
    version: int = 1
    source: str = "<routes>"
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    def secret_envs(self) -> frozenset[str]:
        """Every environment variable a channel needs at start-up (webhook secrets, SMTP credentials)."""
        names = {c.secret_env for r in self.receivers.values() for c in r.channels if c.secret_env}
        if self.smtp is not None:
            names |= {n for n in (self.smtp.username_env, self.smtp.password_env) if n}
        return frozenset(names)

    def webhook_secret_envs(self) -> frozenset[str]:
        """The variables holding webhook HMAC keys (checked for strength at start)."""
        return frozenset(c.secret_env for r in self.receivers.values() for c in r.channels
                         if c.type == "webhook" and c.secret_env)

    def find_route(self, route_id: str) -> Route | None:
        """The route with this id, anywhere in the tree."""
        stack = [self.route]
        while stack:
            route = stack.pop()
            if route.id == route_id:
                return route
            stack.extend(route.routes)
        return None
