"""End-to-end benchmark (issue 7): MQTT → bridge → Kafka → Faust → InfluxDB, against the sink's limit and peers.

Reproduce (from the repository root; results and machine in benchmarks/RESULTS.md, "End to end")::

    .venv/bin/python -m benchmarks.e2e --quick                       # < 2 min: ours at 2 loads + the limit
    .venv/bin/python -m benchmarks.e2e --loads 10000,30000,50000 --max --peers naive,nodered-stock,nodered-tuned
    .venv/bin/python -m benchmarks.e2e --sweep-patients 10000,30000,100000,300000 --sweep-rate 40000  # sweep alone

One run starts Mosquitto, Tansu and InfluxDB (``rpm_app.services``; or uses ``RPM_*_URL``), then:

1. **ours**: ``rpm bridge`` and ``rpm worker`` as child processes (as ``rpm demo`` runs them), with
   the rules of ``alert_rules.yaml`` plus the latency probe of ``benchmarks/e2e_rules.yaml``;
   each offered load of ``--loads`` for ``--duration`` seconds (``benchmarks/loadgen.py``: simulated
   patients, heart rate 1 Hz with RR intervals, CGM every 5 min, 10 readings per MQTT message,
   QoS 1); with ``--max``, a ramp (×1.3 per step) up to the highest load it sustains with zero loss,
   then an overload run at twice that load, which must lose nothing either (with patients in
   proportion to the rate, as every load, and again with the maximum's patients only: twice the
   readings per patient, no new patients' series for InfluxDB to create during it);
2. **the limit** (``benchmarks/influx_limit.py``): the same points written directly into InfluxDB
   by one client in 5,000-line batches;
3. **the peers** of ``--peers`` (``benchmarks/peers``), each alone on the same services (our
   bridge is stopped and its MQTT session removed first), at the same offered loads.

Per run: readings offered/published/acknowledged by Mosquitto, written to InfluxDB (``count(value)``
of ``vitals`` per metric after the pipeline drained) and the loss (acknowledged − written, whatever
its sign); the steady rate (InfluxDB's ``pointsWrittenOK`` counter, sampled every 0.5 s, over the
load window minus its first 2 s) and the sustained rate (written / first publish → last write);
per-stage rates (generator, bridge ``/metrics``, worker ``/metrics`` when it serves them, InfluxDB);
the latency from a probe sample's device timestamp to its alert arriving on Kafka ``rpm.alerts``
(the worker publishes an alert only after writing it to InfluxDB; the alerts are also counted in
InfluxDB); every process's CPU time per reading written (the stage profile), and, during the load
and during the drain after it, the cores each process used, the worker's time split (its metrics)
and InfluxDB's write requests (its ``httpd`` counters: :func:`influx_requests`).

With ``--max`` (or ``--sweep-patients`` alone), a patient-count sweep follows: one offered rate spread over
more and more patients, each point primed and measured in its steady state (:func:`sweep_patients`);
the ``--max`` report also gives the overload plateau (:func:`overload_plateau`).

A run *sustains* its load when nothing is lost, the steady rate is ≥ 95 % of the offered rate, the
generator kept to its schedule and the backlog drained within max(3 s, 20 % of the duration).
Output: a table on the console, ``--out`` (JSON) and the same path with ``.md`` (tables).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import itertools
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
import psutil
import yaml

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import influx_limit, loadgen  # noqa: E402
from rpm_app.services import ServiceProcess, Stack, http_ok, influx_query, start_stack, wait_until  # noqa: E402
from rpm_core.host import free_port  # noqa: E402
from rpm_core.mqtt_users import ADMIN_USER, BRIDGE_USER, SIMULATOR_USER  # noqa: E402
from rpm_core.settings import MqttSettings, Settings  # noqa: E402

PROBE_RULE: Final = "bench_latency_probe"
READY_PATIENT: Final = "e2e-ready"
BRIDGE_CLIENT_ID: Final = "rpm-bridge-e2e"
SAMPLE_INTERVAL_S: Final = 0.5
WARMUP_S: Final = 2.0
PLATEAU_WINDOW_S: Final = 5.0
# Once InfluxDB has taken as many points as the run's readings, their count is asked at most this often.
DRAIN_COUNT_EVERY_S: Final = 3.0
PARTITIONS: Final = 8
QUICK_LOADS: Final = (10_000, 20_000)
DEFAULT_LOADS: Final = (10_000, 30_000, 50_000)
PEERS: Final = ("naive", "nodered-stock", "nodered-tuned")
# Our settings a run may be given from the caller's environment (every other RPM_ variable is
# dropped): RPM_STATE_FORMAT=json measures the checkpoints of the previous version (issue 20).
PASSED_ENV: Final = ("RPM_STATE_FORMAT",)
RSS_OF: Final = ("worker", "bridge")  # processes whose resident memory is sampled
# The patient-count sweep of --max (and --sweep-patients): a fixed offered rate spread over more and more patients.
SWEEP_PATIENTS: Final = (10_000, 30_000, 100_000, 300_000)
SWEEP_RATE: Final = 40_000.0
# Before each sweep point every patient sends one message (a heart rate and an RR interval), at this many
# readings/s (at least twice their CGM rate), so the measured run starts with every patient's state in the
# worker and their series in InfluxDB.
PRIME_RATE: Final = 10_000.0
SWEEP_SETTLE_S: Final = 35.0  # see sweep_patients


# --- what runs: ours or a peer ---------------------------------------------------------------------


class System(Protocol):
    """A pipeline under test: MQTT readings in, ``vitals`` points out."""

    name: str
    database: str
    alerts: bool  # publishes probe alerts to Kafka rpm.alerts (latency measured)

    def start(self) -> None:
        """Start, and return once it consumes readings."""

    def stop(self) -> None:
        """Stop (and leave no MQTT subscription behind)."""

    def alive(self) -> bool:
        """Whether its processes still run."""

    def labels(self) -> dict[int, str]:
        """Process id → stage name, for the CPU profile."""

    def metrics_urls(self) -> dict[str, str]:
        """Stage name → Prometheus ``/metrics`` URL."""


def _env(stack: Stack, *, mqtt_user: str | None, rules: Path) -> dict[str, str]:
    s = stack.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_") or k in PASSED_ENV}
    env.update({"RPM_SIGNING_KEYS_FILE": s.signing_keys_file or "",
                "RPM_KAFKA_URL": s.kafka_url or "", "RPM_INFLUX_URL": s.influx_url or "",
                "RPM_INFLUX_DB": s.influx_db, "RPM_RULES": str(rules), "PYTHONUNBUFFERED": "1"})
    if mqtt_user:
        env["RPM_MQTT_URL"] = stack.mqtt_url(mqtt_user)
    return env


def _spawn_rpm(name: str, args: list[str], env: dict[str, str], logs: Path) -> ServiceProcess:
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rpm_app.cli", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=ROOT)
    return ServiceProcess(name=name, proc=proc, workdir=logs, log_path=log_path, host="", port=0)


class Ours:
    """``rpm bridge`` + ``rpm worker``, one each, as ``rpm demo`` runs them."""

    alerts = True

    def __init__(self, stack: Stack, workdir: Path, rules: Path) -> None:
        self.name = "ours"
        self.stack = stack
        self.database = stack.settings.influx_db
        self.workdir = workdir
        self.rules = rules
        self.health_port = free_port()
        self.web_port = free_port()
        self.kids: list[ServiceProcess] = []
        self._worker_metrics: str | None = None

    def start(self) -> None:
        logs = self.workdir / "logs"
        self.kids = [
            _spawn_rpm("bridge", ["bridge", "--partitions", str(PARTITIONS), "--health-port", str(self.health_port),
                                  "--client-id", BRIDGE_CLIENT_ID],
                       _env(self.stack, mqtt_user=BRIDGE_USER, rules=self.rules), logs),
            _spawn_rpm("worker", ["worker", "--partitions", str(PARTITIONS), "--data-dir",
                                  str(self.workdir / "worker"), "--web-port", str(self.web_port)],
                       _env(self.stack, mqtt_user=None, rules=self.rules), logs),
        ]
        wait_until(lambda: self._alive_and(http_ok(f"http://127.0.0.1:{self.health_port}/healthz")),
                   timeout=60, what="the bridge (connected and subscribed)", interval=0.1)
        _wait_ready(self.stack, self)
        url = f"http://127.0.0.1:{self.web_port}/metrics"
        self._worker_metrics = url if "rpm_worker_readings_total" in (_get_text(url) or "") else None

    def _alive_and(self, ok: bool) -> bool:
        if not self.alive():
            dead = next(k for k in self.kids if not k.alive())
            raise RuntimeError(f"{dead.name} exited ({dead.proc.returncode}):\n{dead.log_tail(30)}")
        return ok

    def stop(self) -> None:
        for kid in reversed(self.kids):
            kid.stop()
        _remove_mqtt_session(self.stack, BRIDGE_CLIENT_ID)

    def alive(self) -> bool:
        return all(k.alive() for k in self.kids)

    def labels(self) -> dict[int, str]:
        return {k.pid: k.name for k in self.kids}

    def metrics_urls(self) -> dict[str, str]:
        urls = {"bridge": f"http://127.0.0.1:{self.health_port}/metrics"}
        if self._worker_metrics:
            urls["worker"] = self._worker_metrics
        return urls


class Peer:
    """A peer of ``benchmarks/peers`` (imported lazily; skipped with a message when missing)."""

    alerts = False

    def __init__(self, kind: str, stack: Stack, workdir: Path) -> None:
        self.name = kind
        self.kind = kind
        self.stack = stack
        self.database = "peer_" + kind.replace("-", "_")
        self.workdir = workdir / kind
        self.handle: Any = None

    def start(self) -> None:
        s = self.stack.settings
        assert s.influx_url
        influx_query(s.influx_url, f'CREATE DATABASE "{self.database}"')
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "naive":
            mod = importlib.import_module("benchmarks.peers.naive_peer")
            self.handle = mod.start(mqtt_url=self.stack.mqtt_url(BRIDGE_USER), kafka_bootstrap=s.kafka_bootstrap(),
                                    influx_url=s.influx_url, database=self.database, workdir=self.workdir)
        else:
            mod = importlib.import_module("benchmarks.peers.nodered_peer")
            mod.ensure_installed()
            # the admin user: the flow's readiness check publishes a birth message under rpm/v1/bench/
            m = MqttSettings.from_url(self.stack.mqtt_url(ADMIN_USER))
            self.handle = mod.start(self.kind.split("-", 1)[1], mqtt_host=m.host, mqtt_port=m.port,
                                    mqtt_user=m.username, mqtt_password=m.password.get(), influx_url=s.influx_url,
                                    database=self.database, workdir=self.workdir)
        _wait_ready(self.stack, self)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()

    def alive(self) -> bool:
        return self.handle is not None and bool(self.handle.alive())

    def labels(self) -> dict[int, str]:
        return {}

    def metrics_urls(self) -> dict[str, str]:
        return {}


def peer_available(kind: str) -> str | None:
    """None if the peer can run here, else why not."""
    module = "benchmarks.peers.naive_peer" if kind == "naive" else "benchmarks.peers.nodered_peer"
    try:
        importlib.import_module(module)
    except Exception as exc:
        return f"{module} is not importable ({type(exc).__name__}: {exc})"
    return None


def _wait_ready(stack: Stack, system: System, timeout: float = 90.0) -> None:
    """Publish a reading until Mosquitto has a subscriber, then wait for it in InfluxDB."""
    loadgen.wait_for_subscriber(stack.mqtt_url(SIMULATOR_USER), patient=READY_PATIENT, timeout=timeout)
    assert stack.settings.influx_url
    url = stack.settings.influx_url
    q = f"SELECT count(value) FROM vitals WHERE patient = '{READY_PATIENT}'"  # noqa: S608 (a constant)

    def landed() -> bool:
        if not system.alive():
            raise RuntimeError(f"{system.name} died while starting")
        return _sum_counts(influx_query(url, q, db=system.database)) > 0

    wait_until(landed, timeout=timeout, what=f"{system.name}: a first reading in InfluxDB", interval=0.5)


def _remove_mqtt_session(stack: Stack, client_id: str) -> None:
    """Remove a stopped client's persistent session, so Mosquitto stops queueing for it."""
    from rpm_core.mqtt_client import mqtt_client, session_properties

    m = MqttSettings.from_url(stack.mqtt_url(BRIDGE_USER))
    client = mqtt_client(m, client_id, reconnect=False)
    props = session_properties(0)
    done = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: done.set()
    with contextlib.suppress(Exception):
        client.connect(m.host, m.port, clean_start=True, properties=props)
        client.loop_start()
        done.wait(10)
        client.disconnect()
        client.loop_stop()


