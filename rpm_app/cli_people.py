"""The ``rpm`` commands for the people at the other end: nurse station, Grafana, report, FHIR export.

Registered into ``rpm_app.cli.build_parser`` by :func:`add_commands`. Heavy modules (aiohttp,
aiokafka, matplotlib, fhir.resources) are imported inside the handlers, so ``rpm --help`` and
the other commands stay fast.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from rpm_core.errors import ConfigError
from rpm_core.settings import Settings, check_private_file

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # a string: not subscriptable at run time


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {k: v for k, v in {
        "kafka_url": getattr(args, "kafka_url", None),
        "influx_url": getattr(args, "influx_url", None),
        "influx_db": getattr(args, "influx_db", None),
    }.items() if v}
    settings = replace(settings, **overrides)
    settings.validate()
    return settings


def _service_flags(p: argparse.ArgumentParser, *, kafka: bool = True) -> None:
    if kafka:
        p.add_argument("--kafka-url", help="kafka://host:port (env RPM_KAFKA_URL)")
    p.add_argument("--influx-url", help="http://host:8086 (env RPM_INFLUX_URL)")
    p.add_argument("--influx-db", help="database / bucket (env RPM_INFLUX_DB, default rpm)")


def _say(text: str, *, err: bool = False) -> None:
    """Console output of a command (stdout for results, stderr for advice)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def parse_time(text: str) -> datetime:
    """ISO 8601 (``2026-11-20``, ``2026-11-20T08:00Z``) or epoch seconds, as an aware UTC datetime."""
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time or epoch seconds: {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``5m``, ``1h`` or a number of seconds; ``0`` means "every reading"."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration (90s, 5m, 1h): {text!r}") from exc
    if seconds < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return timedelta(seconds=seconds)


# -- nurse station -------------------------------------------------------------------------------


def cmd_nurse_station(args: argparse.Namespace) -> int:
    """Serve the nurse station of one ward."""
    from station.nurse_station import StationOptions, run_station

    settings = _settings(args)
    if not settings.kafka_url:
        raise ConfigError("the nurse station needs Kafka: set RPM_KAFKA_URL or --kafka-url")

    def ready(ward: str, url: str) -> None:
        _say(f"rpm nurse-station: ward {ward} at {url}  (Ctrl-C to stop)")

    options = StationOptions(ward=args.ward, host=args.host, port=args.port, roster=args.roster,
                             state_dir=args.state_dir or os.environ.get("RPM_STATION_STATE_DIR") or None,
                             trusted_proxies=tuple(args.trusted_proxy or ())
                             + tuple(filter(None, [os.environ.get("RPM_STATION_TRUSTED_PROXIES")])),
                             supervision_timeout_s=args.supervision_timeout)
    return run_station(settings, options, on_ready=ready)


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print an scrypt hash of a password for the roster or ``RPM_NURSE_CREDENTIALS``."""
    from rpm_core.roster import hash_password

    what = "PIN" if args.pin else "station password"
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"New {what}: ")
        if getpass.getpass("Repeat it: ") != password:
            _say("the passwords differ; nothing printed", err=True)
            return 1
    from rpm_core.passwords import pin_weakness, weakness

    if args.pin:
        problem = pin_weakness(password)
        if problem:
            _say(problem, err=True)
            return 1
        _say(hash_password(password))
        return 0
    problem = weakness(password, names=tuple(args.station or ()))
    if problem:
        _say(problem, err=True)
        return 1
    encoded = hash_password(password)
    _say(encoded)
    if sys.stdout.isatty():
        _say("\nPut it in the roster (RPM_ROSTER) as a station's password_hash, or without a roster:\n"
             f"  export RPM_NURSE_CREDENTIALS='<station>={encoded}'", err=True)
    return 0


def cmd_kiosk(args: argparse.Namespace) -> int:
    """List or revoke the kiosk tokens of a station's state directory."""
    from station.kiosk import KioskRegistry, describe

    state_dir = args.state_dir or os.environ.get("RPM_STATION_STATE_DIR")
    if not state_dir:
        raise ConfigError("name the station's state directory: --state-dir or RPM_STATION_STATE_DIR")
    registry = KioskRegistry(state_dir)
    if args.kiosk_command == "revoke":
        if not registry.revoke(args.id):
            _say(f"no live kiosk {args.id!r} in {state_dir}", err=True)
            return 1
        _say(f"kiosk {args.id} revoked: that screen shows 'logged out' within seconds")
        from rpm_app.audit_cli import record_command
        from rpm_core.audit import AuditEvent, os_user

        record_command("rpm nurse-station kiosk", AuditEvent(action="kiosk_revoked", actor=os_user(), target=args.id,
                                                             detail={"state_dir": str(state_dir)}))
        return 0
    for k in registry.kiosks():
        d = describe(k)
        _say(f"{d['id']}  station={d['station']}  label={d['label'] or '-'}  "
             f"{'revoked' if d['revoked'] else 'live'}")
    return 0


