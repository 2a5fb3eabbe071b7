"""``rpm audit list / verify / export``: read and check the audit trail (``rpm.audit``, :mod:`rpm_core.audit`).

``verify`` exits 0 when every entry verifies and 1 naming the first that does not (its offset,
chain, seq and why); with ``--heads FILE`` it also fails when a chain head recorded there by an
earlier run is gone (entries removed from the end), then records the current heads. ``export``
writes the records exactly as stored (JSON lines), which ``verify --file`` checks offline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

import orjson

from rpm_core.audit import (
    TOPIC,
    AuditDecodeError,
    AuditError,
    AuditEvent,
    StoredRecord,
    Verdict,
    clean_text,
    decode_entry,
    read_log,
    record_now,
    verify_log,
)
from rpm_core.errors import ConfigError
from rpm_core.files import write_atomic
from rpm_core.settings import Settings
from rpm_core.signing import KeyRing

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.kafka_url:
        from dataclasses import replace

        settings = replace(settings, kafka_url=args.kafka_url)
    settings.validate()
    return settings


def _records(args: argparse.Namespace) -> list[StoredRecord]:
    if getattr(args, "file", None):
        return read_export(Path(args.file))
    settings = _settings(args)
    if not settings.kafka_url:
        raise ConfigError("the audit trail is in Kafka: set RPM_KAFKA_URL or --kafka-url (or verify --file EXPORT)")
    return asyncio.run(read_log(settings.kafka_bootstrap(), args.topic))


def _keys(args: argparse.Namespace) -> KeyRing | None:
    if getattr(args, "keys", None):
        return KeyRing.load(args.keys)
    return Settings.from_env().key_ring()


def record_command(via: str, *events: AuditEvent) -> None:
    """Record what a command did in ``rpm.audit`` (RPM_KAFKA_URL, signed with RPM_SIGNING_KEYS_FILE).

    Without RPM_KAFKA_URL it says on stderr that nothing was audited; when Kafka does not take the
    entries, :class:`AuditError` (the command exits 2: done, but not audited).
    """
    settings = Settings.from_env()
    if not settings.kafka_url:
        sys.stderr.write(f"{via}: not audited: RPM_KAFKA_URL is not set, so rpm.audit cannot be written\n")
        return
    try:
        record_now(settings.kafka_bootstrap(), settings.key_ring(), via, *events)
    except AuditError as exc:
        raise AuditError(f"done, but NOT audited: {exc}") from exc


# --- export format -----------------------------------------------------------------------------------


def export_line(rec: StoredRecord) -> bytes:
    """One JSON line of an export: the record as stored (value as text, it is canonical JSON)."""
    return orjson.dumps({
        "partition": rec.partition, "offset": rec.offset,
        "key": rec.key.decode("utf-8", "replace") if rec.key is not None else None,
        "value": rec.value.decode("utf-8", "replace") if rec.value is not None else None,
        "sig": rec.sig.decode("ascii", "replace") if rec.sig is not None else None,
        "value_b64": None if rec.value is None or _is_utf8(rec.value) else base64.b64encode(rec.value).decode(),
    }) + b"\n"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_export(path: Path) -> list[StoredRecord]:
    """The records of an export file, in its order (the file's order is what is checked)."""
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            value = base64.b64decode(doc["value_b64"]) if doc.get("value_b64") else (
                doc["value"].encode() if doc["value"] is not None else None)
            out.append(StoredRecord(int(doc["partition"]), int(doc["offset"]),
                                    doc["key"].encode() if doc["key"] is not None else None, value,
                                    doc["sig"].encode() if doc["sig"] else None))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}:{n}: not a line of `rpm audit export`") from exc
    return out


# --- commands ----------------------------------------------------------------------------------------


