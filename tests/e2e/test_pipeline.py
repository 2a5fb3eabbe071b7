"""End to end: simulated patients → Mosquitto → rpm bridge → Tansu → rpm worker (Faust) → InfluxDB.

Every process is the real command an operator runs; the assertions are InfluxQL queries.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rpm_app.services import Stack
from rpm_core.mqtt_users import SIMULATOR_USER
from simulators.patients import Scenario, patient_id, scenario_for
from tests.support.influx import count_by, rows
from tests.support.procs import eventually, rpm_argv, rpm_env, running, spawn, spawn_bridge

pytestmark = pytest.mark.services

PATIENTS = 10
# A scripted hypoglycaemia drops to ~48 mg/dL: glucose_low pages on its first CGM reading (level 2 at
# once), and the Kalman forecast (glucose_urgent_low_soon) predicts it stays low, one alert each.
EXPECTED_ALERTS = {
    Scenario.TACHYCARDIA: (("tachycardia", "warning"),),
    Scenario.BRADYCARDIA: (("bradycardia", "warning"),),
    Scenario.HYPOGLYCEMIA: (("glucose_low", "critical"), ("glucose_urgent_low_soon", "critical")),
}


def simulate(stack: Stack, tmp_path: Path, *, patients: int, duration: float, history: float) -> dict[str, int]:
    summary_path = tmp_path / "summary.json"
    subprocess.run(
        rpm_argv("simulate", "--patients", str(patients), "--duration", str(duration),
                 "--history", str(history), "--summary-json", str(summary_path)),
        env=rpm_env(stack, mqtt_user=SIMULATOR_USER), check=True, timeout=300, capture_output=True,
    )
    by_metric: dict[str, int] = json.loads(summary_path.read_text())["by_metric"]
    return by_metric


def test_simulated_patients_reach_influxdb_with_exactly_the_expected_alerts(stack: Stack, tmp_path: Path) -> None:
    env = rpm_env(stack)
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    worker = spawn("worker", ["worker", "--data-dir", str(tmp_path / "worker")], env, tmp_path)
    with running(worker):
        bridge = spawn_bridge(stack, tmp_path)
        watch = (bridge, worker)
        sent = simulate(stack, tmp_path, patients=PATIENTS, duration=3, history=1200)
        assert sent["heart_rate"] > 10_000 and sent["glucose"] == PATIENTS * 5

        def written() -> dict[str, int]:
            return count_by(url, db, "vitals", "value", "metric")

        got = eventually(written, lambda g: all(g.get(m, 0) >= n for m, n in sent.items()),
                         timeout=180, what="every simulated reading in InfluxDB", watch=watch)
        bridge.stop()
    assert got == sent, "exactly the readings sent, none doubled"
    per_patient = count_by(url, db, "vitals", "value", "patient")
    assert sorted(per_patient) == [patient_id(i) for i in range(PATIENTS)]

    raised = rows(url, db, "SELECT * FROM alerts WHERE state = 'raised'")
    by_patient = {(r["patient"], r["rule"], r["severity"]) for r in raised}
    expected = {
        (patient_id(i), *alert)
        for i in range(PATIENTS) if scenario_for(i) != Scenario.NORMAL for alert in EXPECTED_ALERTS[scenario_for(i)]
    }
    assert by_patient == expected
    assert len(raised) == len(expected), "one alert per episode"
    normal = {patient_id(i) for i in range(PATIENTS) if scenario_for(i) == Scenario.NORMAL}
    assert not normal & {r["patient"] for r in raised}
