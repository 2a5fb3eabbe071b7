# ruff: noqa: T201 - a CLI talks to its user with print (as rpm_app/cli.py does)
"""``rpm notifier``, ``rpm routes check`` and ``rpm routes test``; registered by :func:`add_commands`.

- ``rpm notifier [--routes F] [--roster F] [--client-id ID] [--replay-window D]``: run the notifier
  until SIGTERM (service URLs from ``RPM_*`` or flags; its MQTT user is ``rpm-notifier``);
- ``rpm routes check [FILE]``: validate a routes file and summarise it;
- ``rpm routes test --routes F --alert JSON_OR_FILE [--at ISO]``: where that alert would go, step by
  step with times, if nobody acknowledged it; nothing is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import orjson

from notify.const import DEFAULT_REPLAY_WINDOW_S, DEFAULT_ROUTES_FILE, ROUTES_ENV
from notify.model import Routes
from notify.router import Action, AlertUpdate, Dispatch, Record, Router, match_routes
from rpm_core.errors import ConfigError
from rpm_core.settings import Secret, Settings

_LOGGER = logging.getLogger(__name__)
_SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it
# `routes test` follows the chain this far, or until the last step's first repeat.
TEST_HORIZON_S: Final = 24 * 3600.0
TEST_MAX_LINES: Final = 40


def add_commands(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``rpm notifier`` and ``rpm routes``."""
    default_routes = os.environ.get(ROUTES_ENV, DEFAULT_ROUTES_FILE)
    p = sub.add_parser("notifier", help="route alerts to people: escalation chains, channels, receipts")
    p.add_argument("--routes", default=default_routes, help=f"routes file (env {ROUTES_ENV}, default routes.yaml)")
    p.add_argument("--roster", help="wards and patients (env RPM_ROSTER)")
    p.add_argument("--client-id", help="Kafka/MQTT client id, bound to the MQTT user as <user>:<id> (default <host>)")
    p.add_argument("--replay-window", type=float, default=DEFAULT_REPLAY_WINDOW_S,
                   help="seconds of rpm.alerts replayed on start to rebuild pending chains (default 7 days)")
    p.add_argument("--mqtt-url", help="mqtt://rpm-notifier:pass@host:port (env RPM_MQTT_URL)")
    p.add_argument("--kafka-url", help="kafka://host:port (env RPM_KAFKA_URL)")
    p.add_argument("--influx-url", help="http://host:8086 (env RPM_INFLUX_URL)")
    p.add_argument("--influx-db", help="database / bucket (env RPM_INFLUX_DB, default rpm)")
    p.set_defaults(func=cmd_notifier)

    routes = sub.add_parser("routes", help="alert routing").add_subparsers(dest="routes_command", required=True)
    p = routes.add_parser("check", help="validate and summarise a routes file")
    p.add_argument("file", nargs="?", default=default_routes)
    p.set_defaults(func=cmd_routes_check)
    p = routes.add_parser("test", help="show where an alert would go, step by step, without sending")
    p.add_argument("--routes", default=default_routes, help="routes file (default routes.yaml)")
    p.add_argument("--alert", required=True, help='JSON (or a file with it): {"patient", "rule", "severity", …}')
    p.add_argument("--at", help="when it is raised, ISO 8601 (default: now)")
    p.add_argument("--roster", help="wards and patients (env RPM_ROSTER)")
    p.set_defaults(func=cmd_routes_test)


# --- rpm notifier -----------------------------------------------------------------------------------


