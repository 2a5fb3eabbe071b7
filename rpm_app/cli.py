"""The ``rpm`` command: one entry point for every part of the product.

Configuration comes from the environment (see ``rpm_core.settings``) and matching flags; flags win.

Installs come by role (``rpm[edge]`` on a patient's gateway, ``rpm[server]`` for the rest), so
the command groups are registered by the modules that implement them, imported only for the
command being run (:data:`COMMAND_GROUPS`): ``rpm edge …`` imports nothing of the server side,
and a command whose packages this install lacks says which extra brings them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final, NamedTuple

import orjson

from rpm_core.errors import RpmError
from rpm_core.settings import Settings

_LOGGER = logging.getLogger(__name__)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
OUR_PACKAGES: Final = frozenset({"rpm_core", "rpm_app", "station", "edge_agent", "stream", "detectors", "simulators",
                                 "notify", "hl7out"})


class CommandGroup(NamedTuple):
    """Commands registered by ``module``'s ``add_commands``; ``extra`` is the install that brings them."""

    module: str
    extra: str
    commands: tuple[str, ...]


COMMAND_GROUPS: Final = (
    CommandGroup("edge_agent.cli", "edge", ("edge",)),
    CommandGroup("rpm_app.mqtt_auth", "server", ("mqtt-auth",)),
    CommandGroup("rpm_app.audit_cli", "server", ("audit",)),
    CommandGroup("rpm_app.backtest", "server", ("backtest",)),
    CommandGroup("rpm_app.cli_people", "server", ("nurse-station", "grafana", "report", "export")),
    CommandGroup("notify.cli", "server", ("notifier", "routes")),
    CommandGroup("stream.deadletter_cli", "server", ("deadletter",)),
    CommandGroup("hl7out.cli", "server", ("hl7",)),
)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {
        k: v for k, v in {
            "mqtt_url": getattr(args, "mqtt_url", None),
            "kafka_url": getattr(args, "kafka_url", None),
            "influx_url": getattr(args, "influx_url", None),
            "influx_db": getattr(args, "influx_db", None),
            "rules_path": getattr(args, "rules", None),
        }.items() if v
    }
    settings = replace(settings, **overrides)
    settings.validate()
    return settings


def _add_service_flags(p: argparse.ArgumentParser, *, mqtt: bool = True, kafka: bool = True,
                       influx: bool = True, rules: bool = False) -> None:
    if mqtt:
        p.add_argument("--mqtt-url", help="mqtt://user:pass@host:port (env RPM_MQTT_URL)")
    if kafka:
        p.add_argument("--kafka-url", help="kafka://host:port (env RPM_KAFKA_URL)")
    if influx:
        p.add_argument("--influx-url", help="http://host:8086 (env RPM_INFLUX_URL)")
        p.add_argument("--influx-db", help="database / bucket (env RPM_INFLUX_DB, default rpm)")
    if rules:
        p.add_argument("--rules", help="alert rules file (env RPM_RULES, default alert_rules.yaml)")