def _when(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_list(args: argparse.Namespace) -> int:
    """``rpm audit list``: entries oldest first; ``!`` marks one that does not verify (``rpm audit verify --all``)."""
    shown = 0
    records = _records(args)
    suspect = {(r.partition, r.offset) for r, _p in verify_log(records, _keys(args), every=True).problems if r}
    for rec in records:
        try:
            body = decode_entry(rec.value)
        except AuditDecodeError as exc:
            _say(f"{rec.offset:>8}  (not an audit entry: {exc.reason})")
            continue
        if not _wanted(body, args):
            continue
        shown += 1
        bad = (rec.partition, rec.offset) in suspect
        if args.json:
            _say(orjson.dumps({"offset": rec.offset, "verified": not bad, **body}).decode())
            continue
        t = {k: clean_text(v) for k, v in body.items() if isinstance(v, str)}  # a forged entry may hold escapes
        detail = " ".join(f"{clean_text(k)}={clean_text(v)}" for k, v in sorted(body["detail"].items()))
        patient = f"  patient={t['patient']}" if t["patient"] else ""
        _say(f"{'!' if bad else ' '}{rec.offset:>7}  {_when(body['at_ms'])}  {t['via']:<16} {t['actor']:<20} "
             f"{t['action']:<20} {t['outcome']:<7} {t['target'] or '-'}{patient}{'  ' + detail if detail else ''}")
    if not args.json:
        marked = f"; {len(suspect)} marked ! do not verify (rpm audit verify --all)" if suspect else ""
        _say(f"{shown} entries{marked}")
    return 0


def _wanted(body: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.action and not body["action"].startswith(args.action):
        return False
    if args.actor and body["actor"] != args.actor:
        return False
    if args.patient and body["patient"] != args.patient:
        return False
    return not (args.since and body["at_ms"] < args.since.timestamp() * 1000)


def _heads_doc(verdict: Verdict) -> bytes:
    return orjson.dumps({c: [seq, digest] for c, (seq, digest) in sorted(verdict.heads.items())},
                        option=orjson.OPT_INDENT_2) + b"\n"


def _load_heads(path: Path) -> dict[str, tuple[int, str]]:
    if not path.exists():
        return {}
    try:
        doc = orjson.loads(path.read_bytes())
        return {str(c): (int(v[0]), str(v[1])) for c, v in doc.items()}
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{path}: not a heads file of `rpm audit verify --heads`") from exc


def cmd_verify(args: argparse.Namespace) -> int:
    """``rpm audit verify``: 0 when the whole trail verifies, 1 naming the first bad entry."""
    keys = _keys(args)
    heads_path = Path(args.heads) if args.heads else None
    expected = _load_heads(heads_path) if heads_path else None
    verdict = verify_log(_records(args), keys, expected, every=args.all)
    signed = "signed entries (HMAC)" if keys else "hashes only: no RPM_SIGNING_KEYS_FILE, so a rewriter is not excluded"
    if not verdict.ok:
        where = f"first bad entry at {verdict.bad.where}: " if verdict.bad else ""
        sys.stderr.write(f"rpm audit verify: FAILED after {verdict.entries} good entries; {where}{verdict.problem}\n")
        for rec, problem in verdict.problems[1:] if args.all else ():
            sys.stderr.write(f"  also {'at ' + rec.where if rec else 'at the end'}: {problem}\n")
        return 1
    _say(f"rpm audit verify: OK: {verdict.entries} entries in {verdict.chains} chains"
         f"{f', {verdict.duplicates} retried duplicates' if verdict.duplicates else ''}; {signed}")
    if heads_path:
        write_atomic(heads_path, _heads_doc(verdict).decode(), mode=0o600)
        _say(f"chain heads recorded in {heads_path} (keep it where the audit's writers cannot change it)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``rpm audit export``: every record as stored, JSON lines."""
    records = _records(args)
    data = b"".join(export_line(r) for r in records)
    if args.out:
        write_atomic(Path(args.out), data.decode(), mode=0o600)
        sys.stderr.write(f"wrote {len(records)} records to {args.out}\n")
    else:
        sys.stdout.buffer.write(data)
    return 0


def _since(text: str) -> datetime:
    from rpm_app.cli_people import parse_time

    return parse_time(text)


def add_commands(sub: SubParsers) -> None:
    """Register ``rpm audit`` and its subcommands."""
    p = sub.add_parser("audit", help="the audit trail: list, verify (tamper evidence), export")
    commands = p.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")

    c = commands.add_parser("list", help="show audit entries (oldest first)")
    c.add_argument("--since", type=_since, default=None, help="ISO 8601 time or epoch seconds")
    c.add_argument("--action", default=None, help="only actions starting with this (login, ack, credential., …)")
    c.add_argument("--actor", default=None, help="only this actor (nurse, station, OS user, service)")
    c.add_argument("--patient", default=None, help="only entries about this patient")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    _common(c)
    c.set_defaults(func=cmd_list)

    c = commands.add_parser("verify", help="check the hash chains and signatures; exit 1 naming the first bad entry")
    c.add_argument("--file", default=None, help="verify an `rpm audit export` file instead of the topic")
    c.add_argument("--keys", default=None, help="keys file to verify with (default RPM_SIGNING_KEYS_FILE; keep "
                                                "retired keys in it to verify old entries)")
    c.add_argument("--all", action="store_true",
                   help="list every problem, not only the first (one forged record cannot hide later ones)")
    c.add_argument("--heads", default=None, metavar="FILE",
                   help="fail if a chain head recorded in FILE is gone (tail removed); then record the current heads")
    _common(c)
    c.set_defaults(func=cmd_verify)

    c = commands.add_parser("export", help="every record as stored, JSON lines (for archives and offline verify)")
    c.add_argument("--out", default=None, help="file to write (mode 0600; default stdout)")
    _common(c)
    c.set_defaults(func=cmd_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka-url", help="kafka://host:port (env RPM_KAFKA_URL)")
    p.add_argument("--topic", default=TOPIC, help=f"the audit topic (default {TOPIC})")