def _add_nurse_station(sub: SubParsers) -> None:
    p = sub.add_parser("nurse-station", help="serve the live alert screen of a ward (web page)",
                       description="Serve the live alert screen of one ward. Without a roster the only ward is "
                                   "'all' and RPM_NURSE_CREDENTIALS must hold at least one station=hash.")
    p.add_argument("--ward", default=None, help="ward to show (default: the only ward, or 'all' without a roster)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--roster", default=None, help="roster YAML (env RPM_ROSTER)")
    p.add_argument("--state-dir", default=None,
                   help="directory for kiosk tokens (key + list); kiosks stay logged in across restarts "
                        "(env RPM_STATION_STATE_DIR; without it no kiosk mode)")
    p.add_argument("--supervision-timeout", type=float, default=45.0, metavar="S",
                   help="no heartbeat from rpm watchdog for S seconds turns into a technical alarm on the screen "
                        "(default 45; 0: no watchdog is run, nothing supervises the pipeline)")
    p.add_argument("--trusted-proxy", action="append", default=None, metavar="ADDR",
                   help="address or network of a TLS reverse proxy whose X-Forwarded-Proto/For/Host are believed "
                        "(repeatable; env RPM_STATION_TRUSTED_PROXIES, comma-separated)")
    _service_flags(p)
    p.set_defaults(func=cmd_nurse_station)
    inner = p.add_subparsers(dest="station_command", metavar="[hash-password | kiosk]")
    h = inner.add_parser("hash-password", help="print the scrypt hash of a station password")
    h.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    h.add_argument("--station", action="append", default=None, metavar="ID",
                   help="the station (or badge) it is for: a password containing its name is refused")
    h.add_argument("--pin", action="store_true",
                   help="hash a nurse's PIN (roster nurses: pin_hash; at least 6 digits) instead of a password")
    h.set_defaults(func=cmd_hash_password)
    k = inner.add_parser("kiosk", help="list or revoke kiosk tokens (ward screens that stay logged in)")
    k.add_argument("--state-dir", default=None, help="the station's --state-dir (env RPM_STATION_STATE_DIR)")
    kinner = k.add_subparsers(dest="kiosk_command", metavar="list | revoke ID")
    kinner.add_parser("list", help="list kiosks")
    r = kinner.add_parser("revoke", help="revoke one kiosk (its screen is logged out at once)")
    r.add_argument("id")
    k.set_defaults(func=cmd_kiosk)


# -- grafana -------------------------------------------------------------------------------------