# --- sampling: counters and CPU every 0.5 s --------------------------------------------------------


def _get_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 (our loopback endpoints)
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def _prom(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in (text or "").splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def _influx_httpd(url: str) -> dict[str, float]:
    """InfluxDB's own HTTP counters: points written, write requests and their summed duration (ns)."""
    doc = influx_query(url, "SHOW STATS FOR 'httpd'")
    for result in doc.get("results", []):  # type: ignore[union-attr]
        for series in result.get("series", []):
            values = dict(zip(series["columns"], series["values"][0], strict=True))
            return {k: float(values.get(k) or 0.0) for k in ("pointsWrittenOK", "writeReq", "writeReqDurationNs")}
    return {"pointsWrittenOK": 0.0, "writeReq": 0.0, "writeReqDurationNs": 0.0}


def _influx_points_ok(url: str) -> float:
    return _influx_httpd(url)["pointsWrittenOK"]


def _sum_counts(doc: dict[str, Any]) -> int:
    total = 0
    for result in doc.get("results", []):
        if "error" in result:
            raise RuntimeError(f"InfluxDB query failed: {result['error']}")
        for series in result.get("series", []):
            total += int(series["values"][0][1])
    return total


def _label_of(proc: psutil.Process, known: dict[int, str]) -> str | None:
    if proc.pid in known:
        return known[proc.pid]
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return None
    text = " ".join(cmd)
    if "resource_tracker" in text:
        return None
    if "multiprocessing" in text:
        return "loadgen"
    if "node-red" in text or (cmd and Path(cmd[0]).name in ("node", "node-red")):
        return "node-red"
    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd):
        module = cmd[cmd.index("-m") + 1].removeprefix("benchmarks.peers.")
        return module + (f" {cmd[cmd.index('-m') + 2]}" if cmd.index("-m") + 2 < len(cmd)
                         and not cmd[cmd.index("-m") + 2].startswith("-") else "")
    return proc.name()


class Sampler(threading.Thread):
    """Samples the pipeline's counters and every child process's CPU time every 0.5 s."""

    def __init__(self, influx_url: str, known: dict[int, str]) -> None:
        super().__init__(name="e2e-sampler", daemon=True)
        self.influx_url = influx_url
        self.known = known
        self.metrics: dict[str, str] = {}
        self.samples: list[dict[str, Any]] = []
        self.gen: tuple[float, int, int, int] = (0.0, 0, 0, 0)
        self._cpu: dict[int, tuple[str, float]] = {}  # pid → (label, cpu seconds) last seen
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.me = psutil.Process()

    def on_progress(self, t: float, published: int, acked: int, backlog: int) -> None:
        self.gen = (t, published, acked, backlog)

    def cpu(self) -> dict[int, tuple[str, float]]:
        """pid → (label, CPU seconds) of every process seen so far."""
        with self._lock:
            return dict(self._cpu)

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": time.time()}
        with contextlib.suppress(Exception):
            httpd = _influx_httpd(self.influx_url)
            row["influx_points"] = httpd["pointsWrittenOK"]
            row["influx_write_requests"], row["influx_write_ns"] = httpd["writeReq"], httpd["writeReqDurationNs"]
        for stage, url in list(self.metrics.items()):
            for name, value in _prom(_get_text(url)).items():
                row[f"{stage}:{name}"] = value
        row["gen_published"], row["gen_acked"], row["gen_backlog"] = self.gen[1:]
        procs = [self.me, *self.me.children(recursive=True)]
        cpu: dict[int, tuple[str, float]] = {}
        for p in procs:
            cached = self._procs.setdefault(p.pid, p)
            label = "harness" if p.pid == self.me.pid else _label_of(cached, self.known)
            if label is None:
                continue
            with contextlib.suppress(psutil.Error):
                times = cached.cpu_times()
                cpu[p.pid] = (label, times.user + times.system)
                row[f"cpu:{label}"] = row.get(f"cpu:{label}", 0.0) + times.user + times.system
                if label in RSS_OF:
                    row[f"rss:{label}"] = cached.memory_info().rss
        with self._lock:
            self._cpu.update(cpu)
            self.samples.append(row)
        return row

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def window(self, t0: float, t1: float) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.samples if t0 <= r["t"] <= t1]