def cmd_notifier(args: argparse.Namespace) -> int:
    """Run the notifier until SIGTERM / Ctrl-C."""
    from notify.loader import load_routes
    from notify.service import Notifier
    from rpm_core.roster import load_roster
    from rpm_core.wire import is_valid_id

    client_id = args.client_id or socket.gethostname()[:64]
    if not is_valid_id(client_id):  # it names the notifier in its heartbeats: one the watchdog refuses is unwatched
        raise ConfigError(f"--client-id {client_id[:80]!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    settings = _settings(args)
    routes = load_routes(args.routes)
    _audit_routes(settings, args.routes)
    roster = load_roster(args.roster)
    secrets = {name: Secret(os.environ.get(name, "")) for name in routes.secret_envs()}
    check_webhook_secrets(routes, secrets)
    notifier = Notifier(routes=routes, settings=settings, secrets=secrets, ward_of=roster.ward_of,
                        client_id=client_id, replay_window_s=args.replay_window)
    asyncio.run(_until_signalled(notifier))
    return 0


def check_webhook_secrets(routes: Routes, secrets: dict[str, Secret]) -> None:
    """:class:`ConfigError` naming the variable when a webhook's HMAC key is unset, short or common."""
    from rpm_core.passwords import secret_weakness

    for name in sorted(routes.webhook_secret_envs()):
        problem = secret_weakness(secrets.get(name, Secret("")).get())
        if problem:
            raise ConfigError(f"{name}, the HMAC key of a webhook in {routes.source}, is refused: {problem}")


def _audit_routes(settings: Settings, path: str) -> None:
    """Record in rpm.audit which routes file the notifier starts with (SHA-256; changed or not)."""
    from rpm_core.audit import AuditError, os_user, record_config_load

    try:
        event = asyncio.run(record_config_load(settings.kafka_bootstrap(), settings.key_ring(), "rpm notifier",
                                               "routes", path, actor=os_user()))
    except (AuditError, OSError) as exc:
        _LOGGER.error("the routes file %s was loaded but could not be audited: %s", path, exc)
        return
    _LOGGER.info("audit: %s %s (sha256 %s)", event.action, path, event.detail["sha256"])


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {k: v for k, v in {"mqtt_url": args.mqtt_url, "kafka_url": args.kafka_url,
                                   "influx_url": args.influx_url, "influx_db": args.influx_db}.items() if v}
    settings = replace(settings, **overrides)
    settings.validate()
    settings.kafka_bootstrap()
    settings.require_influx()
    return settings


async def _until_signalled(notifier: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await notifier.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


# --- rpm routes check / test ------------------------------------------------------------------------


def cmd_routes_check(args: argparse.Namespace) -> int:
    """Validate a routes file; print a summary (exit 0) or the error (exit 2)."""
    from notify.loader import load_routes

    routes = load_routes(args.file)
    print(f"{args.file}: valid (version {routes.version})")
    print(summarise(routes))
    return 0


def summarise(routes: Routes) -> str:
    """Receivers, escalations and the routing tree, one line each."""
    lines = ["receivers:"]
    lines += [f"  {r.name}: {', '.join(c.type for c in r.channels)}" for r in routes.receivers.values()]
    lines.append("escalations:")
    lines += [f"  {e.name}: " + " → ".join(f"{_dur(s.after_s)} {s.receiver}" for s in e.steps)
              for e in routes.escalations.values()]
    lines.append("routes:")

    def walk(route: Any, depth: int) -> None:
        cont = ", continue" if route.continue_ else ""
        lines.append(f"  {'  ' * depth}{route.id}: {route.escalation.name}{cont}")
        for child in route.routes:
            walk(child, depth + 1)

    walk(routes.route, 0)
    return "\n".join(lines)


def cmd_routes_test(args: argparse.Namespace) -> int:
    """Explain where an alert would go, step by step, without sending anything."""
    from notify.loader import load_routes
    from rpm_core.roster import load_roster

    routes = load_routes(args.routes)
    roster = load_roster(args.roster)
    at = _parse_at(args.at)
    update = _alert_from_arg(args.alert, at)
    print(explain(routes, update, at=at, ward_of=roster.ward_of))
    return 0


def _parse_at(text: str | None) -> float:
    if not text:
        return dt.datetime.now(dt.UTC).timestamp()
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--at {text!r} is not ISO 8601 (e.g. 2025-11-25T21:00:00Z)") from exc
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _alert_from_arg(text: str, at: float) -> AlertUpdate:
    from detectors.events import alert_id

    raw = Path(text).read_bytes() if not text.lstrip().startswith("{") and Path(text).is_file() else text.encode()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--alert is neither JSON nor a file with JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError("--alert must be a JSON object")
    if "metric" not in doc:  # the rules file is read only when needed
        doc["metric"] = _metric_of(doc.get("rule"))
    doc.setdefault("since", at)
    doc.setdefault("state", "raised")
    doc.setdefault("message", f"{doc.get('rule')} ({doc.get('severity')})")
    since = doc["since"]
    if isinstance(since, bool) or not isinstance(since, int | float):
        raise ConfigError(f"--alert: 'since' must be a number of epoch seconds, not {since!r:.40}")
    doc.setdefault("alert_id", alert_id(str(doc.get("patient")), str(doc.get("rule")), since))
    try:
        return AlertUpdate.from_doc(doc)
    except ValueError as exc:
        raise ConfigError(f"--alert: {exc} (needs at least patient, rule and severity)") from exc


def _metric_of(rule: object) -> str:
    """The metric of ``rule`` in the alert rules (RPM_RULES), else ``unknown``."""
    from rpm_core.errors import RulesError
    from rpm_core.rules import load_rules

    try:
        ruleset = load_rules(os.environ.get("RPM_RULES", "alert_rules.yaml"))
    except (RulesError, OSError):
        return "unknown"
    return next((r.metric for r in ruleset.rules if r.name == rule), "unknown")


def explain(routes: Routes, update: AlertUpdate, *, at: float, ward_of: Any) -> str:
    """The text of ``rpm routes test``: the alert, its routes, then the timeline if nobody acknowledges."""
    router = Router(routes, ward_of=ward_of)
    lines = [f"alert {update.alert_id}: patient {update.patient} (ward {ward_of(update.patient) or 'none'}), "
             f"{update.rule}, {update.severity}, metric {update.metric}",
             f"raised {_when(at, routes)} — routes file {routes.source}"]
    router.observe(update, at)
    info = router.open_alerts()[0]
    for route in match_routes(routes.route, info, at):
        t = route.timing
        quiet = f", quiet hours {', '.join(w.name for w in route.quiet_hours)}" if route.quiet_hours else ""
        lines.append(f"  route {route.id} → {route.escalation.name} (group by {', '.join(t.group_by)}: wait "
                     f"{_dur(t.group_wait_s)}, interval {_dur(t.group_interval_s)}, repeat "
                     f"{_dur(t.repeat_interval_s)}{quiet})")
    lines.append("if nobody acknowledges (nothing is sent):")
    lines += _timeline(router, routes, at, update.patient)
    lines.append("an acknowledgement at any step (nurse station or the patient's agent), or the alert clearing, "
                 "stops the chain")
    return "\n".join(lines)


def _timeline(router: Router, routes: Routes, start: float, patient: str) -> list[str]:
    lines: list[str] = []
    now = start
    last_steps: set[str] = set()
    while len(lines) < TEST_MAX_LINES:
        deadline = router.next_deadline()
        if deadline is None or deadline - start > TEST_HORIZON_S:
            break
        now = max(now, deadline)
        actions = router.advance(now)
        for action in actions:
            if isinstance(action, Dispatch) and action.notification.patient != patient:
                continue  # another patient's daily digest
            lines += _describe(action, routes, start)
            if isinstance(action, Dispatch) and action.notification.kind == "step":
                router.delivery_result(action.notification.id, delivered=True, at=now)
                if action.notification.final_step:
                    last_steps.add(action.notification.group)
        repeats = [a.notification for a in actions if isinstance(a, Dispatch) and a.notification.kind == "repeat"
                   and a.notification.group in last_steps and a.notification.final_step]
        route = routes.find_route(repeats[0].route) if repeats else None
        if route is not None:
            lines.append(f"  … and so on, every {_dur(route.timing.repeat_interval_s)} while unacknowledged")
            break
    return lines or ["  nothing: no step is due (check the route's receiver)"]


def _describe(action: Action, routes: Routes, start: float) -> list[str]:
    from notify.channels.edge import patient_message

    if isinstance(action, Record) and action.outcome in ("deferred", "skipped"):
        return [f"  +{_dur(action.at - start):<8} {action.outcome}: {action.detail}"]
    if not isinstance(action, Dispatch):
        return []
    note = action.notification
    what = f"step {note.step}" if note.kind == "step" else note.kind
    head = f"  +{_dur(note.at - start):<8} {_when(note.at, routes)}  {what} → {note.receiver}"
    out = [head]
    for channel in action.channels:
        detail = {"webhook": channel.recipient or channel.url, "email": ", ".join(channel.to),
                  "nurse_station": f"ward {note.ward or 'unassigned'}"}.get(channel.type, "")
        if channel.type == "edge_agent":
            message = patient_message(channel, note)
            detail = f'patient {note.patient}: "{message.text}"' if message else "no message for this rule: skipped"
        out.append(f"      {channel.type} {channel.name}: {detail}")
    return out


def _when(t: float, routes: Routes) -> str:
    tz = routes.timezone
    utc = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{utc} ({dt.datetime.fromtimestamp(t, tz).strftime('%H:%M')} {tz.key})"


def _dur(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"

