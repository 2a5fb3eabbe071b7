"""Fixtures of the people-facing suite: one real simulated pipeline shared by the slow tests.

``sim`` runs what an operator runs (``rpm worker``, ``rpm bridge``, ``rpm simulate``) against a
Mosquitto + Tansu + InfluxDB of its own, once per session: four virtual patients with 20 minutes
of backlog, so p0000 is tachycardic (warning), p0001 hypoglycaemic (critical), p0002 bradycardic
(warning) and p0003 normal. The worker keeps running, so acknowledgements made by the tests are
applied by the real pipeline.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rpm_app.services import ServiceProcess, Stack, start_stack
from rpm_core.mqtt_users import SIMULATOR_USER
from rpm_core.settings import Settings
from rpm_core.signing import KeyRing
from tests.support.influx import count_by, rows
from tests.support.procs import eventually, rpm_argv, rpm_env, spawn, spawn_bridge

REPO = Path(__file__).resolve().parents[2]
PATIENTS = 4


@dataclass
class Sim:
    """The running simulated pipeline."""

    stack: Stack
    worker: ServiceProcess
    bridge: ServiceProcess
    sent: dict[str, int]
    started: float
    tmp: Path

    @property
    def url(self) -> str:
        assert self.stack.settings.influx_url
        return self.stack.settings.influx_url

    @property
    def db(self) -> str:
        return self.stack.settings.influx_db

    @property
    def bootstrap(self) -> str:
        return self.stack.settings.kafka_bootstrap()

    @property
    def keys(self) -> KeyRing | None:
        """The deployment's signing keys: what tests produce as a worker or watchdog is signed with them."""
        return self.stack.settings.key_ring()


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """Worker + bridge + a finished simulation whose readings and alerts are all in InfluxDB."""
    tmp = tmp_path_factory.mktemp("people-sim")
    stack = start_stack(Settings(rules_path=str(REPO / "alert_rules.yaml")), tmp / "services")
    procs: list[ServiceProcess] = []
    try:
        env = rpm_env(stack)
        procs.append(spawn("worker", ["worker", "--data-dir", str(tmp / "worker")], env, tmp))
        procs.append(spawn_bridge(stack, tmp))
        started = time.time()
        summary = tmp / "summary.json"
        subprocess.run(rpm_argv("simulate", "--patients", str(PATIENTS), "--duration", "2", "--history", "1200",
                                "--summary-json", str(summary)),
                       env=rpm_env(stack, mqtt_user=SIMULATOR_USER), check=True, timeout=120, capture_output=True)
        sent: dict[str, int] = json.loads(summary.read_text())["by_metric"]
        url, db = stack.settings.influx_url or "", stack.settings.influx_db
        eventually(lambda: count_by(url, db, "vitals", "value", "metric"),
                   lambda got: all(got.get(m, 0) >= n for m, n in sent.items()),
                   timeout=120, what="every simulated reading in InfluxDB", watch=tuple(procs))
        eventually(lambda: {r["patient"] for r in rows(url, db, "SELECT * FROM alerts WHERE state = 'raised'")},
                   lambda got: {"p0000", "p0001", "p0002"} <= got, timeout=60, what="the scripted alerts",
                   watch=tuple(procs))
        yield Sim(stack=stack, worker=procs[0], bridge=procs[1], sent=sent, started=started, tmp=tmp)
    finally:
        for p in reversed(procs):
            p.stop()
        stack.stop()
