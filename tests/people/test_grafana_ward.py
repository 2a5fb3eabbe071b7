"""The ward dashboards: a ``$ward`` picker from the roster driving the patient picker, alert
annotations, and links from a ward row (or series) to the patient dashboard; the queries run
against a real InfluxDB after Grafana's substitutions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rpm_app.grafana import WARD_ANNOTATION, WARD_PATIENTS_QUERY, ProvisionOptions, provision
from rpm_core.roster import load_roster
from tests.people.conftest import REPO
from tests.people.support import alert_row, write_lines
from tests.people.test_grafana import render, run, table

pytestmark = pytest.mark.services


def _provisioned(tmp_path: Path) -> dict[str, dict[str, Any]]:
    written = provision(tmp_path, ProvisionOptions(roster=load_roster(REPO / "roster.yaml")))
    return {p.name: json.loads(p.read_text()) for p in written if p.suffix == ".json"}


def test_ward_picker_lists_the_roster_and_drives_the_patient_picker(tmp_path: Path, influx_url: str,
                                                                   influx_db: str) -> None:
    roster = load_roster(REPO / "roster.yaml")
    docs = _provisioned(tmp_path)
    south = docs["rpm-ward-south.json"]
    ward, patient = south["templating"]["list"]
    assert [o["text"] for o in ward["options"]] == [w.name for w in roster.wards.values()]
    assert ward["current"]["text"] == roster.wards["south"].name
    assert patient["query"] == WARD_PATIENTS_QUERY and patient["includeAll"] and patient["multi"]

    now_ms = int(time.time() * 1000)
    write_lines(influx_url, influx_db, [
        f"vitals,device=hrs-{p},metric=heart_rate,patient={p},source=sim value=70.0 {now_ms - 60_000}"
        for p in ("p0001", "p0002", "p0011", "p0099")])
    for option, expected in zip(ward["options"], (["p0001", "p0002"], ["p0011"]), strict=True):
        query = WARD_PATIENTS_QUERY.replace("${ward:raw}", option["value"])
        found = [v[1] for s in run(influx_url, influx_db, query) for v in s["values"]]
        assert found == expected, option["text"]


def test_ward_annotations_show_the_wards_raised_and_escalated_alerts(tmp_path: Path, influx_url: str,
                                                                    influx_db: str) -> None:
    north = _provisioned(tmp_path)["rpm-ward-north.json"]
    [annotation] = north["annotations"]["list"]
    assert annotation["query"] == WARD_ANNOTATION.text and annotation["tagsColumn"] == "patient,rule,severity,state"
    now = time.time()
    write_lines(influx_url, influx_db, [
        alert_row("p0001", "tachycardia", "warning", "raised", now - 900, value=130.0, message="HR 130"),
        alert_row("p0001", "tachycardia", "warning", "escalated", now - 600),
        alert_row("p0001", "tachycardia", "warning", "acknowledged", now - 500, by="Ana"),
        alert_row("p0011", "bradycardia", "warning", "raised", now - 900, alert="b1", value=44.0),
    ])
    now_ms = int(now * 1000)
    notes = table(run(influx_url, influx_db, render(annotation["query"], patients=["p0000", "p0001"],
                                                    start_ms=now_ms - 3_600_000, end_ms=now_ms)))
    assert sorted((n["patient"], n["state"]) for n in notes) == [("p0001", "escalated"), ("p0001", "raised")]


def test_ward_rows_and_series_link_to_the_patient_dashboard(tmp_path: Path) -> None:
    docs = _provisioned(tmp_path)
    patient_uid = docs["rpm-patient.json"]["uid"]
    north = docs["rpm-ward-north.json"]
    tables = [p for p in north["panels"] if p["type"] == "table"]
    assert tables
    for panel in tables:
        [override] = panel["fieldConfig"]["overrides"]
        assert override["matcher"] == {"id": "byName", "options": "patient"}
        [link] = override["properties"][0]["value"]
        assert link["url"].startswith(f"/d/{patient_uid}/") and "var-patient=${__value.raw}" in link["url"]
        assert "${__url_time_range}" in link["url"]
    [series] = [p for p in north["panels"] if p["type"] == "timeseries"]
    assert "var-patient=${__field.labels.patient}" in series["fieldConfig"]["defaults"]["links"][0]["url"]
    assert north["links"][0]["type"] == "dashboards" and north["links"][0]["tags"] == ["rpm"]