# --- commands ----------------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    """Publish simulated readings over MQTT."""
    from simulators.runner import SimConfig, simulate

    settings = _settings(args)
    summary = simulate(SimConfig(
        patients=args.patients, duration_s=args.duration, mqtt_url=settings.mqtt().url(redact=False),
        speed=args.speed, history_s=args.history, flush_s=args.flush_interval,
        processes=args.processes, seed=args.seed, first_index=args.first_patient,
    ))
    if args.summary_json:
        Path(args.summary_json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(f"sent {summary['readings_sent']} readings for {args.patients} patients: {summary['by_metric']}")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    """Run one MQTT→Kafka bridge until interrupted."""
    from stream.bridge import run_bridge

    settings = _settings(args)
    asyncio.run(run_bridge(settings, client_id=args.client_id, partitions=args.partitions,
                           health_port=args.health_port))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one Faust worker until interrupted."""
    from stream.worker import WorkerOptions, run_worker

    settings = _settings(args)
    audit_config_load(settings, "rpm worker", "rules", settings.rules_path)
    run_worker(settings, WorkerOptions(
        partitions=args.partitions, datadir=args.data_dir, web_port=args.web_port, loglevel=args.log_level,
        roster=args.roster,
    ))
    return 0


def audit_config_load(settings: Settings, via: str, kind: str, path: str) -> None:
    """Record in rpm.audit which ``kind`` file (rules, routes) a service starts with, and whether it
    changed since the last one recorded. A service still starts when this fails (monitoring first):
    the error is logged."""
    from rpm_core.audit import AuditError, os_user, record_config_load

    if not settings.kafka_url or not Path(path).is_file():
        return
    try:
        event = asyncio.run(record_config_load(settings.kafka_bootstrap(), settings.key_ring(), via, kind, path,
                                               actor=os_user()))
    except (AuditError, OSError) as exc:
        _LOGGER.error("the %s file %s was loaded but could not be audited: %s", kind, path, exc)
        return
    _LOGGER.info("audit: %s %s (sha256 %s)", event.action, path, event.detail["sha256"])


def cmd_watchdog(args: argparse.Namespace) -> int:
    """Run the watchdog that raises technical alerts until interrupted."""
    import socket

    from stream.watchdog import WatchdogConfig, WatchdogOptions, run_watchdog

    settings = _settings(args)
    config = WatchdogConfig(stale_after_s=args.stale_after, confirm_s=args.confirm, startup_grace_s=args.startup_grace,
                            ward_silent_after_s=args.ward_silent_after, deadletter_per_min=args.deadletter_per_min)
    asyncio.run(run_watchdog(settings, WatchdogOptions(
        instance=args.instance or f"rpm-watchdog-{socket.gethostname()}"[:64], health_port=args.health_port,
        roster=args.roster, config=config)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole pipeline with simulated patients."""
    from rpm_app.demo import DemoOptions, run_demo

    settings = _settings(args)
    return run_demo(settings, DemoOptions(
        patients=args.patients, duration_s=args.duration, workdir=args.workdir, partitions=args.partitions,
        simulate=not args.no_simulator, history_s=args.history, station_port=args.station_port,
    ))


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Validate and explain a rules file."""
    from rpm_core.rules import check_main

    return check_main(args.file)


# --- parser ------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--patients", type=_positive_int, default=20)
    p.add_argument("--duration", type=_positive_float, default=None,
                   help="seconds to simulate, then stop and report (default: until Ctrl-C)")
    p.add_argument("--history", type=float, default=1200.0,
                   help="seconds of backlog each virtual device uploads first (default 1200)")
    p.add_argument("--workdir", default=None, help="where services keep data and logs (default ./var/demo)")
    p.add_argument("--partitions", type=_positive_int, default=8)
    p.add_argument("--no-simulator", action="store_true", help="run the pipeline only")
    p.add_argument("--station-port", type=int, default=None,
                   help="the nurse station's port (default 8080 when free, else any; 0: any free port)")
    _add_service_flags(p, rules=True)
    p.set_defaults(func=cmd_demo)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``rpm``; for a ``command`` of a group, only that group is imported."""
    parser = argparse.ArgumentParser(prog="rpm", description="Remote patient monitoring pipeline.")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=os.environ.get("RPM_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_demo(sub, "demo", "run the whole pipeline with simulated patients, end to end")
    _add_demo(sub, "up", "run the whole pipeline (same as demo)")

    p = sub.add_parser("simulate", help="publish simulated patients' readings over MQTT")
    p.add_argument("--patients", type=_positive_int, required=True)
    p.add_argument("--duration", type=_positive_float, required=True, help="seconds of wall-clock time")
    p.add_argument("--speed", type=_positive_float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--history", type=float, default=0.0, help="seconds of backlog to upload first")
    p.add_argument("--flush-interval", type=_positive_float, default=1.0,
                   help="seconds of readings per MQTT message (default 1)")
    p.add_argument("--processes", type=int, default=0, help="publisher processes (default: automatic)")
    p.add_argument("--first-patient", type=int, default=0, help="number of the first patient (p0000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--summary-json", help="write the summary of what was sent to this file")
    _add_service_flags(p, kafka=False, influx=False)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("bridge", help="run one MQTT→Kafka bridge")
    p.add_argument("--client-id", default=None,
                   help="MQTT client id, bound to the MQTT user as <user>:<id> (default: <host>-<slot>, the lowest "
                        "slot free on this host)")
    p.add_argument("--partitions", type=_positive_int, default=8, help="partitions of rpm.readings if created")
    p.add_argument("--health-port", type=int, default=None,
                   help="serve GET /healthz on 127.0.0.1:PORT (0: any free port; default: off)")
    _add_service_flags(p, influx=False)
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("worker", help="run one Faust stream worker")
    p.add_argument("--partitions", type=_positive_int, default=8)
    p.add_argument("--data-dir", default=None, help="Faust data directory (default: a new temp dir)")
    p.add_argument("--web-port", type=int, default=0,
                   help="Faust web port, also serving /metrics and /healthz (default: a free port)")
    p.add_argument("--roster", default=None,
                   help="roster file: its patients of this worker's partitions are watched for staleness even "
                        "if they never send anything (env RPM_ROSTER; default: nobody is enrolled)")
    _add_service_flags(p, mqtt=False, rules=True)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("watchdog", help="raise technical alerts when rpm cannot monitor someone",
                       description="Watches the heartbeats of bridges and workers (and, with RPM_MQTT_URL, the "
                                   "edge agents' device alarms) and raises technical alerts on rpm.alerts: no "
                                   "worker for a partition, a bridge stuck or silent, InfluxDB failing, a ward "
                                   "gone silent, a surge of dead letters. See docs/security.md.")
    p.add_argument("--instance", default=None, help="this watchdog's name in its heartbeats")
    p.add_argument("--health-port", type=int, default=None, help="serve GET /healthz on 127.0.0.1:PORT (0: any)")
    p.add_argument("--roster", default=None, help="roster file: which wards an alert concerns (env RPM_ROSTER)")
    p.add_argument("--stale-after", type=_positive_float, default=15.0,
                   help="seconds without a heartbeat before a component is presumed gone (default 15)")
    p.add_argument("--confirm", type=float, default=10.0, help="seconds a condition must last (default 10)")
    p.add_argument("--startup-grace", type=float, default=30.0,
                   help="seconds after start in which components may still be coming up (default 30)")
    p.add_argument("--ward-silent-after", type=_positive_float, default=300.0,
                   help="seconds without any reading of a ward before it is alerted (default 300)")
    p.add_argument("--deadletter-per-min", type=_positive_int, default=100,
                   help="dead-lettered inputs per minute that raise an alert (default 100)")
    _add_service_flags(p, influx=False)
    p.set_defaults(func=cmd_watchdog)

    rules = sub.add_parser("rules", help="alert rules").add_subparsers(dest="rules_command", required=True)
    p = rules.add_parser("check", help="validate and explain a rules file")
    p.add_argument("file", nargs="?", default=os.environ.get("RPM_RULES", "alert_rules.yaml"))
    p.set_defaults(func=cmd_rules_check)
    _add_groups(sub, command)
    return parser


def _add_groups(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str | None) -> None:
    """Register the command groups: only ``command``'s when it names one, none for our own, else all."""
    groups = [g for g in COMMAND_GROUPS if command in g.commands]
    if not groups and command in sub.choices:
        return
    for group in groups or COMMAND_GROUPS:
        try:
            module = importlib.import_module(group.module)
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.split(".")[0] in OUR_PACKAGES:
                raise
            _add_missing(sub, group, exc.name)
        else:
            module.add_commands(sub)


def _add_missing(sub: argparse._SubParsersAction[argparse.ArgumentParser], group: CommandGroup, missing: str) -> None:
    """Stand-ins for a group this install cannot run: they say which extra to install."""
    for name in group.commands:
        p = sub.add_parser(name, help=f"(not installed: pip install 'rpm[{group.extra}]')")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=functools.partial(_not_installed, missing, group.extra))


def _not_installed(missing: str, extra: str, args: argparse.Namespace) -> int:
    print(f"rpm {args.command}: needs the Python package {missing!r}, which this install does not have; "
          f"install it with: pip install 'rpm[{extra}]'", file=sys.stderr)
    return 2


def _command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (None when it asks for the top-level help or names none)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log-level")
    _, rest = pre.parse_known_args(argv)
    for arg in rest:
        if arg in {"-h", "--help"}:
            return None
        if not arg.startswith("-"):
            return arg
    return None


class _JsonFormatter(logging.Formatter):
    """One JSON object per line (for log shippers); message text only, never a reading's value."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), "pid": record.process}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rpm`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    _configure_logging(args.log_level, os.environ.get("RPM_LOG_FORMAT", "text"))
    if args.log_level != "debug":
        # aiokafka narrates every group join at INFO; keep its warnings and errors only.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RpmError as exc:
        print(f"rpm {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] in OUR_PACKAGES:
            raise
        extra = next((g.extra for g in COMMAND_GROUPS if args.command in g.commands), "server")
        return _not_installed(exc.name, extra, args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