def _rate(rows: list[dict[str, Any]], key: str) -> float | None:
    have = [r for r in rows if key in r]
    if len(have) < 2 or have[-1]["t"] <= have[0]["t"]:
        return None
    return float((have[-1][key] - have[0][key]) / (have[-1]["t"] - have[0]["t"]))


# --- Kafka alerts: the latency probe ---------------------------------------------------------------


class AlertWatch(threading.Thread):
    """Reads ``rpm.alerts`` from its end and notes when each probe alert arrived."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(name="e2e-alerts", daemon=True)
        self.bootstrap = bootstrap
        self.events: list[tuple[float, str, float]] = []  # (arrival, patient, device time)
        self.ready = threading.Event()
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

    async def _main(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from rpm_core.topics import ALERTS

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=20, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()
            parts = consumer.partitions_for_topic(ALERTS) or set()
            consumer.assign([TopicPartition(ALERTS, p) for p in parts])
            await consumer.seek_to_end()
            self.ready.set()
            while not self._halt.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        ev = orjson.loads(record.value)
                        if ev.get("rule") == PROBE_RULE and ev.get("state") == "raised":
                            self.events.append((now, ev["patient"], float(ev["time"])))
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"n": len(values), "p50_ms": round(qs[49] * 1000, 1), "p95_ms": round(qs[94] * 1000, 1),
            "p99_ms": round(qs[98] * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


# --- one run: a system at one offered load ---------------------------------------------------------


@dataclass
class Bench:
    """Everything a run needs."""

    stack: Stack
    sampler: Sampler
    alerts: AlertWatch | None
    duration_s: float
    patients: int
    drain_timeout_s: float
    runs: list[dict[str, Any]] = field(default_factory=list)
    rss_at_start: dict[str, dict[str, float]] = field(default_factory=dict)  # system → process → bytes
    profile_dir: Path | None = None  # py-spy profiles of the worker during each measured run


def count_written(influx_url: str, db: str, since_s: float) -> dict[str, int]:
    """``vitals`` points per metric with a device time after ``since_s``."""
    q = f"SELECT count(value) FROM vitals WHERE time > {int(since_s * 1e9)} GROUP BY metric"  # noqa: S608 (ints)
    doc = influx_query(influx_url, q, db=db)
    out: dict[str, int] = {}
    for result in doc.get("results", []):  # type: ignore[union-attr]
        for series in result.get("series", []):
            out[series["tags"]["metric"]] = int(series["values"][0][1])
    return out


def run_load(bench: Bench, system: System, rate: float, *, kind: str = "fixed", patients: int | None = None,
             samples_per_message: int = 10, duration_s: float | None = None, probes: bool = True,
             settle_s: float = 0.0) -> dict[str, Any]:
    """Offer ``rate`` readings/s to ``system`` for the bench's duration (or ``duration_s``), spread over
    the bench's patients (or ``patients``), and measure what lands. ``settle_s``: the load runs that
    much longer first, and the ``window`` measures (steady state) leave it out."""
    s = bench.stack.settings
    assert s.influx_url
    influx = s.influx_url
    sampler = bench.sampler
    sampler.known.update(system.labels())
    sampler.metrics = system.metrics_urls()
    duration = (duration_s if duration_s is not None else bench.duration_s) + settle_s
    spec = loadgen.LoadSpec(mqtt_url=bench.stack.mqtt_url(SIMULATOR_USER), rate=rate, duration_s=duration,
                            patients=bench.patients if patients is None else patients,
                            samples_per_message=samples_per_message,
                            probe_every=50 if system.alerts and probes else 0,
                            prefix="e")
    print(f"  {system.name:<14} [{kind}] offering {rate:>9,.0f} readings/s for {duration:.0f} s "
          f"({spec.patient_count():,} patients, {spec.process_count()} generator processes) ...", flush=True)
    cpu_before = sampler.cpu()
    box_before = psutil.cpu_times()
    points_before = _influx_points_ok(influx)  # InfluxDB's own count of points taken, for the drain
    t0 = time.time()  # every sample of this run is measured after t0 (loadgen stamps with the wall clock)
    started: list[float] = []
    sampler.gen = (time.time(), 0, 0, 0)  # this run's generator counters start at 0
    spies = _profile(bench, system, kind, rate)
    try:
        result = loadgen.run_load(spec, on_progress=sampler.on_progress, on_start=started.append)
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
    t_load_end = result.last_publish
    # Drain: until InfluxDB holds every acknowledged reading, or nothing has been written for a while.
    drained_at, written, drain_status = _drain(bench, system, influx, t0, result.acked_total, points_before)
    sampler.sample()
    cpu_after = sampler.cpu()
    box_after = psutil.cpu_times()
    rows = sampler.window(t0, time.time())
    final = rows[-1].get("influx_points", 0.0) if rows else 0.0
    t_last_write = next((r["t"] for r in rows if r.get("influx_points", -1) >= final), drained_at)
    first = result.first_publish or (started[0] if started else t0)
    steady = [r for r in rows if first + WARMUP_S <= r["t"] <= t_load_end] if duration > 2 * WARMUP_S else \
        [r for r in rows if first <= r["t"] <= t_load_end]
    written_total = sum(written.values())
    drain_rows = [r for r in rows if t_load_end + 2.0 <= r["t"] <= t_last_write]  # from 2 s after the last publish
    run: dict[str, Any] = {
        "system": system.name, "kind": kind, "offered_rate": rate, "duration_s": duration,
        "patients": result.patients, "load": asdict(result),
        "acked": result.acked, "acked_total": result.acked_total,
        "written": written, "written_total": written_total,
        "loss": result.acked_total - written_total,
        "loss_by_metric": {m: result.acked.get(m, 0) - written.get(m, 0) for m in loadgen.METRICS},
        "lost_at_mqtt": result.failed_messages,
        "steady_rate": _rate(steady, "influx_points"),
        "sustained_rate": written_total / (t_last_write - first) if t_last_write > first else None,
        "drain_s": max(0.0, t_last_write - t_load_end),
        "drain_status": drain_status,
        "stage_rates": _stage_rates(steady),
        # landed points/s per second of the run, from the first publish to the end of the drain
        "landed_series": _series(rows, "influx_points", first),
        # the same over 5-s windows: the worker lands a backlog in slices of up to ~150,000 readings,
        # so a 1-s sample holds zero, one or two of them; a window of 5 s says what the pipeline keeps up
        "landed_series_5s": _series(rows, "influx_points", first, step=PLATEAU_WINDOW_S),
        "load_window_s": round(t_load_end - first, 1),
        "cores_during_load": cores_between(steady),
        "worker_time": worker_time(steady),
        # the same from InfluxDB's side, during the load and during the drain after it: an overload shows
        # whether InfluxDB's requests or the worker's own part slow down while the ingest side runs
        "influx_requests": {"load": influx_requests(steady),
                            "drain": influx_requests(drain_rows)},
        "worker_time_drain": worker_time(drain_rows),
        "cores_during_drain": cores_between(drain_rows),
        "memory": _memory(rows),
    }
    run["cpu"] = _cpu_profile(cpu_before, cpu_after, written_total, t_last_write - first)
    run["box"] = _box(box_before, box_after, run["cpu"], time.time() - t0)
    run["latency"] = _latency(bench, system, influx, t0, result) if system.alerts else None
    if settle_s:
        run["window"] = _window(bench, [r for r in rows if first + settle_s <= r["t"] <= t_load_end], first + settle_s,
                                result)
    ok_rate = (run["steady_rate"] or 0) >= 0.95 * rate
    run["sustained"] = bool(run["loss"] == 0 and ok_rate and result.kept_up
                            and run["drain_s"] <= max(3.0, 0.2 * duration))
    run["verdict"] = _verdict(run, result, ok_rate)
    bench.runs.append(run)
    _print_run(run)
    return run


def worker_time(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Shares of the wall time between the first and last of ``rows`` that the worker spent handling
    batches (``handle``), of which in its detectors and waiting for InfluxDB's answers, and outside
    them (``outside``: waiting for records, committing, its timers) (its metrics' counters)."""
    keys = {"handle": "worker:rpm_worker_handle_seconds_total", "detectors": "worker:rpm_worker_detector_seconds_total",
            "influx_writes": "worker:rpm_sink_write_seconds_total"}
    seen = [r for r in rows if all(k in r for k in keys.values())]
    if len(seen) < 2 or seen[-1]["t"] <= seen[0]["t"]:
        return {}
    wall = seen[-1]["t"] - seen[0]["t"]
    out = {name: round((seen[-1][k] - seen[0][k]) / wall, 3) for name, k in keys.items()}
    out["outside"] = round(max(0.0, 1.0 - out["handle"]), 3)
    return out


