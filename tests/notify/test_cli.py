"""``rpm routes test`` / ``rpm routes check`` and the patient's ``rpm edge ack``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from notify.mqtt import NotifierMqtt
from rpm_app.cli import main
from rpm_core.commands import PatientAck, patient_from_ack_topic
from rpm_core.mqtt_users import NOTIFIER_USER
from rpm_core.settings import MqttSettings
from tests.notify.conftest import AGENT_USER, PATIENT, Broker
from tests.support.procs import rpm_argv

REPO = Path(__file__).resolve().parents[2]


def test_routes_test_shows_each_step_with_its_time_without_sending(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RPM_ROSTER", raising=False)
    alert = orjson.dumps({"patient": "p0001", "rule": "glucose_low", "severity": "critical", "metric": "glucose"})
    code = main(["routes", "test", "--routes", str(REPO / "routes.yaml"), "--alert", alert.decode(),
                 "--at", "2025-11-25T12:00:00Z"])
    out = capsys.readouterr().out
    assert code == 0
    assert "route critical → critical" in out
    lines = [line.strip() for line in out.splitlines()]
    assert any(line.startswith("+10s") and "step 0 → ward-nurses" in line for line in lines)
    assert any(line.startswith("+5m10s") and "12:05:10Z" in line and "step 1 → on-call-nurse" in line for line in lines)
    assert any(line.startswith("+15m10s") and "step 2 → physician" in line for line in lines)
    assert 'patient p0001: "Your glucose is low.' in out
    assert "every 1h while unacknowledged" in out


def test_routes_test_reads_the_alert_from_a_file_and_shows_quiet_hours(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    alert = tmp_path / "alert.json"
    alert.write_bytes(orjson.dumps({"patient": "p0002", "rule": "glucose_high", "severity": "info",
                                    "metric": "glucose"}))
    assert main(["routes", "test", "--routes", str(REPO / "routes.yaml"), "--alert", str(alert),
                 "--at", "2025-11-25T23:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "deferred: quiet hours: step held until 2025-11-26T06:00:00Z" in out
    assert "(07:00 Europe/Berlin)  step 0 → ward-nurses" in out


def test_routes_check_and_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "check", str(REPO / "routes.yaml")]) == 0
    assert "critical: 0s ward-nurses → 5m on-call-nurse → 15m physician" in capsys.readouterr().out
    broken = tmp_path / "routes.yaml"
    broken.write_text((REPO / "routes.yaml").read_text().replace("escalation: critical", "escalation: critcal"))
    assert main(["routes", "check", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:" in err and "unknown escalation 'critcal'" in err and "Fix:" in err


@pytest.mark.services
async def test_rpm_edge_ack_publishes_the_patients_acknowledgement(broker: Broker, tmp_path: Path) -> None:
    mqtt = NotifierMqtt(mqtt=MqttSettings.from_url(broker.url(NOTIFIER_USER)), client_id="test-notifier-cli")
    await mqtt.start()
    try:
        await asyncio.wait_for(mqtt.subscribed.wait(), 10)
        env = {"RPM_MQTT_URL": broker.url(AGENT_USER), "RPM_EDGE_STATE": str(tmp_path / "state"), "PATH": "/usr/bin"}
        proc = await asyncio.to_thread(
            subprocess.run, rpm_argv("edge", "ack", "3f2a9c0d1e2b4a5c", "--patient", PATIENT), env=env,
            capture_output=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"acknowledged 1 alert(s) for patient p0001" in proc.stdout
        inbound = await asyncio.wait_for(mqtt.inbound.get(), 10)
    finally:
        await mqtt.stop()
    assert patient_from_ack_topic(inbound.topic) == PATIENT
    ack = PatientAck.from_bytes(inbound.payload)
    assert ack.alert_ids == ("3f2a9c0d1e2b4a5c",) and abs(ack.at - time.time()) < 120


@pytest.mark.parametrize("client_id", ["n" * 65, "notifier one", "nötifier", "n\x00"])
def test_a_notifier_client_id_its_heartbeats_could_not_carry_is_refused_at_start(
        client_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The client id names the notifier in its heartbeats; one the watchdog refuses would leave it unwatched."""
    assert main(["notifier", "--client-id", client_id, "--routes", str(REPO / "routes.yaml")]) == 2
    assert "--client-id" in capsys.readouterr().err