def cmd_grafana_provision(args: argparse.Namespace) -> int:
    """Write Grafana provisioning files."""
    from rpm_app.grafana import ProvisionOptions, provision
    from rpm_core.roster import load_roster

    roster = load_roster(args.roster) if (args.roster or os.environ.get("RPM_ROSTER")) else None
    user = args.influx_user or os.environ.get("RPM_INFLUX_USER") or None
    password_file = args.influx_password_file or os.environ.get("RPM_INFLUX_PASSWORD_FILE") or None
    if password_file:  # Grafana will read it: it must exist and be private (chmod 600; readable by Grafana's user)
        check_private_file(password_file, what="--influx-password-file")
    if password_file and not user:
        raise ConfigError("--influx-password-file needs --influx-user (Grafana's read-only InfluxDB user)")
    written = provision(Path(args.out), ProvisionOptions(
        influx_url=args.influx_url or os.environ.get("RPM_INFLUX_URL") or "http://localhost:8086",
        influx_db=args.influx_db or os.environ.get("RPM_INFLUX_DB") or "rpm",
        dashboards_path=args.dashboards_path, token=args.token, roster=roster, datasource_uid=args.datasource_uid,
        influx_user=user, influx_password_file=password_file,
    ))
    for path in written:
        _say(str(path))
    _say(f"\nPoint Grafana's provisioning directory at {Path(args.out).resolve()} (see docs/grafana.md).", err=True)
    return 0


def _add_grafana(sub: SubParsers) -> None:
    g = sub.add_parser("grafana", help="Grafana dashboards for clinicians").add_subparsers(
        dest="grafana_command", required=True, metavar="SUBCOMMAND")
    p = g.add_parser("provision", help="write data source and dashboards as Grafana provisioning files")
    p.add_argument("--out", required=True, help="directory to write (datasources/, dashboards/)")
    p.add_argument("--influx-url", help="InfluxDB URL as Grafana reaches it (default: RPM_INFLUX_URL)")
    p.add_argument("--influx-db", help="database (1.x) / DBRP-mapped bucket (2.x) / database (3.x)")
    p.add_argument("--influx-user", help="InfluxDB 1.x user Grafana queries as: a read-only one "
                   "(default: RPM_INFLUX_USER)")
    p.add_argument("--influx-password-file", help="file holding that user's password (mode 0600), read by "
                   "Grafana at start ($__file{...}); never copied into the provisioning files "
                   "(default: RPM_INFLUX_PASSWORD_FILE)")
    p.add_argument("--token", action="store_true",
                   help="InfluxDB 2.x/3.x: send 'Authorization: Token $RPM_INFLUX_TOKEN' (Grafana expands it)")
    p.add_argument("--dashboards-path", default=None,
                   help="where Grafana will find the dashboard JSON (default: OUT/dashboards/rpm, absolute)")
    p.add_argument("--roster", default=None, help="roster YAML: one ward dashboard per ward (env RPM_ROSTER)")
    p.add_argument("--datasource-uid", default="rpm-influxdb",
                   help="uid of the InfluxDB data source the dashboards use (an existing one's, to reuse it)")
    p.set_defaults(func=cmd_grafana_provision)


# -- report --------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """Write the clinician report of one patient."""
    from rpm_app.report import ReportOptions, write_report

    settings = _settings(args)
    end = args.end or datetime.now(UTC)
    out = Path(args.out)
    png = Path(args.png) if args.png not in (None, "") else (out.with_suffix(".png") if args.png == "" else None)
    result = write_report(settings, ReportOptions(
        patient=args.patient, start=end - timedelta(days=args.days), end=end, out=out, png=png, tz=args.tz,
        progress=not args.quiet, unit=args.units,
    ))
    for path in result:
        _say(str(path))
    _audit_export("rpm report", "export.report", args.patient, str(out),
                  since=(end - timedelta(days=args.days)).isoformat(), until=end.isoformat())
    return 0


def _audit_export(via: str, action: str, patient: str, to: str, **detail: str | int) -> None:
    """Record in rpm.audit who exported which patient's data, for when, and where to."""
    from rpm_app.audit_cli import record_command
    from rpm_core.audit import AuditEvent, os_user

    record_command(via, AuditEvent(action=action, actor=os_user(), target=to, patient=patient,
                                   detail={"to": to, **detail}))