def influx_requests(rows: list[dict[str, Any]]) -> dict[str, float]:
    """InfluxDB's write requests between the first and last of ``rows`` (its own ``httpd`` counters):
    requests per second, ms and points per request, the share of the wall time a request was open
    (``in_request``; above 1 with requests in parallel), and µs per point inside requests."""
    keys = ("influx_write_requests", "influx_write_ns", "influx_points")
    seen = [r for r in rows if all(k in r for k in keys)]
    if len(seen) < 2 or seen[-1]["t"] <= seen[0]["t"]:
        return {}
    wall = seen[-1]["t"] - seen[0]["t"]
    requests, busy_s, points = (seen[-1][k] - seen[0][k] for k in keys)
    busy_s /= 1e9
    if requests <= 0:
        return {"requests_per_s": 0.0, "in_request": 0.0}
    return {"requests_per_s": round(requests / wall, 2), "ms_per_request": round(busy_s / requests * 1e3, 1),
            "points_per_request": round(points / requests), "in_request": round(busy_s / wall, 3),
            "us_per_point_in_requests": round(busy_s / points * 1e6, 2) if points > 0 else 0.0}


def cores_between(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Cores each process used between the first and last of ``rows`` (their ``cpu:<label>`` seconds),
    busiest first. The run's ``cpu`` covers the load and its drain; this is the load alone, where an
    overload shows which processes the offered rate itself keeps busy."""
    used: dict[str, float] = {}
    for key in {k for r in rows for k in r if k.startswith("cpu:")}:
        seen = [r for r in rows if key in r]  # a generator process may end a sample before the load does
        if len(seen) > 1 and seen[-1]["t"] > seen[0]["t"]:
            used[key.removeprefix("cpu:")] = (seen[-1][key] - seen[0][key]) / (seen[-1]["t"] - seen[0]["t"])
    return {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: (-kv[1], kv[0]))}


def _profile(bench: Bench, system: System, kind: str, rate: float) -> list[subprocess.Popen[bytes]]:
    """py-spy sampling our worker and bridge while the load runs (``--profile DIR``; primes are not profiled)."""
    pids = {label: p for p, label in system.labels().items() if label in ("worker", "bridge")}
    if bench.profile_dir is None or kind.startswith("prime"):
        return []
    bench.profile_dir.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--format", "raw",
                              "-o", str(bench.profile_dir / f"{label}-{len(bench.runs):02d}-{kind.replace(' ', '-')}"
                                                            f"-{rate:.0f}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for label, pid in sorted(pids.items())]


def _window(bench: Bench, rows: list[dict[str, Any]], since: float, result: loadgen.LoadResult) -> dict[str, Any]:
    """Steady-state measures over ``rows`` (the load after its settling time): landed rate, the worker's
    CPU per reading it processed and its checkpoints/s, and the latency of probes sent in it."""
    have = [r for r in rows if "cpu:worker" in r and "worker:rpm_worker_readings_total" in r]
    out: dict[str, Any] = {"seconds": round(rows[-1]["t"] - rows[0]["t"], 1) if len(rows) > 1 else 0.0,
                           "landed_rate": _rate(rows, "influx_points"),
                           "worker_readings_rate": _rate(rows, "worker:rpm_worker_readings_total"),
                           "worker_checkpoints_per_s": _rate(rows, "worker:rpm_worker_state_checkpoints_total")}
    if len(have) > 1:
        readings = have[-1]["worker:rpm_worker_readings_total"] - have[0]["worker:rpm_worker_readings_total"]
        cpu = have[-1]["cpu:worker"] - have[0]["cpu:worker"]
        out["worker_us_per_reading"] = round(1e6 * cpu / readings, 2) if readings > 0 else None
        out["worker_cpu_pct"] = round(100 * cpu / (have[-1]["t"] - have[0]["t"]), 1)
    if bench.alerts is not None:
        during = [a - t for a, _p, t in list(bench.alerts.events) if since <= t <= result.last_publish]
        out["latency"] = _percentiles(during)
    return out


def _drain(bench: Bench, system: System, influx: str, t0: float, expected: int, points_before: float
           ) -> tuple[float, dict[str, int], str]:
    """Wait until InfluxDB holds ``expected`` readings: ``complete``, ``stalled`` (nothing written for
    8 s: the rest is lost), ``timeout`` (still writing: a backlog, not yet a loss) or ``died``.

    The count of the run's readings (:func:`count_written`) scans every point of the run: at 130,000
    patients and 3 M points it cost InfluxDB 2-3 s of CPU, so asked every second it took most of the
    machine from the drain it measures. It is asked only once InfluxDB's own counter of points taken
    (``pointsWrittenOK``, which also counts alerts and redelivered readings: never less than the
    readings landed) has reached ``expected`` since the run began, at most every
    :data:`DRAIN_COUNT_EVERY_S` after that, and once when the drain ends otherwise."""
    deadline = time.monotonic() + bench.drain_timeout_s
    last_points, last_change = -1.0, time.monotonic()
    counted_at = -math.inf
    written: dict[str, int] = {}
    while True:
        row = bench.sampler.sample()
        points = row.get("influx_points", 0.0)
        if points != last_points:
            last_points, last_change = points, time.monotonic()
        status = ("stalled" if time.monotonic() - last_change > 8.0 else "timeout" if time.monotonic() > deadline
                  else "died" if not system.alive() else "")
        if status or (points - points_before >= expected and time.monotonic() - counted_at >= DRAIN_COUNT_EVERY_S):
            written, counted_at = count_written(influx, system.database, t0), time.monotonic()
            got = sum(written.values())
            if got >= expected:
                return time.time(), written, "complete"
            if status:
                print(f"    drain {status}: {got:,} of {expected:,} written", flush=True)
                return time.time(), written, status
        time.sleep(1.0)


def _stage_rates(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    rates = {
        "generator_published": _rate(rows, "gen_published"),
        "mqtt_acked": _rate(rows, "gen_acked"),
        "bridge_messages_in": _rate(rows, "bridge:rpm_bridge_messages_in_total"),
        "bridge_readings_out": _rate(rows, "bridge:rpm_bridge_readings_out_total"),
        "worker_readings": _rate(rows, "worker:rpm_worker_readings_total"),
        "sink_lines_written": _rate(rows, "worker:rpm_sink_lines_written_total"),
        "influx_points_written": _rate(rows, "influx_points"),
    }
    return {k: (round(v) if v is not None else None) for k, v in rates.items()}


def _series(rows: list[dict[str, Any]], key: str, t0: float, step: float = 1.0) -> list[tuple[float, float]]:
    """``key``'s rate per ``step`` seconds from ``t0`` on: (seconds since ``t0`` at the bin's end, rate)."""
    last: dict[int, tuple[float, float]] = {}
    for r in rows:
        if key in r and r["t"] >= t0:
            last[int((r["t"] - t0) // step)] = (r["t"], float(r[key]))
    bins = sorted(last.items())
    return [(round(b[1][0] - t0, 2), round((b[1][1] - a[1][1]) / (b[1][0] - a[1][0])))
            for a, b in itertools.pairwise(bins) if b[1][0] > a[1][0]]


def _memory(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Resident memory of our processes at the end of a run, and the patients the worker holds."""
    end = rows[-1] if rows else {}
    out: dict[str, float | None] = {f"{label}_rss_mb": round(end[f"rss:{label}"] / 2**20, 1)
                                     for label in RSS_OF if f"rss:{label}" in end}
    out["worker_patients"] = end.get("worker:rpm_worker_patients")
    return out


