"""``rpm demo`` / ``rpm up``: the whole pipeline on one machine, headless.

Starts Mosquitto, Tansu and InfluxDB (or uses ``RPM_*_URL``), one bridge, one worker and the
nurse-station web page as their own processes (the same ``rpm bridge`` / ``rpm worker`` /
``rpm nurse-station`` an operator runs, the station with a one-off password), shows new alerts
on the console too, drives simulated patients through it, and finally reports from InfluxDB what
was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from rpm_app.services import INFLUX_READER, ServiceProcess, Stack, http_ok, influx_query, start_stack, stop_all
from rpm_core.errors import ServiceError
from rpm_core.host import free_port, port_open
from rpm_core.influx import InfluxQueryError
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.mqtt_users import BRIDGE_USER, SIMULATOR_USER, WATCHDOG_USER
from rpm_core.rules import load_rules
from rpm_core.settings import InfluxAuth, Settings

_LOGGER = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoOptions:
    """What ``rpm demo`` runs."""

    patients: int = 20
    duration_s: float | None = None
    workdir: str | None = None
    partitions: int = 8
    simulate: bool = True
    history_s: float = 1200.0
    station_port: int | None = None  # None: 8080 when free, else any; 0: any free port


def _env_for(stack: Stack, *, mqtt_user: str | None) -> dict[str, str]:
    s = stack.settings
    env = dict(os.environ)
    env.update({
        **s.kafka_env(),
        "RPM_SIGNING_KEYS_FILE": s.signing_keys_file or "",
        **stack.influx_env(),  # the writer (worker, notifier, station), its password in a file
        "RPM_RULES": str(Path(s.rules_path).resolve()),
    })
    if mqtt_user:
        env["RPM_MQTT_URL"] = stack.mqtt_url(mqtt_user)
    return env


def spawn_rpm(args: list[str], *, env: dict[str, str], log_path: Path, name: str) -> ServiceProcess:
    """Run ``rpm <args>`` as a child process (stopped by PID), logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rpm_app.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return ServiceProcess(name=name, proc=proc, workdir=log_path.parent, log_path=log_path, host="", port=0)