def _add_report(sub: SubParsers) -> None:
    p = sub.add_parser("report", help="clinician report of one patient (HTML, optional PNG)")
    p.add_argument("--patient", required=True)
    p.add_argument("--days", type=float, default=14.0, help="days before --end to cover (default 14)")
    p.add_argument("--end", type=parse_time, default=None, help="end of the period (default: now)")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--png", nargs="?", const="", default=None,
                   help="also write the figures as one PNG (default name: OUT with .png)")
    p.add_argument("--tz", default="UTC", help="time zone for time of day in the AGP (e.g. Europe/Berlin)")
    p.add_argument("--units", choices=("mg/dL", "mmol/L"), default="mg/dL", help="glucose unit (default mg/dL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _service_flags(p, kafka=False)
    p.set_defaults(func=cmd_report)


# -- export --------------------------------------------------------------------------------------


def cmd_export_fhir(args: argparse.Namespace) -> int:
    """Write a FHIR R4 Bundle of one patient's vitals and alerts."""
    from rpm_app.fhir import ExportOptions, export_bundle
    from rpm_core.interpretation import limits
    from rpm_core.rules import load_rules

    settings = _settings(args)
    data = export_bundle(settings, ExportOptions(
        patient=args.patient, since=args.since, until=args.until or datetime.now(UTC),
        heart_rate_every=args.heart_rate_every, patient_reference=args.patient_reference,
        limits=limits(load_rules(settings.rules_path), args.patient),
    ), transaction=bool(args.post))
    if args.post:
        from rpm_app.fhir_post import post_transaction

        answer = post_transaction(args.post, data, retries=args.retries, token=os.environ.get("RPM_FHIR_TOKEN", ""))
        _say(f"posted {len(answer.get('entry') or [])} resources to {args.post}", err=True)
    if args.out:
        Path(args.out).write_bytes(data)
        _say(f"wrote {args.out}", err=True)
    elif not args.post:
        sys.stdout.buffer.write(data + b"\n")
    period = {"since": args.since.isoformat(), "until": (args.until or datetime.now(UTC)).isoformat()}
    if args.post:
        _audit_export("rpm export fhir", "export.fhir.post", args.patient, args.post, **period)
    if args.out or not args.post:
        _audit_export("rpm export fhir", "export.fhir", args.patient, args.out or "-", **period)
    return 0


def _add_export(sub: SubParsers) -> None:
    e = sub.add_parser("export", help="export data to other systems").add_subparsers(
        dest="export_command", required=True, metavar="FORMAT")
    p = e.add_parser("fhir", help="FHIR R4 Bundle (collection) of vital-sign Observations and alert history")
    p.add_argument("--patient", required=True)
    p.add_argument("--since", required=True, type=parse_time, help="ISO 8601 start (UTC unless an offset is given)")
    p.add_argument("--until", type=parse_time, default=None, help="ISO 8601 end (default: now)")
    p.add_argument("--out", default=None, help="file to write (default: stdout)")
    p.add_argument("--heart-rate-every", type=parse_duration, default=timedelta(minutes=5),
                   help="one heart-rate Observation (mean) per interval; 0 = every reading (default 5m)")
    p.add_argument("--patient-reference", default=None,
                   help="the EMR's reference for the patient, e.g. Patient/123 (default: Patient/<patient id>)")
    p.add_argument("--post", default=None, metavar="URL",
                   help="send the Bundle as a FHIR transaction (PUT per resource) to this server base URL, with "
                        "retries; a bearer token from env RPM_FHIR_TOKEN if set")
    p.add_argument("--retries", type=int, default=5, help="--post: retries after 408/429/5xx/no answer (default 5)")
    _service_flags(p, kafka=False)
    p.set_defaults(func=cmd_export_fhir)


def add_commands(sub: SubParsers) -> None:
    """Register ``nurse-station``, ``grafana``, ``report`` and ``export``."""
    _add_nurse_station(sub)
    _add_grafana(sub)
    _add_report(sub)
    _add_export(sub)