def _cpu_profile(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], readings: int,
                 wall: float) -> dict[str, dict[str, float]]:
    by: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        by[label] = by.get(label, 0.0) + seconds - before.get(pid, (label, 0.0))[1]
    return {label: {"cpu_s": round(sec, 2), "cpu_pct": round(100 * sec / wall, 1) if wall > 0 else 0.0,
                    "us_per_reading": round(1e6 * sec / readings, 2) if readings else 0.0}
            for label, sec in sorted(by.items(), key=lambda kv: -kv[1]) if sec > 0.005}


def _box(before: Any, after: Any, cpu: dict[str, dict[str, float]], wall: float) -> dict[str, float]:
    """How busy the whole machine was: ours (every process of the run) and everything else (other tenants)."""
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    busy_cores = (total - idle) / total * (os.cpu_count() or 1) if total > 0 else 0.0
    mine = sum(v["cpu_s"] for v in cpu.values()) / wall if wall > 0 else 0.0
    return {"busy_cores": round(busy_cores, 2), "this_run_cores": round(mine, 2),
            "other_cores": round(max(0.0, busy_cores - mine), 2), "cores": float(os.cpu_count() or 1)}


def _latency(bench: Bench, system: System, influx: str, t0: float, result: loadgen.LoadResult) -> dict[str, Any]:
    assert bench.alerts is not None
    time.sleep(0.5)  # the last alerts' way from the worker through Kafka
    events = [(arrival, t) for arrival, _p, t in list(bench.alerts.events) if t > t0]
    q = (f"SELECT count(alert_id) FROM alerts WHERE rule = '{PROBE_RULE}' AND state = 'raised' "  # noqa: S608
         f"AND time > {int(t0 * 1e9)}")
    in_influx = _sum_counts(influx_query(influx, q, db=system.database))
    during = [a - t for a, t in events if t <= result.last_publish]
    return {**_percentiles(during), "crossings_sent": result.crossings, "alerts_on_kafka": len(events),
            "alerts_in_influx": in_influx, "watch_error": bench.alerts.error}


def _verdict(run: dict[str, Any], result: loadgen.LoadResult, ok_rate: bool) -> str:
    if run["drain_status"] == "timeout":
        return f"backlog of {run['loss']:,} not drained in {run['drain_s']:.0f} s (loss unknown)"
    if run["loss"] != 0:
        return f"LOSS {run['loss']:+,}"
    notes = []
    if not result.kept_up:
        notes.append("generator behind")
    if not ok_rate:
        notes.append("backlog grew")
    if run["drain_s"] > max(3.0, 0.2 * run["duration_s"]):
        notes.append(f"drain {run['drain_s']:.0f} s")
    return "sustained" if not notes else "0 loss; " + ", ".join(notes)


# --- reporting -------------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:,.0f}{unit}"


def _busiest(cpu: dict[str, dict[str, float]]) -> str:
    if not cpu:
        return "-"
    label, v = max(cpu.items(), key=lambda kv: kv[1]["cpu_pct"])
    return f"{label} {v['cpu_pct']:.0f}%"