async def _alert_feed(bootstrap: str, since_s: float, stop: asyncio.Event) -> None:
    """A console nurse station: print each new alert state change from ``rpm.alerts``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        "rpm.alerts", **kafka_client_kwargs(bootstrap), auto_offset_reset="earliest",
        group_id=f"rpm-demo-feed-{os.getpid()}", enable_auto_commit=False, fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    _print_alert(record.value, since_s)
    finally:
        await consumer.stop()


def _print_alert(value: bytes | None, since_s: float) -> None:
    """Print one ``rpm.alerts`` record changed since ``since_s``; skip one that is not an alert event."""
    from notify.router import AlertUpdate

    try:
        event = orjson.loads(value or b"")  # JSONDecodeError is a ValueError
        alert = AlertUpdate.from_doc(event)  # the identifiers, severity, state and message checked
    except ValueError:
        return
    t = event.get("time")
    if isinstance(t, bool) or not isinstance(t, int | float) or not since_s <= t <= time.time() + 86400:
        return
    mark = {"critical": "!!!", "warning": " ! ", "info": " i "}.get(alert.severity, "   ")
    when = time.strftime("%H:%M:%S", time.gmtime(t))
    if event.get("kind") == "technical":
        remedy = event.get("remedy") or ""
        print(f"  [nurse station] {mark} {when}Z TECHNICAL {alert.state:<8} {console_text(alert.message)}"
              + (f" -> {console_text(str(remedy))}" if remedy and alert.state == "raised" else ""), flush=True)
        return
    print(f"  [nurse station] {mark} {when}Z {alert.patient:>8} {alert.state:<12} "
          f"{alert.severity:<8} {alert.rule}: {console_text(alert.message)}", flush=True)


def console_text(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, carriage returns, which
    could rewrite what the console shows) are printed as escapes, never sent raw."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _counts(influx_url: str, q: str, db: str, auth: InfluxAuth | None) -> dict[str, object]:
    """One counting query; credentials InfluxDB refuses are a :class:`ServiceError` that says which."""
    try:
        return influx_query(influx_url, q, db=db, method="POST", auth=auth)
    except InfluxQueryError as exc:
        if exc.status in (401, 403):
            who = auth.describe() if auth is not None else "no credentials"
            raise ServiceError(f"InfluxDB refused the demo's count as {who} ({exc.status}): check RPM_INFLUX_USER "
                               f"and RPM_INFLUX_PASSWORD_FILE (a user that may read {db!r})") from exc
        raise


def count_vitals(influx_url: str, db: str, since_s: float, auth: InfluxAuth | None = None) -> dict[str, int]:
    """Vitals points per metric written since ``since_s``."""
    q = f"SELECT count(value) FROM vitals WHERE time >= {int(since_s * 1e9)} GROUP BY metric"  # noqa: S608 (ints only)
    return {tags["metric"]: n for tags, n in _grouped_counts(_counts(influx_url, q, db, auth))}


def count_alerts(influx_url: str, db: str, since_s: float,
                 auth: InfluxAuth | None = None) -> dict[tuple[str, str], int]:
    """Raised alerts per (rule, severity) since ``since_s``."""
    q = (f"SELECT count(alert_id) FROM alerts WHERE state = 'raised' AND time >= {int(since_s * 1e9)} "  # noqa: S608
         "GROUP BY rule, severity")
    result = _grouped_counts(_counts(influx_url, q, db, auth))
    return {(tags["rule"], tags["severity"]): n for tags, n in result}


def _grouped_counts(doc: dict[str, Any]) -> list[tuple[dict[str, str], int]]:
    out: list[tuple[dict[str, str], int]] = []
    for result in doc.get("results", []):
        if "error" in result:
            raise ServiceError(f"InfluxDB query failed: {result['error']}")
        out.extend((series.get("tags", {}), int(series["values"][0][1])) for series in result.get("series", []))
    return out


DEMO_STATION: Final = "demo"


def _station_port(wanted: int | None) -> int:
    """``wanted``; by default 8080 when it is free (what the docs say), else (or for 0) any free port."""
    if wanted:
        return wanted
    return 8080 if wanted is None and not port_open("127.0.0.1", 8080) else free_port()


def _spawn_station(stack: Stack, logs: Path, wanted_port: int | None) -> tuple[ServiceProcess, str]:
    from rpm_core.roster import hash_password

    password = secrets.token_urlsafe(9)
    env = _env_for(stack, mqtt_user=None)
    env.pop("RPM_ROSTER", None)
    env["RPM_NURSE_CREDENTIALS"] = f"{DEMO_STATION}={hash_password(password)}"
    port = _station_port(wanted_port)
    kid = spawn_rpm(["nurse-station", "--port", str(port)], env=env, log_path=logs / "nurse-station.log",
                    name="nurse-station")
    kid.port = port
    return kid, password


@contextlib.asynccontextmanager
async def _children(stack: Stack, workdir: Path, options: DemoOptions) -> AsyncIterator[list[ServiceProcess]]:
    logs = workdir / "logs"
    health_port = free_port()
    kids = [
        spawn_rpm(["bridge", "--partitions", str(options.partitions), "--health-port", str(health_port)],
                  env=_env_for(stack, mqtt_user=BRIDGE_USER), log_path=logs / "bridge.log", name="bridge"),
        spawn_rpm(["worker", "--partitions", str(options.partitions), "--data-dir", str(workdir / "worker")],
                  env=_env_for(stack, mqtt_user=None), log_path=logs / "worker.log", name="worker"),
    ]
    try:
        station, password = _spawn_station(stack, logs, options.station_port)
        kids.append(station)
        # technical alerts (a worker or the bridge gone, InfluxDB failing): on the console and the station
        kids.append(spawn_rpm(["watchdog", "--startup-grace", "60"], env=_env_for(stack, mqtt_user=WATCHDOG_USER),
                              log_path=logs / "watchdog.log", name="watchdog"))
        # Mosquitto drops what is published before anyone subscribed: send nothing until the bridge
        # is connected to both brokers and subscribed (its persistent session covers restarts).
        await _ready(kids[0], f"http://127.0.0.1:{health_port}/healthz", "the bridge (connected and subscribed)")
        await _ready(station, f"http://127.0.0.1:{station.port}/login", "the nurse station")
        print(f"  nurse station  http://127.0.0.1:{station.port}/   station {DEMO_STATION!r}, "
              f"password {password!r} (this run only)", flush=True)
        yield kids
    finally:
        stop_all(kids)


async def _ready(kid: ServiceProcess, url: str, what: str) -> None:
    """Wait (without blocking the loop, so a signal stops the demo at once) until ``url`` answers 2xx."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await asyncio.to_thread(_alive_and, kid, lambda: http_ok(url)):
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not become ready within {READY_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.05)


