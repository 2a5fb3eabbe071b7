"""``rpm demo`` against services that already run (RPM_MQTT_URL, RPM_KAFKA_URL, RPM_INFLUX_URL set)."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from rpm_app.services import INFLUX_ADMIN, Stack
from rpm_core.mqtt_users import ADMIN_USER
from tests.support.influx import count_by, series
from tests.support.procs import rpm_argv, rpm_env

pytestmark = pytest.mark.services


def test_demo_uses_the_configured_services_and_writes_vitals_and_alerts(stack: Stack, tmp_path: Path) -> None:
    """Also against an InfluxDB that has no database of that name yet (issue 13: the demo ended with
    "database not found" and every point dead-lettered): the worker creates it, given credentials
    that may (the admin's here; a writer that may not is told to create it: tests/stream/test_sink.py)."""
    db = f"fresh_{uuid.uuid4().hex[:8]}"
    assert stack.influx is not None
    env = rpm_env(stack, mqtt_user=ADMIN_USER, RPM_INFLUX_DB=db, **stack.influx.env(INFLUX_ADMIN))
    done = subprocess.run(
        rpm_argv("demo", "--patients", "20", "--duration", "8", "--workdir", str(tmp_path / "demo")),
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # It started nothing of its own: the only services are the ones we gave it.
    assert not (tmp_path / "demo" / "services").exists() or not any((tmp_path / "demo" / "services").iterdir())
    url = stack.influx_url(INFLUX_ADMIN)
    per_patient = count_by(url, db, "vitals", "value", "patient")
    assert len(per_patient) == 20 and all(n > 1000 for n in per_patient.values())
    assert series(url, db, "SELECT count(alert_id) FROM alerts WHERE state = 'raised'")
    assert "[nurse station]" in done.stdout and "MISSING" not in done.stdout
    assert re.search(r"audit trail rpm\.audit: [1-9]\d* entries in \d+ chains, verify OK", done.stdout), \
        done.stdout[-2000:]
    assert "database not found" not in done.stdout + done.stderr


@pytest.mark.parametrize(("text", "shown"), [
    ("Heart rate above 120 bpm", "Heart rate above 120 bpm"),
    ("x\x1b[2J\x1b[Hforged\rline\n", "x\\x1b[2J\\x1b[Hforged\\rline\\n"),
    ("\u202eevil\x00", "\\u202eevil\\x00"),
])
def test_the_console_escapes_control_characters_in_alert_text(text: str, shown: str) -> None:
    from rpm_app.demo import console_text

    assert console_text(text) == shown