TABLE_HEAD: Final = ("| system | run | offered/s | patients | published/s | landed (steady)/s | sustained/s | loss "
                     "| drain s | latency p50 / p95 / p99 ms | alerts sent / Kafka / Influx | CPU µs/reading "
                     "| busiest | cores busy (this run / others) | verdict |\n"
                     "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def run_row(run: dict[str, Any]) -> str:
    lat = run.get("latency") or {}
    lat_s = (f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} / {lat['p99_ms']:.0f}" if lat.get("n") else "-")
    alerts = (f"{lat['crossings_sent']} / {lat['alerts_on_kafka']} / {lat['alerts_in_influx']}" if lat else "-")
    cpu_total = sum(v["us_per_reading"] for k, v in run["cpu"].items() if k not in ("loadgen", "harness"))
    return (f"| {run['system']} | {run['kind']} | {run['offered_rate']:,.0f} | {run['patients']:,} "
            f"| {_fmt(run['load']['publish_rate'])} | {_fmt(run['steady_rate'])} | {_fmt(run['sustained_rate'])} "
            f"| {run['loss']:+,} | {run['drain_s']:.1f} | {lat_s} | {alerts} | {cpu_total:.1f} "
            f"| {_busiest({k: v for k, v in run['cpu'].items() if k != 'loadgen'})} "
            f"| {run['box']['this_run_cores']:.2f} / {run['box']['other_cores']:.2f} | {run['verdict']} |")


def profile_table(runs: list[dict[str, Any]]) -> str:
    labels: list[str] = []
    for run in runs:
        labels += [k for k in run["cpu"] if k not in labels]
    head = "| system | offered/s | " + " | ".join(labels) + " |\n|---|---|" + "---|" * len(labels)
    rows = []
    for run in runs:
        cells = []
        for k in labels:
            v = run["cpu"].get(k)
            cells.append(f"{v['us_per_reading']:.1f} µs ({v['cpu_pct']:.0f}%)" if v else "")
        rows.append(f"| {run['system']} | {run['offered_rate']:,.0f} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


def _print_run(run: dict[str, Any]) -> None:
    lat = run.get("latency") or {}
    sr = run["stage_rates"]
    print(f"    landed {_fmt(run['steady_rate'])}/s steady, {_fmt(run['sustained_rate'])}/s sustained; "
          f"loss {run['loss']:+,} (acked {run['acked_total']:,}, written {run['written_total']:,}); "
          f"drain {run['drain_s']:.1f} s; {run['verdict']}", flush=True)
    print(f"    stages/s: published {_fmt(sr['generator_published'])}, acked {_fmt(sr['mqtt_acked'])}, "
          f"bridge out {_fmt(sr['bridge_readings_out'])}, worker {_fmt(sr['worker_readings'])}, "
          f"influx {_fmt(sr['influx_points_written'])}", flush=True)
    if lat:
        print(f"    latency (n={lat['n']}): p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms; "
              f"alerts sent {lat['crossings_sent']} / Kafka {lat['alerts_on_kafka']} / Influx "
              f"{lat['alerts_in_influx']}", flush=True)
    box = run["box"]
    print(f"    machine: {box['busy_cores']:.2f} of {box['cores']:.0f} cores busy, {box['this_run_cores']:.2f} by this "
          f"run, {box['other_cores']:.2f} by other processes", flush=True)
    print("    CPU: " + ", ".join(f"{k} {v['cpu_pct']:.0f}% ({v['us_per_reading']:.1f} µs/r)"
                                  for k, v in run["cpu"].items()), flush=True)
    if run.get("worker_time"):
        wt = run["worker_time"]
        print(f"    worker's time during the load: handling batches {wt['handle']:.0%} (detectors "
              f"{wt['detectors']:.0%}, InfluxDB writes {wt['influx_writes']:.0%}), outside them {wt['outside']:.0%}",
              flush=True)
    for phase, req in (run.get("influx_requests") or {}).items():
        if req.get("ms_per_request") is not None:
            print(f"    InfluxDB's write requests during the {phase}: {req['requests_per_s']:.1f}/s, "
                  f"{req['ms_per_request']:.0f} ms and {req['points_per_request']:,} points each, a request open "
                  f"{req['in_request']:.0%} of the time, {req['us_per_point_in_requests']:.1f} µs per point",
                  flush=True)
    if run.get("cores_during_load"):
        print("    cores during the load (steady part): " + ", ".join(
            f"{k} {v:.2f}" for k, v in run["cores_during_load"].items()), flush=True)


def machine_info() -> dict[str, Any]:
    """CPU, cores, Python, service and library versions, load, commit."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def out(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    libs = {}
    for dist in ("faust-streaming", "aiokafka", "paho-mqtt", "orjson", "numpy", "aiohttp"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libs[dist] = importlib.metadata.version(dist)
    tansu = "?"
    with contextlib.suppress(Exception):
        from rpm_app.services import tansu_binary

        tansu = Path(tansu_binary()).name
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "load_average_at_start": os.getloadavg(),
        "mosquitto": out([mosq, "-h"]), "influxdb": out(["influxd", "version"]), "tansu": tansu, "libraries": libs,
        "commit": out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "dirty": out(["git", "-C", str(ROOT), "status", "--porcelain"]) not in ("", "?"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_rules(path: Path, mode: str) -> Path:
    """The worker's rules: ``alert_rules.yaml`` + the probe (``full``) or the probe alone (``probe``)."""
    probe = yaml.safe_load((ROOT / "benchmarks" / "e2e_rules.yaml").read_text())
    if mode == "full":
        doc = yaml.safe_load((ROOT / "alert_rules.yaml").read_text())
        doc.setdefault("rules", {}).update(probe["rules"])
    else:
        doc = probe
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    from rpm_core.rules import load_rules

    load_rules(str(path))
    return path


# --- the whole run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What to run."""

    loads: tuple[float, ...]
    duration_s: float
    patients: int
    search_max: bool
    peers: tuple[str, ...]
    limit_points: int
    rules: str
    out: Path
    workdir: Path | None
    quick: bool
    drain_timeout_s: float
    sweep_patients: tuple[int, ...] = ()
    sweep_rate: float = SWEEP_RATE
    limit: bool = True  # measure InfluxDB's direct ingest
    profile_dir: Path | None = None


def search_max(bench: Bench, system: System, step: float = 1.3, limit: float = 400_000,
               resolution: float = 0.1) -> float | None:
    """Step the load up (×``step``) from the highest fixed load sustained until a run does not sustain
    its load, then bisect between the last sustained and the first failed load until they are
    within ``resolution`` (10 %) of each other; return the highest load sustained."""
    mine = [r for r in bench.runs if r["system"] == system.name]
    best = max((r["offered_rate"] for r in mine if r["sustained"]), default=None)
    if best is None:
        print(f"   {system.name} sustained none of the fixed loads: no ramp", flush=True)
        return None
    failed = min((r["offered_rate"] for r in mine if not r["sustained"] and r["offered_rate"] > best), default=None)
    while True:
        if failed is not None and failed - best <= resolution * best:
            return best
        rate = round(best * step if failed is None else (best + failed) / 2, -3)
        if rate > limit or rate <= best or (failed is not None and rate >= failed):
            return best
        if run_load(bench, system, rate, kind="ramp")["sustained"]:
            best = rate
        else:
            failed = rate


def bench_system(bench: Bench, system: System, opts: Options) -> dict[str, Any]:
    """The fixed loads, then (``--max``) the ramp and the 2× overload, for one system."""
    summary: dict[str, Any] = {"system": system.name}
    print(f"\n== {system.name}: starting", flush=True)
    t = time.time()
    system.start()
    summary["start_s"] = round(time.time() - t, 1)
    print(f"   ready in {summary['start_s']} s", flush=True)
    bench.sampler.known.update(system.labels())
    start_row = bench.sampler.sample()
    bench.rss_at_start[system.name] = {label: start_row[f"rss:{label}"] for label in RSS_OF
                                       if f"rss:{label}" in start_row}
    try:
        for rate in opts.loads:
            run_load(bench, system, rate)
        if opts.search_max:
            best = search_max(bench, system)
            summary["max_sustained_rate"] = best
            if best:
                run = run_load(bench, system, 2 * best, kind="overload 2x")
                summary["overload_loss"] = run["loss"]
                summary["overload_plateau"] = overload_plateau(bench, system, run, best)
                # The same rate again with the maximum's patients only: twice the readings per patient and
                # no patient InfluxDB has not seen, where the run above brings twice the patients (their
                # series are created during the overload; RESULTS.md, "Overload, session 17").
                same = max_patients(bench, system, best)
                if same:
                    run = run_load(bench, system, 2 * best, kind="overload 2x same patients", patients=same)
                    summary["overload_same_patients_plateau"] = overload_plateau(bench, system, run, best)
        if opts.sweep_patients and isinstance(system, Ours):
            summary["patient_sweep"] = sweep_patients(bench, system, opts.sweep_patients, opts.sweep_rate)
    finally:
        system.stop()
    mine = [r for r in bench.runs if r["system"] == system.name
            and r["kind"] in ("fixed", "ramp", "overload 2x", "overload 2x same patients")]
    zero = [r for r in mine if r["loss"] == 0 and r["sustained"]]
    summary["best_zero_loss_sustained_rate"] = max((r["sustained_rate"] or 0 for r in zero), default=None)
    summary["best_zero_loss_offered"] = max((r["offered_rate"] for r in zero), default=None)
    return summary


def max_patients(bench: Bench, system: System, best: float) -> int | None:
    """The patients of the sustained run at the highest sustained load ``best`` (None: no such run)."""
    return max((int(r["patients"]) for r in bench.runs if r["system"] == system.name and r["sustained"]
                and r["offered_rate"] == best), default=None)


def overload_plateau(bench: Bench, system: System, run: dict[str, Any], best: float) -> dict[str, Any]:
    """Landed throughput during the 2× overload run, second by second over its load window (after
    the warm-up), against the highest sustained load's landed rate: min and median as fractions."""
    top = max((r["steady_rate"] or 0.0 for r in bench.runs
               if r["system"] == system.name and r["sustained"] and r["offered_rate"] == best), default=0.0)
    series = [v for t, v in run["landed_series"] if WARMUP_S < t <= run["load_window_s"]]
    if not series or not top:
        return {"max_sustained_landed": top or None, "seconds": len(series)}
    lo, med = min(series), statistics.median(series)
    out = {"max_sustained_offered": best, "max_sustained_landed": round(top), "seconds": len(series),
           "min": lo, "median": round(med), "min_vs_max": round(lo / top, 2), "median_vs_max": round(med / top, 2),
           "drain_s": round(run["drain_s"], 1), "loss": run["loss"]}
    windows = plateau_windows(run.get("landed_series_5s", []), run["load_window_s"])
    if windows:
        out |= {"windows_5s": len(windows), "min_5s": min(windows), "min_5s_vs_max": round(min(windows) / top, 2)}
    print(f"    {run['kind']} plateau: landed min {lo:,.0f}/s ({out['min_vs_max']:.2f}x), median {med:,.0f}/s "
          f"({out['median_vs_max']:.2f}x) of the max sustained {top:,.0f}/s over {len(series)} s"
          + (f"; over 5-s windows min {min(windows):,.0f}/s ({out['min_5s_vs_max']:.2f}x)" if windows else ""),
          flush=True)
    return out


def plateau_lines(name: str, plateau: dict[str, Any] | None, how: str = "") -> list[str]:
    """The report's paragraph for one overload plateau (:func:`overload_plateau`), or none."""
    if not plateau or "min" not in plateau:
        return []
    return [f"Overload plateau ({name}, 2x {plateau['max_sustained_offered']:,.0f}/s offered{how}): landed "
            f"min {plateau['min']:,.0f}/s (**{plateau['min_vs_max']:.2f}x**), median "
            f"{plateau['median']:,.0f}/s ({plateau['median_vs_max']:.2f}x) of the max sustained "
            f"{plateau['max_sustained_landed']:,.0f}/s landed, over {plateau['seconds']} s"
            + (f" (over {plateau['windows_5s']} windows of 5 s: min {plateau['min_5s']:,.0f}/s, "
               f"**{plateau['min_5s_vs_max']:.2f}x**)" if "min_5s" in plateau else "")
            + f"; loss {plateau['loss']:+,}, drain {plateau['drain_s']} s.", ""]


def plateau_windows(series: list[tuple[float, float]], load_window_s: float) -> list[float]:
    """The rates of ``series`` (a :func:`_series` of ``PLATEAU_WINDOW_S`` bins: (end, rate), each from
    the previous bin's end; the first's start, which the series does not hold, taken a window before
    its end) over the whole windows inside the load window after the warm-up (a short last one is
    left out)."""
    out: list[float] = []
    start: float | None = None
    for end, rate in series:
        start = end - PLATEAU_WINDOW_S if start is None else start
        if start >= WARMUP_S - 0.5 and end <= load_window_s + 0.5 and end - start >= 0.8 * PLATEAU_WINDOW_S:
            out.append(rate)
        start = end
    return out


def sweep_patients(bench: Bench, system: System, counts: tuple[int, ...], rate: float) -> list[dict[str, Any]]:
    """The same offered ``rate`` spread over each patient count of ``counts`` (ascending; the ids of a
    smaller count are the first of a larger one). Each point is primed first (every patient sends one
    2-reading message, not measured), so the measured run starts with every patient known to the worker.
    The measured run lasts ``SWEEP_SETTLE_S`` longer than the duration and is measured after it: by
    then the primed patients' checkpoints are written and the run's own are (the worker writes a
    changed state once it is ``RPM_CHECKPOINT_INTERVAL_S``, 30 s, old), i.e. the steady state.
    Per point: landed rate, worker CPU µs/reading, worker resident memory per patient it holds, p99."""
    points = []
    base = bench.rss_at_start.get(system.name, {}).get("worker")
    for n in sorted(counts):
        prime = max(PRIME_RATE, 2 * n / loadgen.CGM_INTERVAL_S)
        hr_rate = prime - n / loadgen.CGM_INTERVAL_S
        run_load(bench, system, prime, kind=f"prime {n}", patients=n, samples_per_message=2,
                 duration_s=n / (hr_rate / 2) + 1.0, probes=False)
        run = run_load(bench, system, rate, kind=f"sweep {n}", patients=n, settle_s=SWEEP_SETTLE_S)
        mem = run["memory"]
        rss = mem.get("worker_rss_mb")
        held = mem.get("worker_patients")
        window = run["window"]
        lat = window.get("latency") or {}
        point = {
            "patients": n, "offered_rate": rate, "steady_rate": window["landed_rate"], "loss": run["loss"],
            "sustained": run["sustained"], "worker_us_per_reading": window.get("worker_us_per_reading"),
            "worker_checkpoints_per_s": window.get("worker_checkpoints_per_s"),
            "window_s": window["seconds"],
            "all_us_per_reading": round(sum(v["us_per_reading"] for k, v in run["cpu"].items()
                                            if k not in ("loadgen", "harness")), 2),
            "worker_rss_mb": rss, "worker_patients": held,
            "worker_kb_per_patient": round(rss * 1024 / held, 2) if rss and held else None,
            "worker_kb_per_patient_above_start": (round((rss * 2**20 - base) / 1024 / held, 2)
                                                  if rss and held and base else None),
            "p99_ms": lat.get("p99_ms"), "p50_ms": lat.get("p50_ms"), "latency_n": lat.get("n"),
        }
        print(f"    sweep {n:,} patients: landed {_fmt(point['steady_rate'])}/s, worker "
              f"{point['worker_us_per_reading']} µs/reading, {point['worker_kb_per_patient_above_start']} kB/patient "
              f"(above start; {held} held), p99 {point['p99_ms']} ms", flush=True)
        points.append(point)
    first = points[0]["worker_us_per_reading"] if points else None
    for prev, p in itertools.pairwise(points):  # what each further patient adds (fixed overheads cancel)
        if p["worker_rss_mb"] and prev["worker_rss_mb"] and p["worker_patients"] and prev["worker_patients"] \
                and p["worker_patients"] > prev["worker_patients"]:
            p["worker_kb_per_patient_marginal"] = round((p["worker_rss_mb"] - prev["worker_rss_mb"]) * 1024
                                                        / (p["worker_patients"] - prev["worker_patients"]), 2)
    for p in points:
        p["worker_cost_vs_first"] = (round(p["worker_us_per_reading"] / first, 2)
                                     if first and p["worker_us_per_reading"] else None)
    return points


def run(opts: Options) -> dict[str, Any]:
    """Start the services, measure everything, return the report (also written to ``opts.out``)."""
    wall0 = time.time()
    info = machine_info()
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="rpm-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rules = write_rules(workdir / "rules.yaml", opts.rules)
    print(f"rpm e2e benchmark: {info['cpu']}, {info['cores']} cores, load average {info['load_average_at_start']}; "
          f"work dir {workdir}", flush=True)
    settings = replace(Settings.from_env(), rules_path=str(rules))
    # the peers (Node-RED, the naive app) write without InfluxDB credentials: no authentication here
    stack = start_stack(settings, workdir / "services", influx_auth=False)
    report: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, "-m", "benchmarks.e2e", *sys.argv[1:]]),
                              "machine": info, "options": {k: str(v) for k, v in asdict(opts).items()}}
    sampler: Sampler | None = None
    watch: AlertWatch | None = None
    try:
        from rpm_core.topics import ensure_topics

        asyncio.run(ensure_topics(stack.settings.kafka_bootstrap(), partitions=PARTITIONS))
        s = stack.settings
        assert s.influx_url
        report["services_start_s"] = round(time.time() - wall0, 1)
        known = {svc.pid: name for name, svc in stack.processes.items()}
        sampler = Sampler(s.influx_url, known)
        sampler.start()
        watch = AlertWatch(s.kafka_bootstrap())
        watch.start()
        watch.ready.wait(30)
        bench = Bench(stack=stack, sampler=sampler, alerts=watch, duration_s=opts.duration_s, patients=opts.patients,
                      drain_timeout_s=opts.drain_timeout_s, profile_dir=opts.profile_dir)
        systems: dict[str, Any] = {}
        systems["ours"] = bench_system(bench, Ours(stack, workdir, rules), opts)
        limit: influx_limit.LimitResult | None = None
        if opts.limit:
            patients = max((r["patients"] for r in bench.runs if r["kind"] in ("fixed", "ramp", "overload 2x")),
                           default=opts.patients or 20_000)
            print(f"\n== InfluxDB direct ingest: {opts.limit_points:,} points, {patients:,} patients, one client, "
                  f"{influx_limit.BATCH_LINES:,}-line batches", flush=True)
            limit = influx_limit.measure(s.influx_url, points=opts.limit_points, patients=patients)
            report["influx_limit"] = limit.to_dict()
            print(f"   {limit.points_per_s:,.0f} points/s ({limit.points_per_s_after_first_10pct:,.0f}/s after the "
                  f"first 10 %); counted {limit.counted:,} of {limit.points:,}", flush=True)
        for kind in opts.peers:
            why = peer_available(kind)
            if why:
                print(f"\n== {kind}: SKIPPED, {why}", flush=True)
                systems[kind] = {"system": kind, "skipped": why}
                continue
            try:
                systems[kind] = bench_system(bench, Peer(kind, stack, workdir), opts)
            except Exception as exc:  # a broken peer must not lose the rest of the run
                print(f"\n== {kind}: FAILED, {type(exc).__name__}: {exc}", flush=True)
                systems[kind] = {"system": kind, "failed": f"{type(exc).__name__}: {exc}"}
        report["systems"] = systems
        report["runs"] = bench.runs
        report["ratios"] = _ratios(systems, limit)
    finally:
        try:
            if watch is not None:
                watch.stop()
            if sampler is not None:
                sampler.stop()
        finally:
            stack.stop()
    report["wall_s"] = round(time.time() - wall0, 1)
    _write(report, opts.out)
    return report