def _alive_and(kid: ServiceProcess, check: Any) -> bool:
    if not kid.alive():
        raise ServiceError(f"{kid.name} exited with code {kid.proc.returncode}; see {kid.log_path}:\n{kid.log_tail()}")
    return bool(check())


class _Terminate:
    """SIGTERM handler: it stops the demo as Ctrl-C does, by cancelling the running demo (or raising).

    asyncio's own Ctrl-C handling cancels the main task so every ``finally`` runs; SIGTERM (kill,
    systemd) gets the same here. A second SIGTERM while stopping is ignored: stopping is bounded.
    """

    def __init__(self) -> None:
        self.received = False
        self.stopping = False  # the demo is already stopping everything: nothing more to do
        self.task: asyncio.Task[Any] | None = None

    def __call__(self, _signum: int, _frame: object) -> None:
        if self.received or self.stopping:
            return
        self.received = True
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            task.get_loop().call_soon_threadsafe(lambda: None)  # wake the loop from its select()
            return
        raise KeyboardInterrupt


def run_demo(settings: Settings, options: DemoOptions) -> int:
    """Run the demo; 0 when vitals and alerts reached InfluxDB, 130 after Ctrl-C, 143 after SIGTERM.

    However it ends, every process it started is stopped before it returns.
    """
    load_rules(settings.rules_path)  # a bad rules file stops here, with file, line and fix
    workdir = Path(options.workdir or "var/demo").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # A Ctrl-C must reach the demo even when whoever started it left SIGINT blocked or ignored (a
    # blocked mask and SIG_IGN are inherited across exec): the demo would otherwise run for ever.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    terminate = _Terminate()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        print(f"rpm demo: starting services in {workdir}", flush=True)
        stack = start_stack(settings, workdir / "services")  # stops what it started if interrupted
        try:
            return asyncio.run(_run(stack, workdir, options, terminate))
        finally:
            terminate.stopping = True
            stack.stop()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\nrpm demo: {'terminated' if terminate.received else 'interrupted'}; stopped", flush=True)
        return 143 if terminate.received else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _run(stack: Stack, workdir: Path, options: DemoOptions, terminate: _Terminate) -> int:
    terminate.task = asyncio.current_task()
    try:
        return await _run_pipeline(stack, workdir, options)
    except asyncio.CancelledError:
        print("\nrpm demo: stopping", flush=True)
        raise


async def _run_pipeline(stack: Stack, workdir: Path, options: DemoOptions) -> int:
    from rpm_core.topics import ensure_topics

    s = stack.settings
    await ensure_topics(s.kafka_bootstrap(), partitions=options.partitions)
    for name, svc in stack.processes.items():
        print(f"  {name:<10} pid {svc.pid:<7} 127.0.0.1:{svc.port}  (log {svc.log_path})")
    started = time.time()
    since = math.floor(started - options.history_s - 5)
    async with _children(stack, workdir, options) as kids:
        print(f"  bridge     pid {kids[0].pid:<7} (log {kids[0].log_path})\n"
              f"  worker     pid {kids[1].pid:<7} (log {kids[1].log_path})", flush=True)
        stop = asyncio.Event()
        feed = asyncio.create_task(_alert_feed(s.kafka_bootstrap(), since, stop))
        try:
            summary = await _drive(stack, options, kids)
            if summary is None:
                return 0
            ok = await _settle(stack, summary, since, kids)
        finally:
            stop.set()
            await feed
    print(f"rpm demo: finished in {time.time() - started:.0f} s; data stays in {workdir}")
    return 0 if ok else 1


