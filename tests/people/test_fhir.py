"""``rpm export fhir``: a FHIR R4 Bundle validated with fhir.resources, the right LOINC codes, alert history."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.observation import Observation

from rpm_app.fhir import ExportOptions, bundle, collect, validate
from rpm_app.report import InfluxReader
from tests.people.conftest import Sim
from tests.people.support import alert_row, write_lines
from tests.support.procs import rpm_argv, rpm_env

pytestmark = pytest.mark.services


def codes(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for c in resource["code"]["coding"]]


def test_observations_and_detected_issues_from_known_points(influx_url: str, influx_db: str) -> None:
    t0 = (int(time.time()) // 3600 - 2) * 3600 * 1000  # on a 5-minute boundary, two hours ago
    lines = [f"vitals,device=hrs-pf,metric=heart_rate,patient=pf,source=ble value={70.0 + i} {t0 + i * 1000}"
             for i in range(10)]
    lines += [f"vitals,device=cgm-pf,metric=glucose,patient=pf,source=ble value={v} {t0 + i * 300_000}"
              for i, v in enumerate([48.0, 52.0, 60.0])]
    lines += [f"vitals,device=bgm-pf,metric=glucose,patient=pf,source=ble value={v} {t0 + 60_000 + i * 600_000}"
              for i, v in enumerate([50.0, 95.0])]
    lines += [f"vitals,device=manual-1,metric=glucose,patient=pf,source=manual value=101.0 {t0 + 7_200}"]
    s0 = t0 / 1000
    low = {"alert": "g1", "metric": "glucose"}
    lines += [
        alert_row("pf", "glucose_low", "critical", "raised", s0 + 900, value=48.0, message="Glucose below 54", **low),
        alert_row("pf", "glucose_low", "critical", "escalated", s0 + 1200, **low),
        alert_row("pf", "glucose_low", "critical", "acknowledged", s0 + 1300, by="Ana Lima", **low),
        alert_row("pf", "glucose_low", "critical", "cleared", s0 + 3000, value=90.0, **low),
        alert_row("pf", "tachycardia", "warning", "raised", s0 + 3100, alert="t1", value=130.0),
    ]
    write_lines(influx_url, influx_db, lines)
    reader = InfluxReader(url=influx_url, db=influx_db)
    since, until = datetime.fromtimestamp(t0 / 1000, UTC), datetime.fromtimestamp(t0 / 1000 + 3 * 3600, UTC)

    every = collect(reader, ExportOptions(patient="pf", since=since, until=until, heart_rate_every=timedelta(0),
                                          patient_reference="Patient/emr-42"))
    doc = bundle(every)
    validate(doc)
    parsed = Bundle.model_validate(doc)
    # 16 Observations, 2 DetectedIssues, 4 Devices (hrs, cgm, bgm, manual), 1 AuditEvent (the acknowledgement)
    assert parsed.type == "collection" and len(parsed.entry) == 10 + 6 + 2 + 4 + 1
    obs = [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Observation"]
    hr = [o for o in obs if codes(o) == ["8867-4"]]
    assert len(hr) == 10 and {o["valueQuantity"]["code"] for o in hr} == {"/min"}
    assert all(o["category"][0]["coding"][0]["code"] == "vital-signs" for o in hr)
    assert hr[0]["effectiveDateTime"].endswith("Z") and hr[0]["subject"]["reference"] == "Patient/emr-42"
    glucose = {(o["device"]["display"], tuple(codes(o))) for o in obs if o not in hr}
    assert glucose == {("cgm-pf", ("99504-3",)), ("bgm-pf", ("41653-7", "2339-0")), ("manual-1", ("2339-0",))}
    assert {o["valueQuantity"]["system"] for o in obs} == {"http://unitsofmeasure.org"}
    assert {o["valueQuantity"]["code"] for o in obs if o not in hr} == {"mg/dL"}
    for o in obs:
        Observation.model_validate(o)

    issues = {i["identifier"][0]["value"]: i for i in (e["resource"] for e in doc["entry"])
              if i["resourceType"] == "DetectedIssue"}
    low = DetectedIssue.model_validate(issues["g1"])
    assert low.severity == "high" and low.patient.reference == "Patient/emr-42"
    assert low.identifiedPeriod.start is not None and low.identifiedPeriod.end is not None
    assert low.mitigation[0].author.display == "Ana Lima" and "Escalated" in (low.detail or "")
    tachy = issues["t1"]
    assert tachy["severity"] == "moderate" and "end" not in tachy["identifiedPeriod"] and "mitigation" not in tachy

    means = collect(reader, ExportOptions(patient="pf", since=since, until=until))
    [mean] = [r for r in means if r["resourceType"] == "Observation" and codes(r) == ["8867-4"]]
    assert mean["valueQuantity"]["value"] == 74.5 and mean["note"] == [{"text": "Mean of 10 readings"}]
    assert set(mean["effectivePeriod"]) == {"start", "end"}
    ids = [r["id"] for r in collect(reader, ExportOptions(patient="pf", since=since, until=until))]
    assert ids == [r["id"] for r in means], "resource ids are deterministic"


@pytest.mark.slow
def test_export_of_a_simulated_patient_validates(sim: Sim, tmp_path: Path) -> None:
    out = tmp_path / "p0001.json"
    since = datetime.fromtimestamp(sim.started - 2 * 3600, UTC).isoformat()
    done = subprocess.run(rpm_argv("export", "fhir", "--patient", "p0001", "--since", since, "--out", str(out)),
                          env=rpm_env(sim.stack, mqtt_user=None), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    parsed = Bundle.model_validate(doc)
    resources = [e.resource for e in parsed.entry]
    glucose = [r for r in resources if r.get_resource_type() == "Observation" and r.code.coding[0].code == "99504-3"]
    assert len(glucose) == sim.sent["glucose"] // 4, "every CGM reading of p0001"
    assert any(r.get_resource_type() == "Observation" and r.code.coding[0].code == "8867-4" for r in resources)
    issues = [r for r in resources if r.get_resource_type() == "DetectedIssue"]
    # The scripted hypoglycaemia: the forecast's warning first, then the low itself.
    assert sorted((i.code.coding[0].code, i.severity) for i in issues) == [("glucose_low", "high"),
                                                                           ("glucose_urgent_low_soon", "high")]