def _ratios(systems: dict[str, Any], limit: influx_limit.LimitResult | None) -> dict[str, Any]:
    """Ours against the limit and the peers: the highest zero-loss sustained rates (meaningful with --max;
    at fixed loads only, a system that sustained every load scores about the highest load)."""
    ours = systems["ours"].get("best_zero_loss_sustained_rate")
    out: dict[str, Any] = {
        "basis": "max search" if "max_sustained_rate" in systems["ours"] else "fixed loads only (not a max)",
        "ours_best_zero_loss_vs_influx_limit": round(ours / limit.points_per_s, 3) if ours and limit else None}
    for name, summary in systems.items():
        theirs = summary.get("best_zero_loss_sustained_rate")
        if name != "ours":
            out[f"ours_vs_{name}"] = round(ours / theirs, 2) if ours and theirs else None
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report's tables (a fragment for RESULTS.md)."""
    m = report["machine"]
    lim = report.get("influx_limit") or {}
    lines = [
        f"Command: `{report['command']}` ({report['wall_s']:.0f} s wall)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, {m['mosquitto']}, "
        f"InfluxDB {m['influxdb']}, {m['tansu']}, libraries {m['libraries']}, commit {m['commit']}"
        f"{' (dirty)' if m['dirty'] else ''}, load average at start {m['load_average_at_start']}, {m['date']}.", "",
        TABLE_HEAD, *[run_row(r) for r in report.get("runs", [])], "",
    ]
    if lim:
        lines += [f"InfluxDB direct ingest (one client, {lim['batch_lines']:,}-line batches, {lim['points']:,} points, "
                  f"{lim['patients']:,} patients): **{lim['points_per_s']:,.0f} points/s** "
                  f"({lim['points_per_s_after_first_10pct']:,.0f}/s after the first 10 %).", ""]
    lines += [f"Ratios: {report.get('ratios')}", "",
              "CPU per reading written, per process (and its CPU share of one core over the run):", "",
              profile_table(report.get("runs", [])), ""]
    for name, summary in (report.get("systems") or {}).items():
        for key, how in (("overload_plateau", ""), ("overload_same_patients_plateau", ", the maximum's patients only")):
            lines += plateau_lines(name, summary.get(key), how)
        sweep = summary.get("patient_sweep")
        if sweep:
            lines += [f"Patient sweep ({name}, {sweep[0]['offered_rate']:,.0f} readings/s offered, each point primed, "
                      f"measured over the last {sweep[0]['window_s']:.0f} s after {SWEEP_SETTLE_S:.0f} s of settling; "
                      "all µs/reading: every process over the whole run):",
                      "", "| patients | landed/s | loss | worker µs/reading | vs first | checkpoints/s "
                      "| all µs/reading | worker RSS MB | patients held | kB/patient (above start; marginal) "
                      "| p50 / p99 ms |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {p['patients']:,} | {_fmt(p['steady_rate'])} | {p['loss']:+,} | {p['worker_us_per_reading']} "
                      f"| {p['worker_cost_vs_first']} | {_fmt(p['worker_checkpoints_per_s'])} "
                      f"| {p['all_us_per_reading']} | {p['worker_rss_mb']} "
                      f"| {p['worker_patients']} | {p['worker_kb_per_patient_above_start']}; "
                      f"{p.get('worker_kb_per_patient_marginal', '-')} "
                      f"| {p['p50_ms']} / {p['p99_ms']} |" for p in sweep]
            lines.append("")
    for name, summary in (report.get("systems") or {}).items():
        if "skipped" in summary or "failed" in summary:
            lines.append(f"- {name}: {summary.get('skipped') or summary.get('failed')}")
    return "\n".join(lines) + "\n"