async def _drive(stack: Stack, options: DemoOptions, kids: list[ServiceProcess]) -> dict[str, Any] | None:
    from simulators.runner import SimConfig, simulate

    if not options.simulate:
        print("rpm demo: pipeline running without simulator; Ctrl-C to stop", flush=True)
        await _watch(kids)
        return None
    duration = options.duration_s if options.duration_s is not None else math.inf
    print(f"rpm demo: simulating {options.patients} patients for "
          f"{'ever (Ctrl-C to stop)' if math.isinf(duration) else f'{duration:.0f} s'}; "
          f"each device first uploads {options.history_s:.0f} s of backlog", flush=True)
    cfg = SimConfig(patients=options.patients, duration_s=duration, history_s=options.history_s,
                    mqtt_url=stack.mqtt_url(SIMULATOR_USER))
    halt = threading.Event()
    sim = asyncio.ensure_future(asyncio.to_thread(simulate, cfg, stop=halt))
    watcher = asyncio.ensure_future(_watch(kids))
    try:
        await asyncio.wait({sim, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not sim.done():
            watcher.result()  # a child died: raises, naming it
        summary: dict[str, Any] = sim.result()
    finally:
        # Cancelled (Ctrl-C, SIGTERM) or failed: the simulator's thread and processes end too, or
        # asyncio.run would wait for that thread for ever.
        watcher.cancel()
        halt.set()
        await asyncio.wait({sim, watcher})
    print(f"rpm demo: simulator sent {summary['readings_sent']} readings {summary['by_metric']}", flush=True)
    return summary


async def _watch(kids: list[ServiceProcess]) -> None:
    # Child processes have no event to await here; polling their exit status is the way.
    while all(k.alive() for k in kids):  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    dead = next(k for k in kids if not k.alive())
    raise ServiceError(f"{dead.name} exited with code {dead.proc.returncode}; see {dead.log_path}:\n{dead.log_tail()}")


async def _settle(stack: Stack, summary: dict[str, Any], since: float, kids: list[ServiceProcess]) -> bool:
    s = stack.settings
    assert s.influx_url
    # the counts, like Grafana, need only read access (an InfluxDB of the operator's: its settings)
    reader, auth = s.require_influx(), stack.influx_auth(INFLUX_READER)
    expected: dict[str, int] = summary["by_metric"]
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    vitals: dict[str, int] = {}
    while time.monotonic() < deadline:
        vitals = await asyncio.to_thread(count_vitals, reader, s.influx_db, since, auth)
        if all(vitals.get(m, 0) >= n for m, n in expected.items()):
            break
        if not all(k.alive() for k in kids):
            await _watch(kids)
        await asyncio.sleep(1.0)
    await asyncio.sleep(1.5)  # let the feed print the last alerts
    alerts = await asyncio.to_thread(count_alerts, reader, s.influx_db, since, auth)
    _report(stack, expected, vitals, alerts)
    audited = await _report_audit(s)
    return all(vitals.get(m, 0) >= n for m, n in expected.items()) and bool(alerts) and audited


async def _report_audit(s: Settings) -> bool:
    """Verify the audit trail this run wrote (the worker's rules, the station's logins); say so."""
    from rpm_core.audit import TOPIC, AuditError, read_log, verify_log

    try:
        verdict = verify_log(await read_log(s.kafka_bootstrap(), TOPIC), s.key_ring())
    except AuditError as exc:
        print(f"  audit trail {TOPIC}: cannot be read ({exc})")
        return False
    print(f"  audit trail {TOPIC}: {verdict.entries} entries in {verdict.chains} chains, verify "
          f"{'OK' if verdict.ok else 'FAILED: ' + verdict.problem}  (try: rpm audit list)")
    return verdict.ok


def _report(stack: Stack, expected: dict[str, int], vitals: dict[str, int],
            alerts: dict[tuple[str, str], int]) -> None:
    s = stack.settings
    print(f"\nInfluxDB {s.require_influx()}, database {s.influx_db!r}:")
    print("  vitals written (measurement 'vitals'):")
    for metric, n in sorted(expected.items()):
        got = vitals.get(metric, 0)
        print(f"    {metric:<12} {got:>9} of {n:>9} sent{'' if got >= n else '  (MISSING)'}")
    print("  alerts raised (measurement 'alerts'):")
    for (rule, severity), n in sorted(alerts.items()):
        print(f"    {rule:<24} {severity:<8} {n:>5}")
    if not alerts:
        print("    none (EXPECTED SOME)")
    env = stack.influx_env(INFLUX_READER)
    user = f"-u {env['RPM_INFLUX_USER']}:$(cat {env['RPM_INFLUX_PASSWORD_FILE']}) " if "RPM_INFLUX_USER" in env else ""
    print(f"  try: curl -G {user}{s.require_influx()}/query --data-urlencode db={s.influx_db} "  # noqa: S608
          "--data-urlencode \"q=SELECT * FROM alerts WHERE state='raised'\"")
