"""Load and validate ``routes.yaml`` into the frozen models of :mod:`notify.model`.

Validated the way ``alert_rules.yaml`` is (:mod:`rpm_core.rules`, whose node-walking parser this
extends): the file is composed into PyYAML's node tree so each value keeps its line, unknown keys
are rejected, and every error is a :class:`~notify.errors.RoutesError` naming the file, the line,
the field and the fix. Cross-references (receivers, escalations, time windows, patient groups) are
checked here too, so a typo stops ``rpm notifier`` at start-up rather than at 3 a.m.

Schema (version 1; ``routes.yaml`` at the repository root is the commented example)::

    version: 1
    timezone: Europe/Berlin                  # of time windows and digests (default UTC)
    defaults: {group_by: [patient], group_wait: 30s, group_interval: 5m, repeat_interval: 4h}
    delivery: {retries: 3, timeout: 10s, backoff_max: 10s}
    smtp: {host, port, starttls, from, username_env, password_env, ca_file}
    time_windows: {<name>: {start: "22:00", end: "07:00", days: [mon-fri], timezone: …}}
    patient_groups: {<name>: [p0001, …]}
    receivers: {<name>: {channels: [{type: nurse_station|webhook|email|edge_agent, name, …}]}}
    escalations: {<name>: {steps: [{after: 0s, receiver: …}, …]}}
    inhibit: [{source: critical, targets: [warning, info], equal: [patient]}]
    route: {receiver | escalation, group_by, group_wait, group_interval, repeat_interval, quiet_hours,
            routes: [{name, match, during, not_during, continue, …same fields…, routes}]}
    digests: {<name>: {receiver, match, daily_at: "08:00", on_critical: true}}
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from detectors.const import METRIC_NAMES, SEVERITY_NAMES
from notify.const import DEFAULT_ROUTES_FILE, ROUTES_VERSION
from notify.errors import RoutesError
from notify.model import (
    CHANNEL_TYPES,
    GROUP_BY_LABELS,
    WEEKDAYS,
    ChannelSpec,
    Delivery,
    Digest,
    Escalation,
    InhibitRule,
    Matcher,
    Receiver,
    Route,
    Routes,
    SmtpServer,
    Step,
    TimeWindow,
    Timing,
    http_host_problem,
    webhook_url_problem,
)
from rpm_core.errors import RulesError
from rpm_core.rules import _compose, _join, _Leaf, _Parser
from rpm_core.technical import TECHNICAL_METRIC
from rpm_core.wire import is_valid_id

_ROOT_KEYS: Final = {"version", "timezone", "defaults", "delivery", "smtp", "time_windows", "patient_groups",
                     "receivers", "escalations", "inhibit", "route", "digests"}
_TIMING_KEYS: Final = {"group_by", "group_wait", "group_interval", "repeat_interval"}
_DELIVERY_KEYS: Final = {"retries", "timeout", "backoff_max"}
_SMTP_KEYS: Final = {"host", "port", "starttls", "from", "username_env", "password_env", "ca_file"}
_WINDOW_KEYS: Final = {"start", "end", "days", "timezone"}
_CHANNEL_KEYS: Final[dict[str, set[str]]] = {
    "nurse_station": {"type", "name"},
    "webhook": {"type", "name", "url", "secret_env", "recipient", "allow_http_host"},
    "email": {"type", "name", "to", "recipient"},
    "edge_agent": {"type", "name", "messages", "default_message"},
}
_ROUTE_KEYS: Final = {"name", "match", "during", "not_during", "receiver", "escalation", "continue", "quiet_hours",
                      "routes", *_TIMING_KEYS}
_ROOT_ROUTE_KEYS: Final = _ROUTE_KEYS - {"match", "during", "not_during", "continue", "name"}
_MATCH_KEYS: Final = {"ward", "patient", "patient_group", "rule", "severity", "min_severity", "metric"}
_INHIBIT_KEYS: Final = {"source", "targets", "equal"}
_DIGEST_KEYS: Final = {"receiver", "match", "daily_at", "on_critical"}
_TIME_RE: Final = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_ENV_RE: Final = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_EMAIL_RE: Final = re.compile(r"[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}")
_MAX_TEXT: Final = 500  # a patient message is read on a phone: a sentence or two
_MAX_DEPTH: Final = 16
_ID_HINT: Final = "use 1-64 characters of A-Z a-z 0-9 _ . : -"
_TIME_HINT: Final = 'write a time of day in quotes, such as "22:00"'


def load_routes(path: str | Path) -> Routes:
    """Read and validate the routes file at ``path``; :class:`RoutesError` if it is not valid."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise RoutesError(f"cannot read the routes file ({exc.strerror or exc})", file=source,
                          hint=f"check the path (RPM_ROUTES or --routes; default {DEFAULT_ROUTES_FILE})") from exc
    except UnicodeDecodeError as exc:
        raise RoutesError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=source,
                          hint="save the file as UTF-8") from exc
    return parse_routes(text, source=source)