def _write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print("\n" + md)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def parse_args(argv: list[str] | None = None) -> Options:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="ours at 2 loads for 15 s each + the limit (< 2 min)")
    p.add_argument("--loads", default=None, help="offered loads, readings/s (default 10000,30000,50000)")
    p.add_argument("--max", action="store_true", help="ramp up to the highest sustained load, then 2x overload")
    p.add_argument("--duration", type=float, default=None, help="seconds per load (default 30, quick 15)")
    p.add_argument("--patients", type=int, default=0, help="patients (default: offered rate / 2.2 readings/s)")
    p.add_argument("--peers", default=None,
                   help="none | comma list of " + ",".join(PEERS) + " (default all, quick none)")
    p.add_argument("--limit-points", type=int, default=None,
                   help="points for the InfluxDB limit (default 1.5M, quick 400k)")
    p.add_argument("--rules", choices=("full", "probe"), default="full",
                   help="worker rules: alert_rules.yaml + probe (default) or the probe alone")
    p.add_argument("--drain-timeout", type=float, default=None,
                   help="seconds to wait for the backlog after a load (default 3x duration + 30, quick 20)")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default benchmarks/results/e2e-<date>.json)")
    p.add_argument("--workdir", type=Path, default=None, help="services' data and logs (default: a temp dir)")
    p.add_argument("--sweep-patients", default=None,
                   help="patient counts of the sweep at a fixed rate (default with --max: "
                        + ",".join(map(str, SWEEP_PATIENTS)) + "; none: no sweep); without --loads or --max, "
                        "the sweep alone (ours, no limit, no peers unless --peers)")
    p.add_argument("--sweep-rate", type=float, default=SWEEP_RATE, help="offered readings/s of the sweep")
    p.add_argument("--profile", type=Path, default=None,
                   help="directory: py-spy profiles (raw collapsed stacks) of our worker and bridge during each "
                        "measured run")
    a = p.parse_args(argv)
    sweep_alone = a.sweep_patients not in (None, "none") and not a.loads and not a.max and not a.quick
    sweep = (() if a.sweep_patients == "none" or (a.sweep_patients is None and not a.max)
             else SWEEP_PATIENTS if a.sweep_patients is None
             else tuple(int(x) for x in a.sweep_patients.split(",") if x.strip()))
    loads = (() if sweep_alone else tuple(float(x) for x in a.loads.split(",")) if a.loads
             else (QUICK_LOADS if a.quick else DEFAULT_LOADS))
    peers_arg = a.peers if a.peers is not None else ("none" if a.quick or sweep_alone else ",".join(PEERS))
    peers = () if peers_arg == "none" else tuple(x.strip() for x in peers_arg.split(",") if x.strip())
    bad = [x for x in peers if x not in PEERS]
    if bad:
        p.error(f"unknown peers {bad}; choose from {', '.join(PEERS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Options(
        loads=loads, duration_s=a.duration or (15.0 if a.quick else 30.0), patients=a.patients, search_max=a.max,
        peers=peers, limit_points=a.limit_points or (400_000 if a.quick else 1_500_000), rules=a.rules,
        out=a.out or ROOT / "benchmarks" / "results" / f"e2e-{'quick-' if a.quick else ''}{stamp}.json",
        workdir=a.workdir, quick=a.quick,
        drain_timeout_s=a.drain_timeout or (20.0 if a.quick else max(60.0, 3 * (a.duration or 30.0) + 30)),
        sweep_patients=sweep, sweep_rate=a.sweep_rate, limit=not sweep_alone, profile_dir=a.profile,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 when every run of ours lost nothing."""
    report = run(parse_args(argv))
    ours = [r for r in report.get("runs", []) if r["system"] == "ours"]
    print(f"e2e benchmark finished in {report['wall_s']:.0f} s")
    return 0 if ours and all(r["loss"] == 0 for r in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
