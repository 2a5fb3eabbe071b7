# ruff: noqa: T201 - a CLI talks to its user with print (as rpm_app/cli.py does)
"""``rpm hl7 send``: a patient's vitals and alerts to an MLLP endpoint (an EMR, an integration
engine, a nurse-call gateway); registered by :func:`add_commands`.

Exit status: 0 every message acknowledged with AA; 1 some were dead-lettered (AR, retries used
up, or a row that cannot be encoded as HL7: reported and set aside, the rest is sent); 2 usage
errors, no data, or InfluxDB/Kafka unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from rpm_core.errors import ConfigError, RpmError
from rpm_core.settings import Settings

if TYPE_CHECKING:  # the modules themselves load when a command runs: `rpm --help` stays light
    from hl7out.follow import FollowStats
    from hl7out.messages import Header
    from hl7out.sender import Endpoint, Outgoing, Policy, Receipt
    from hl7out.source import Refused

_SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it

FOLLOW_EPILOG: Final = """\
Reads rpm.alerts (consumer group --group) and sends each alert state change of a patient as an
ORU^R40 Report Alert (IHE PCD-04), waiting for its ACK; the Kafka offset is committed once the
message was delivered or dead-lettered, so a restart goes on where it stopped (at least once).
AR and exhausted retries go to rpm.deadletter (stage hl7). Runs until SIGINT/SIGTERM.
"""
SEND_EPILOG: Final = """\
Each message waits for its ACK before the next is sent. AA: delivered. AR: the receiver refused
it; it is dead-lettered (rpm.deadletter, stage hl7, with the receiver's reason) and not retried.
AE, a timeout or a lost connection: retried with jittered backoff (--retries), then dead-lettered.
A row that cannot be encoded as HL7 (a rule name or id HL7 cannot carry, a time outside 2000-2100)
is reported, dead-lettered with its reason and the row as JSON, and the rest is sent (exit status 1).
Without --kafka-url / RPM_KAFKA_URL, dead letters are printed on stderr (exit status 1) instead.
Every attempt is a point of the notifications measurement (channel hl7) in InfluxDB.
See docs/integration.md for the messages and codes.
"""


def add_commands(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``rpm hl7 send``."""
    from rpm_app.cli_people import parse_duration, parse_time

    hl7 = sub.add_parser("hl7", help="HL7 v2 over MLLP to the hospital's systems (ORU^R01 vitals, PCD-04 alerts)")
    commands = hl7.add_subparsers(dest="hl7_command", required=True, metavar="COMMAND")
    p = commands.add_parser("send", help="send a period of vitals and alerts, waiting for each ACK",
                            epilog=SEND_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True, help="the receiver: mllp://host:port")
    p.add_argument("--patient", action="append", required=True, help="patient id (repeat for several)")
    p.add_argument("--since", required=True, type=parse_time, help="ISO 8601 start (UTC unless an offset is given)")
    p.add_argument("--until", type=parse_time, default=None, help="ISO 8601 end (default: now)")
    p.add_argument("--every", type=parse_duration, default=timedelta(minutes=5),
                   help="one vitals message per patient per period (heart rate as its mean; default 5m)")
    p.add_argument("--only", choices=("vitals", "alerts"), default=None, help="send only these")
    _common(p)
    p.set_defaults(func=cmd_send)

    p = commands.add_parser("follow", help="send every alert state change on rpm.alerts, live (nurse call, EMR)",
                            epilog=FOLLOW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", default=None, help="the receiver: mllp://host:port (env RPM_HL7_TO)")
    p.add_argument("--from-beginning", action="store_true",
                   help="a new consumer group starts at the oldest alert (default: only new alerts)")
    p.add_argument("--group", default="rpm-hl7", help="Kafka consumer group (one per receiver; default rpm-hl7)")
    _common(p)
    p.set_defaults(func=cmd_follow)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--receiving-app", default="EMR", help="MSH-5 (default EMR)")
    p.add_argument("--receiving-facility", default="HOSPITAL", help="MSH-6 (default HOSPITAL)")
    p.add_argument("--patient-authority", default="RPM", help="PID-3 assigning authority of our ids (default RPM)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each ACK (default 10)")
    p.add_argument("--retries", type=int, default=5, help="retries after AE or a network error (default 5)")
    p.add_argument("--kafka-url", help="kafka://host:port for rpm.alerts and rpm.deadletter (env RPM_KAFKA_URL)")
    p.add_argument("--influx-url", help="http://host:8086 (env RPM_INFLUX_URL)")
    p.add_argument("--influx-db", help="database (env RPM_INFLUX_DB, default rpm)")


def _header(args: argparse.Namespace) -> Header:
    from hl7out.messages import Header

    return Header(receiving_app=args.receiving_app, receiving_facility=args.receiving_facility,
                  patient_authority=args.patient_authority)


def _endpoint_and_policy(args: argparse.Namespace) -> tuple[Endpoint, Policy]:
    import os

    from hl7out.sender import Endpoint, Policy

    to = args.to or os.environ.get("RPM_HL7_TO", "")
    if not to:
        raise ConfigError("no receiver: give --to mllp://host:port or set RPM_HL7_TO")
    try:
        endpoint = Endpoint.parse(to)
    except ValueError as exc:
        raise ConfigError(f"--to: {exc}") from exc
    if args.retries < 0 or args.timeout <= 0:
        raise ConfigError("--retries must be ≥ 0 and --timeout > 0")
    return endpoint, Policy(timeout_s=args.timeout, retries=args.retries)


def _settings(args: argparse.Namespace) -> Settings:
    from dataclasses import replace

    settings = Settings.from_env()
    overrides = {k: v for k, v in {"kafka_url": args.kafka_url, "influx_url": args.influx_url,
                                   "influx_db": args.influx_db}.items() if v}
    return replace(settings, **overrides) if overrides else settings


def cmd_send(args: argparse.Namespace) -> int:
    """Send, then print one line per message not delivered and a summary."""
    from hl7out.receipts import write_receipts
    from hl7out.source import Selection, outgoing
    from rpm_app.report import InfluxReader, require_data
    from rpm_core.interpretation import limits
    from rpm_core.rules import load_rules

    endpoint, policy = _endpoint_and_policy(args)
    settings = _settings(args)
    until = args.until or datetime.now(UTC)
    every = int(args.every.total_seconds())
    if every <= 0:
        raise ConfigError("--every must be positive")
    rules = load_rules(settings.rules_path)
    sel = Selection(patients=tuple(args.patient), since=args.since, until=until, every_s=every,
                    vitals=args.only != "alerts", alerts=args.only != "vitals",
                    limits={p: limits(rules, p) for p in args.patient})
    reader = InfluxReader.from_settings(settings)
    for patient in sel.patients:
        require_data(reader, patient, sel.since, sel.until)
    messages, refused = outgoing(reader, sel, header=_header(args), now_s=time.time())
    for x in refused:
        what = x.item.alert_id or x.item.control_id
        print(f"not encodable: {x.item.kind} {what} of {x.item.patient}: {x.reason}", file=sys.stderr)
    receipts, lines = asyncio.run(_deliver(settings, endpoint, policy, messages, refused))
    write_receipts(settings, lines)
    failed = [r for r in receipts if r.outcome != "delivered"]
    for r in failed:
        print(f"not delivered: {r.message.kind} {r.message.control_id} of {r.message.patient}: {r.detail}",
              file=sys.stderr)
    total = len(receipts) + len(refused)
    print(f"{len(receipts) - len(failed)} of {total} messages delivered to {endpoint}"
          + (f", {len(failed)} dead-lettered" if failed else "")
          + (f", {len(refused)} could not be encoded (dead-lettered)" if refused else ""))
    _audit_export(settings, sel.patients, str(endpoint), since=sel.since.isoformat(), until=sel.until.isoformat(),
                  delivered=len(receipts) - len(failed))
    return 1 if failed or refused else 0


def _audit_export(settings: Settings, patients: tuple[str, ...], to: str, **detail: str | int) -> None:
    """Record in rpm.audit who sent which patients' data where."""
    from rpm_app.audit_cli import record_command
    from rpm_core.audit import AuditEvent, os_user

    record_command("rpm hl7", *(AuditEvent(action="export.hl7", actor=os_user(), target=to, patient=p,
                                           detail={"to": to, **detail}) for p in patients))


def cmd_follow(args: argparse.Namespace) -> int:
    """Forward rpm.alerts until SIGINT/SIGTERM; print the counters."""
    endpoint, policy = _endpoint_and_policy(args)
    settings = _settings(args)
    if not settings.kafka_url:
        raise ConfigError("rpm hl7 follow reads rpm.alerts: set --kafka-url or RPM_KAFKA_URL")
    settings.require_influx()
    _audit_export(settings, ("",), str(endpoint), mode="follow")  # every patient's alerts, from now on
    stats = asyncio.run(_follow(settings, endpoint, policy, args))
    print(f"{stats.sent} alert messages sent to {endpoint}: {stats.delivered} delivered, "
          f"{stats.deadlettered} dead-lettered; {stats.skipped} records skipped")
    return 0


async def _follow(settings: Settings, endpoint: Endpoint, policy: Policy, args: argparse.Namespace) -> FollowStats:
    import logging
    import signal
    import socket

    from aiokafka import AIOKafkaProducer

    from hl7out.follow import FollowHealth, follow
    from hl7out.receipts import KafkaDeadLetters, attempt_line, write_receipts
    from hl7out.sender import Sender
    from rpm_core import topics
    from rpm_core.kafka_security import kafka_client_kwargs
    from rpm_core.technical import HeartbeatSender

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    lines: list[str] = []
    bootstrap = settings.kafka_bootstrap()
    kafka = KafkaDeadLetters(bootstrap, source=str(endpoint))

    async def after_send(_receipt: Receipt) -> None:
        batch = lines[:]
        lines.clear()
        try:
            await asyncio.to_thread(write_receipts, settings, batch)
        except RpmError as exc:
            logging.getLogger(__name__).error("HL7 receipts not written (%d points): %s", len(batch), exc)

    sender = Sender(endpoint=endpoint, policy=policy, deadletter=kafka,
                    on_attempt=lambda a: lines.append(attempt_line(a, recipient=str(endpoint))))
    keys = settings.key_ring()
    health = FollowHealth(instance=follower_instance(socket.gethostname(), args.group), endpoint=str(endpoint))
    producer = AIOKafkaProducer(**kafka_client_kwargs(bootstrap), acks="all", enable_idempotence=False)
    await producer.start()

    async def send_beat(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        await producer.send_and_wait(topics.HEARTBEATS, value, key=key, headers=headers)

    beats = HeartbeatSender(send_beat, keys=keys, what="this HL7 follower", logger=logging.getLogger(__name__))
    beating = asyncio.create_task(beats.forever(health.heartbeat, stop), name="heartbeats")
    print(f"rpm hl7 follow: rpm.alerts → {endpoint} (Ctrl-C to stop)", flush=True)
    try:
        return await follow(bootstrap=bootstrap, sender=sender, header=_header(args), stop=stop,
                            after_send=after_send, from_beginning=args.from_beginning, group=args.group,
                            keys=keys, health=health)
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        if stop.is_set():  # stopped on purpose: not to be reported as silent (a crash says nothing)
            await beats.last(health.heartbeat("stopping"))
        await producer.stop()
        await sender.close()
        await kafka.close()


def follower_instance(host: str, group: str) -> str:
    """The follower's name in its heartbeats (and in ``tech.hl7_*``): ``host:group``, as an id."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", f"{host}:{group}")[-64:]


async def _deliver(settings: Settings, endpoint: Endpoint, policy: Policy, messages: list[Outgoing],
                   refused: Sequence[Refused] = ()) -> tuple[list[Receipt], list[str]]:
    """Send ``messages`` one by one; dead-letter them when refused or undeliverable, and dead-letter
    the ``refused`` rows (never sent: they cannot be encoded) with their reasons."""
    from hl7out.receipts import KafkaDeadLetters, attempt_line
    from hl7out.sender import AttemptRecord, Sender

    lines: list[str] = []

    def on_attempt(a: AttemptRecord) -> None:
        lines.append(attempt_line(a, recipient=str(endpoint)))

    kafka = KafkaDeadLetters(settings.kafka_bootstrap(), source=str(endpoint)) if settings.kafka_url else None

    async def deadletter(message: Outgoing, reason: str) -> None:
        if kafka is None:
            return  # reported on stderr by cmd_send
        try:
            await kafka(message, reason)
        except Exception as exc:  # aiokafka raises many kinds; the message is still reported as not delivered
            print(f"could not dead-letter {message.control_id} to Kafka ({type(exc).__name__}: {exc})",
                  file=sys.stderr)

    sender = Sender(endpoint=endpoint, policy=policy, on_attempt=on_attempt, deadletter=deadletter)
    try:
        for x in refused:
            await deadletter(x.item, x.reason)
        receipts = [await sender.send(m) for m in messages]
    finally:
        await sender.close()
        if kafka is not None:
            await kafka.close()
    return receipts, lines