def parse_routes(text: str, *, source: str = "<routes>") -> Routes:
    """Validate a routes file given as YAML text; ``source`` names the file in errors."""
    try:
        root = _compose(text, source)
    except RoutesError:
        raise
    except RulesError as exc:
        raise RoutesError(exc.problem, file=exc.file, line=exc.line, field=exc.field, hint=exc.hint) from exc
    return _RoutesParser(source).routes(root)


class _RoutesParser(_Parser):
    """The rules parser's node walking, for the routes schema."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.tz = ZoneInfo("UTC")
        self.timing = Timing()
        self.windows: dict[str, TimeWindow] = {}
        self.groups: dict[str, frozenset[str]] = {}
        self.receivers: dict[str, Receiver] = {}
        self.escalations: dict[str, Escalation] = {}
        self.smtp: SmtpServer | None = None
        self.route_ids: set[str] = set()

    def fail(self, node: yaml.Node, path: str, problem: str, hint: str) -> RoutesError:
        """The error about ``node`` (its line) at field ``path``."""
        line = node.start_mark.line + 1
        return RoutesError(problem, file=self.source, line=line, field=path or "(document)", hint=hint)

    # -- small values ---------------------------------------------------------------------------

    def ident(self, leaf: _Leaf, what: str) -> str:
        value = self.scalar(leaf)
        if not is_valid_id(value):
            raise self.fail(leaf.node, leaf.path, f"{value!r} is not a valid {what}", _ID_HINT)
        assert isinstance(value, str)
        return value

    def key_ident(self, key_node: yaml.Node, path: str, what: str) -> str:
        return self.ident(_Leaf(path, key_node), what)

    def items(self, leaf: _Leaf) -> list[_Leaf]:
        """A list (or one scalar, read as a list of one)."""
        if isinstance(leaf.node, yaml.SequenceNode):
            return [_Leaf(f"{leaf.path}[{i}]", n) for i, n in enumerate(leaf.node.value)]
        if isinstance(leaf.node, yaml.ScalarNode):
            return [leaf]
        raise self.fail(leaf.node, leaf.path, "expected a list", "write [a, b] or one `- a` per line")

    def ident_set(self, leaf: _Leaf, what: str) -> frozenset[str]:
        values = frozenset(self.ident(item, what) for item in self.items(leaf))
        if not values:
            raise self.fail(leaf.node, leaf.path, "empty list", f"name at least one {what}, or remove the key")
        return values

    def choices(self, leaf: _Leaf, options: tuple[str, ...], what: str) -> frozenset[str]:
        values = frozenset(self.choice(item, options, what) for item in self.items(leaf))
        if not values:
            raise self.fail(leaf.node, leaf.path, "empty list", f"use some of: {', '.join(options)}")
        return values

    def time_of_day(self, leaf: _Leaf) -> int:
        # Read the raw text: YAML 1.1 would turn an unquoted 22:00 into the number 1320.
        raw = leaf.node.value if isinstance(leaf.node, yaml.ScalarNode) else None
        match = _TIME_RE.fullmatch(raw.strip()) if isinstance(raw, str) else None
        if match is None:
            raise self.fail(leaf.node, leaf.path, f"{raw!r} is not a time of day (HH:MM, 00:00-23:59)", _TIME_HINT)
        return int(match.group(1)) * 60 + int(match.group(2))

    def zone(self, leaf: _Leaf) -> ZoneInfo:
        name = self.text(leaf)
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise self.fail(leaf.node, leaf.path, f"unknown time zone {name!r}",
                            "use an IANA name such as Europe/Berlin or UTC") from exc

    def env_name(self, leaf: _Leaf) -> str:
        value = self.scalar(leaf)
        if not isinstance(value, str) or not _ENV_RE.fullmatch(value):
            raise self.fail(leaf.node, leaf.path, f"{value!r} is not an environment variable name",
                            "name the variable that holds the secret, e.g. RPM_WEBHOOK_SECRET; never the secret")
        return value

    def positive_duration(self, leaf: _Leaf) -> float:
        seconds = self.duration(leaf)
        if seconds <= 0:
            raise self.fail(leaf.node, leaf.path, "must be longer than zero", "write e.g. 30s or 5m")
        return seconds

    def count(self, leaf: _Leaf, low: int, high: int) -> int:
        value = self.scalar(leaf)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(leaf.node, leaf.path, f"expected a whole number from {low} to {high}, got {value!r}",
                            f"write a number such as {low + 1}")
        return int(value)

    def bounded_text(self, leaf: _Leaf, limit: int = _MAX_TEXT) -> str:
        value = self.text(leaf).strip()
        if not value or len(value) > limit or any(not ch.isprintable() for ch in value):
            raise self.fail(leaf.node, leaf.path, f"text must be 1-{limit} printable characters",
                            "write one or two plain sentences")
        return value

    # -- the document ---------------------------------------------------------------------------

    def routes(self, root: yaml.Node) -> Routes:
        top = self.mapping(root, "", _ROOT_KEYS, required=("version", "receivers", "route"))
        self.version_of(top["version"][1])

        def leaf(key: str) -> _Leaf | None:
            return _Leaf(key, top[key][1]) if key in top else None

        if (tz := leaf("timezone")) is not None:
            self.tz = self.zone(tz)
        if (node := leaf("defaults")) is not None:
            self.timing = self.timing_of(node, self.timing)
        delivery = self.delivery(leaf("delivery"))
        if (node := leaf("smtp")) is not None:
            self.smtp = self.smtp_of(node)
        if (node := leaf("time_windows")) is not None:
            self.windows = self.time_windows(node)
        if (node := leaf("patient_groups")) is not None:
            self.groups = self.patient_groups(node)
        self.receivers = self.receivers_of(_Leaf("receivers", top["receivers"][1]))
        if (node := leaf("escalations")) is not None:
            self.escalations = self.escalations_of(node)
        route = self.route(_Leaf("route", top["route"][1]), None, top["route"][0], depth=0)
        inhibit = self.inhibit(leaf("inhibit"))
        digests = self.digests(leaf("digests"))
        return Routes(route=route, receivers=self.receivers, escalations=self.escalations, inhibit=inhibit,
                      digests=digests, smtp=self.smtp, delivery=delivery, version=ROUTES_VERSION,
                      source=self.source, timezone=self.tz)

    def version_of(self, node: yaml.Node) -> None:
        value = self.scalar(_Leaf("version", node))
        if value != ROUTES_VERSION or isinstance(value, bool):
            raise self.fail(node, "version", f"unsupported version {value!r}; this rpm reads {ROUTES_VERSION}",
                            f"write `version: {ROUTES_VERSION}`")

    def entries(self, leaf: _Leaf, allowed: set[str] | None, required: tuple[str, ...] = (),
                owner: yaml.Node | None = None) -> dict[str, _Leaf]:
        return {k: _Leaf(_join(leaf.path, k), v)
                for k, (_, v) in self.mapping(leaf.node, leaf.path, allowed, required, owner).items()}

    def timing_of(self, leaf: _Leaf, base: Timing) -> Timing:
        fields = self.entries(leaf, _TIMING_KEYS)
        return self.timing_fields(fields, base)

    def timing_fields(self, fields: dict[str, _Leaf], base: Timing) -> Timing:
        timing = base
        if "group_by" in fields:
            labels = self.items(fields["group_by"])
            group_by = tuple(dict.fromkeys(self.choice(x, GROUP_BY_LABELS, "group_by label") for x in labels))
            if "patient" not in group_by:
                raise self.fail(fields["group_by"].node, fields["group_by"].path, "group_by must include patient",
                                "write [patient] or [patient, rule]: a message is always about one patient")
            timing = replace(timing, group_by=group_by)
        if "group_wait" in fields:
            timing = replace(timing, group_wait_s=self.duration(fields["group_wait"]))
        if "group_interval" in fields:
            timing = replace(timing, group_interval_s=self.positive_duration(fields["group_interval"]))
        if "repeat_interval" in fields:
            timing = replace(timing, repeat_interval_s=self.positive_duration(fields["repeat_interval"]))
        return timing

    def delivery(self, leaf: _Leaf | None) -> Delivery:
        if leaf is None:
            return Delivery()
        fields = self.entries(leaf, _DELIVERY_KEYS)
        base = Delivery()
        return Delivery(
            retries=self.count(fields["retries"], 0, 20) if "retries" in fields else base.retries,
            timeout_s=self.positive_duration(fields["timeout"]) if "timeout" in fields else base.timeout_s,
            backoff_max_s=self.duration(fields["backoff_max"]) if "backoff_max" in fields else base.backoff_max_s,
        )

    def smtp_of(self, leaf: _Leaf) -> SmtpServer:
        f = self.entries(leaf, _SMTP_KEYS, required=("host", "from"))
        host = self.bounded_text(f["host"], 253)
        sender = self.address(f["from"])
        return SmtpServer(
            host=host,
            port=self.count(f["port"], 1, 65535) if "port" in f else 587,
            starttls=self.boolean(f["starttls"]) if "starttls" in f else True,
            sender=sender,
            username_env=self.env_name(f["username_env"]) if "username_env" in f else None,
            password_env=self.env_name(f["password_env"]) if "password_env" in f else None,
            ca_file=self.bounded_text(f["ca_file"], 4096) if "ca_file" in f else None,
        )

    def address(self, leaf: _Leaf) -> str:
        value = self.scalar(leaf)
        if not isinstance(value, str) or not _EMAIL_RE.fullmatch(value.strip()):
            raise self.fail(leaf.node, leaf.path, f"{value!r} is not an e-mail address", "write name@host")
        return value.strip()

    def time_windows(self, leaf: _Leaf) -> dict[str, TimeWindow]:
        out = {}
        for name, (key_node, value) in self.mapping(leaf.node, leaf.path).items():
            path = _join(leaf.path, name)
            self.key_ident(key_node, path, "time window name")
            f = self.entries(_Leaf(path, value), _WINDOW_KEYS, required=("start", "end"), owner=key_node)
            days = self.days(f["days"]) if "days" in f else frozenset(range(7))
            tz = self.zone(f["timezone"]) if "timezone" in f else self.tz
            out[name] = TimeWindow(name=name, start_min=self.time_of_day(f["start"]),
                                   end_min=self.time_of_day(f["end"]), days=days, tz=tz)
        return out

    def days(self, leaf: _Leaf) -> frozenset[int]:
        out: set[int] = set()
        for item in self.items(leaf):
            text = self.text(item).strip().lower()
            first, _, last = text.partition("-")
            if first not in WEEKDAYS or (last and last not in WEEKDAYS):
                raise self.fail(item.node, item.path, f"{text!r} is not a weekday or range",
                                "use mon, tue, wed, thu, fri, sat, sun or a range such as mon-fri")
            a, b = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
            out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        if not out:
            raise self.fail(leaf.node, leaf.path, "no days", "name at least one day, or remove `days`")
        return frozenset(out)

    def patient_groups(self, leaf: _Leaf) -> dict[str, frozenset[str]]:
        out = {}
        for name, (key_node, value) in self.mapping(leaf.node, leaf.path).items():
            path = _join(leaf.path, name)
            self.key_ident(key_node, path, "patient group name")
            out[name] = self.ident_set(_Leaf(path, value), "patient id")
        return out

    # -- receivers and escalations ----------------------------------------------------------------

    def receivers_of(self, leaf: _Leaf) -> dict[str, Receiver]:
        out = {}
        for name, (key_node, value) in self.mapping(leaf.node, leaf.path).items():
            path = _join(leaf.path, name)
            self.key_ident(key_node, path, "receiver name")
            f = self.entries(_Leaf(path, value), {"channels"}, required=("channels",), owner=key_node)
            items = self.items(f["channels"])
            if not items:
                raise self.fail(f["channels"].node, f["channels"].path, "no channels",
                                "add at least one channel, e.g. `- type: nurse_station`")
            channels = tuple(self.channel(item, name) for item in items)
            names = [c.name for c in channels]
            if len(set(names)) != len(names):
                raise self.fail(f["channels"].node, f["channels"].path, "two channels share a name",
                                "give each channel of a receiver its own `name:`")
            out[name] = Receiver(name=name, channels=channels)
        if not out:
            raise self.fail(leaf.node, leaf.path, "no receivers", "define at least one receiver")
        return out

    def channel(self, leaf: _Leaf, receiver: str) -> ChannelSpec:
        raw = self.entries(leaf, None, required=("type",))
        kind = self.choice(raw["type"], CHANNEL_TYPES, "channel type")
        allowed = _CHANNEL_KEYS[kind]
        f = self.entries(leaf, allowed, required=("type",))
        name = self.ident(f["name"], "channel name") if "name" in f else kind
        if len(receiver) + 1 + len(name) > 64:
            raise self.fail(leaf.node, leaf.path, "receiver and channel names are too long together",
                            "keep <receiver>.<channel> within 64 characters")
        spec = ChannelSpec(type=kind, name=name, receiver=receiver)  # type: ignore[arg-type]
        if "recipient" in f:
            spec = replace(spec, recipient=self.bounded_text(f["recipient"], 64))
        return self.channel_fields(kind, spec, f, leaf)

    def channel_fields(self, kind: str, spec: ChannelSpec, f: dict[str, _Leaf], leaf: _Leaf) -> ChannelSpec:
        if kind == "webhook":
            for key in ("url", "secret_env"):
                if key not in f:
                    raise self.fail(leaf.node, _join(leaf.path, key), f"missing required field {key!r}",
                                    "a webhook needs `url:` and `secret_env:` (the variable holding its HMAC key)")
            allow = self.http_host(f["allow_http_host"]) if "allow_http_host" in f else None
            return replace(spec, url=self.url(f["url"], allow), secret_env=self.env_name(f["secret_env"]),
                           allow_http_host=allow)
        if kind == "email":
            if "to" not in f:
                raise self.fail(leaf.node, _join(leaf.path, "to"), "missing required field 'to'",
                                "add `to: [name@host]`")
            if self.smtp is None:
                raise self.fail(leaf.node, leaf.path, "an email channel needs the `smtp:` section",
                                "add `smtp: {host: …, from: …}` at the top level")
            to = tuple(self.address(x) for x in self.items(f["to"]))
            if not to:
                raise self.fail(f["to"].node, f["to"].path, "no addresses", "add at least one address")
            return replace(spec, to=to)
        if kind == "edge_agent":
            return self.edge_fields(spec, f, leaf)
        return spec

    def edge_fields(self, spec: ChannelSpec, f: dict[str, _Leaf], leaf: _Leaf) -> ChannelSpec:
        messages = {}
        if "messages" in f:
            for rule, (key_node, value) in self.mapping(f["messages"].node, f["messages"].path).items():
                path = _join(f["messages"].path, rule)
                self.key_ident(key_node, path, "rule name")
                messages[rule] = self.bounded_text(_Leaf(path, value))
        default = self.bounded_text(f["default_message"]) if "default_message" in f else None
        if not messages and default is None:
            raise self.fail(leaf.node, leaf.path, "an edge_agent channel needs what to tell the patient",
                            "add `messages: {glucose_low: \"…\"}` and/or `default_message: \"…\"`")
        return replace(spec, messages=messages, default_message=default)

    def url(self, leaf: _Leaf, allow_http_host: str | None) -> str:
        value = self.text(leaf)
        problem = webhook_url_problem(value, allow_http_host)
        if problem:
            raise self.fail(leaf.node, leaf.path, f"{value[:200]!r} is not an acceptable webhook URL", problem)
        return value

    def http_host(self, leaf: _Leaf) -> str:
        value = self.text(leaf)
        problem = http_host_problem(value)
        if problem:
            raise self.fail(leaf.node, leaf.path, f"{value[:200]!r} is not a host", problem)
        return value

    def escalations_of(self, leaf: _Leaf) -> dict[str, Escalation]:
        out = {}
        for name, (key_node, value) in self.mapping(leaf.node, leaf.path).items():
            path = _join(leaf.path, name)
            self.key_ident(key_node, path, "escalation name")
            f = self.entries(_Leaf(path, value), {"steps"}, required=("steps",), owner=key_node)
            items = self.items(f["steps"])
            if not items:
                raise self.fail(f["steps"].node, f["steps"].path, "no steps", "add `- {after: 0s, receiver: …}`")
            steps = tuple(self.step(item) for item in items)
            for i in range(1, len(steps)):
                if steps[i].after_s <= steps[i - 1].after_s:
                    raise self.fail(items[i].node, _join(items[i].path, "after"), "steps must come later and later",
                                    f"make `after` longer than the previous step's ({steps[i - 1].after_s:g} s); "
                                    "it counts from the start of the chain")
            out[name] = Escalation(name=name, steps=steps)
        return out

    def step(self, leaf: _Leaf) -> Step:
        f = self.entries(leaf, {"after", "receiver"}, required=("receiver",))
        return Step(after_s=self.duration(f["after"]) if "after" in f else 0.0,
                    receiver=self.receiver_ref(f["receiver"]))

    def receiver_ref(self, leaf: _Leaf) -> str:
        name = self.ident(leaf, "receiver name")
        if name not in self.receivers:
            raise self.fail(leaf.node, leaf.path, f"unknown receiver {name!r}",
                            f"use one of: {', '.join(sorted(self.receivers))}")
        return name

    # -- the routing tree -------------------------------------------------------------------------

    def route(self, leaf: _Leaf, parent: Route | None, owner: yaml.Node, *, depth: int, index: int = 0) -> Route:
        if depth > _MAX_DEPTH:
            raise self.fail(leaf.node, leaf.path, "routes nested too deeply", f"keep within {_MAX_DEPTH} levels")
        allowed = _ROOT_ROUTE_KEYS if parent is None else _ROUTE_KEYS
        f = self.entries(leaf, allowed, owner=owner)
        route_id = self.route_id(f, leaf, f"{parent.id}.{index}" if parent else "root")
        escalation = self.route_escalation(f, leaf, parent)
        timing = self.timing_fields(f, parent.timing if parent else self.timing)
        quiet = self.windows_ref(f["quiet_hours"]) if "quiet_hours" in f else (parent.quiet_hours if parent else ())
        node = Route(
            id=route_id, matcher=self.matcher(f), escalation=escalation, timing=timing, quiet_hours=quiet,
            continue_=self.boolean(f["continue"]) if "continue" in f else False,
        )
        if "routes" in f:
            children = tuple(self.route(item, node, item.node, depth=depth + 1, index=i)
                             for i, item in enumerate(self.items(f["routes"])))
            node = replace(node, routes=children)
        return node

    def route_id(self, f: dict[str, _Leaf], leaf: _Leaf, default: str) -> str:
        route_id = self.ident(f["name"], "route name") if "name" in f else default
        if route_id in self.route_ids:
            where = f.get("name", leaf)
            raise self.fail(where.node, where.path, f"route name {route_id!r} is used twice",
                            "give each route its own name: it tags the audit")
        if len(route_id) > 64:
            raise self.fail(leaf.node, leaf.path, "route nested too deeply to name", "give it a short `name:`")
        self.route_ids.add(route_id)
        return route_id

    def route_escalation(self, f: dict[str, _Leaf], leaf: _Leaf, parent: Route | None) -> Escalation:
        if "receiver" in f and "escalation" in f:
            raise self.fail(f["escalation"].node, f["escalation"].path, "a route has a receiver or an escalation",
                            "keep one: `receiver:` notifies once, `escalation:` walks a chain")
        if "receiver" in f:
            name = self.receiver_ref(f["receiver"])
            return Escalation(name=f"receiver:{name}", steps=(Step(after_s=0.0, receiver=name),))
        if "escalation" in f:
            name = self.ident(f["escalation"], "escalation name")
            if name not in self.escalations:
                raise self.fail(f["escalation"].node, f["escalation"].path, f"unknown escalation {name!r}",
                                f"define it under `escalations:` (known: {', '.join(sorted(self.escalations))})")
            return self.escalations[name]
        if parent is None:
            raise self.fail(leaf.node, leaf.path, "the root route needs a receiver or an escalation",
                            "add `receiver: <name>`: it takes every alert no child route takes")
        return parent.escalation

    def windows_ref(self, leaf: _Leaf) -> tuple[TimeWindow, ...]:
        out = []
        for item in self.items(leaf) if not _is_empty_list(leaf.node) else []:
            name = self.ident(item, "time window name")
            if name not in self.windows:
                raise self.fail(item.node, item.path, f"unknown time window {name!r}",
                                f"define it under `time_windows:` (known: {', '.join(sorted(self.windows)) or 'none'})")
            out.append(self.windows[name])
        return tuple(out)

    def matcher(self, f: dict[str, _Leaf]) -> Matcher:
        m = self.match_fields(self.entries(f["match"], _MATCH_KEYS)) if "match" in f else Matcher()
        during = self.windows_ref(f["during"]) if "during" in f else ()
        not_during = self.windows_ref(f["not_during"]) if "not_during" in f else ()
        return replace(m, during=during, not_during=not_during)

    def match_fields(self, f: dict[str, _Leaf]) -> Matcher:
        patients = self.ident_set(f["patient"], "patient id") if "patient" in f else None
        if "patient_group" in f:
            grouped: set[str] = set()
            for item in self.items(f["patient_group"]):
                name = self.ident(item, "patient group")
                if name not in self.groups:
                    known = ", ".join(sorted(self.groups)) or "none"
                    raise self.fail(item.node, item.path, f"unknown patient group {name!r}",
                                    f"define it under `patient_groups:` (known: {known})")
                grouped |= self.groups[name]
            patients = frozenset(grouped) if patients is None else patients & grouped
        return Matcher(
            wards=self.ident_set(f["ward"], "ward id") if "ward" in f else None,
            patients=patients,
            rules=self.ident_set(f["rule"], "rule name") if "rule" in f else None,
            severities=self.choices(f["severity"], SEVERITY_NAMES, "severity") if "severity" in f else None,
            metrics=self.choices(f["metric"], (*METRIC_NAMES, TECHNICAL_METRIC), "metric") if "metric" in f else None,
            min_severity=self.choice(f["min_severity"], SEVERITY_NAMES, "severity") if "min_severity" in f else None,
        )

    # -- inhibition and digests -------------------------------------------------------------------

    def inhibit(self, leaf: _Leaf | None) -> tuple[InhibitRule, ...]:
        if leaf is None or _is_empty_list(leaf.node):
            return ()
        out = []
        for item in self.items(leaf):
            f = self.entries(item, _INHIBIT_KEYS, required=("source", "targets"))
            source = self.choice(f["source"], SEVERITY_NAMES, "severity")
            targets = self.choices(f["targets"], SEVERITY_NAMES, "severity")
            if source in targets:
                raise self.fail(f["targets"].node, f["targets"].path, "an alert would inhibit its own severity",
                                "list only lower severities as targets")
            equal: tuple[str, ...] = ("patient",)
            if "equal" in f:
                equal = tuple(dict.fromkeys(self.choice(x, ("patient", "metric", "rule"), "label")
                                            for x in self.items(f["equal"])))
                if "patient" not in equal:
                    raise self.fail(f["equal"].node, f["equal"].path, "inhibition is per patient",
                                    "include patient: [patient] or [patient, metric]")
            out.append(InhibitRule(source=source, targets=targets, equal=equal))
        return tuple(out)

    def digests(self, leaf: _Leaf | None) -> tuple[Digest, ...]:
        if leaf is None:
            return ()
        out = []
        for name, (key_node, value) in self.mapping(leaf.node, leaf.path).items():
            path = _join(leaf.path, name)
            self.key_ident(key_node, path, "digest name")
            f = self.entries(_Leaf(path, value), _DIGEST_KEYS, required=("receiver",), owner=key_node)
            receiver = self.receiver_ref(f["receiver"])
            self.digest_channels(f["receiver"], receiver)
            daily = self.time_of_day(f["daily_at"]) if "daily_at" in f else None
            on_critical = self.boolean(f["on_critical"]) if "on_critical" in f else False
            if daily is None and not on_critical:
                raise self.fail(key_node, path, "a digest that never goes out",
                                'add `daily_at: "08:00"` and/or `on_critical: true`')
            matcher = self.match_fields(self.entries(f["match"], _MATCH_KEYS)) if "match" in f else Matcher()
            out.append(Digest(name=name, receiver=receiver, matcher=matcher, daily_at_min=daily,
                              on_critical=on_critical, tz=self.tz))
        return tuple(out)

    def digest_channels(self, leaf: _Leaf, receiver: str) -> None:
        kinds = {c.type for c in self.receivers[receiver].channels}
        if not kinds <= {"email", "webhook"}:
            raise self.fail(leaf.node, leaf.path, "a caregiver digest goes by email or webhook only",
                            "point it at a receiver whose channels are email or webhook")


def _is_empty_list(node: Any) -> bool:
    return isinstance(node, yaml.SequenceNode) and not node.value
