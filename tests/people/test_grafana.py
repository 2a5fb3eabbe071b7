"""``rpm grafana provision``: the files, and every panel's query run against a real InfluxDB.

Each query is rendered the way Grafana renders it (``$timeFilter``, ``$__interval``, ``$patient``
as a regex of the selected values) and executed. Known points give exact expected values; the
real simulation (``sim``) shows the queries work on what the pipeline actually writes.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from rpm_app.grafana import (
    DATASOURCE_UID,
    PATIENT_ANNOTATION,
    PATIENT_PANELS,
    PATIENT_VARIABLE_QUERY,
    WARD_PANELS,
    Panel,
    ProvisionOptions,
    provision,
)
from rpm_app.services import influx_query
from rpm_core.roster import load_roster
from tests.people.conftest import REPO, Sim
from tests.people.support import alert_row, write_lines
from tests.support.procs import rpm_argv

pytestmark = pytest.mark.services


def render(query: str, *, patients: list[str], start_ms: int, end_ms: int, interval: str = "1m") -> str:
    """``query`` with Grafana's template variables substituted (regex-formatted ``$patient``)."""
    escaped = [re.escape(p) for p in patients]
    value = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    return (query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
            .replace("$__interval", interval).replace("$patient", value))


def run(url: str, db: str, query: str) -> list[dict[str, Any]]:
    doc = influx_query(url, query, db=db)
    result = doc["results"][0]  # type: ignore[index]
    assert "error" not in result, (query, result)
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def table(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))} for s in series for v in s["values"]]


def panel_results(url: str, db: str, panel: Panel, **kw: Any) -> dict[str, list[dict[str, Any]]]:
    return {q.ref: run(url, db, render(q.text, **kw)) for q in panel.queries}


def by_title(panels: tuple[Panel, ...], prefix: str) -> Panel:
    return next(p for p in panels if p.title.startswith(prefix))


# -- the files ----------------------------------------------------------------------------------


def test_provision_writes_datasource_provider_and_dashboards(tmp_path: Path) -> None:
    out = tmp_path / "grafana"
    done = subprocess.run(rpm_argv("grafana", "provision", "--out", str(out), "--influx-url", "http://influx:8086",
                                   "--roster", str(REPO / "roster.yaml"), "--token"),
                          capture_output=True, text=True, timeout=60, check=True)
    assert "rpm-patient.json" in done.stdout
    ds = yaml.safe_load((out / "datasources" / "rpm-influxdb.yaml").read_text())["datasources"][0]
    assert ds["type"] == "influxdb" and ds["uid"] == DATASOURCE_UID and ds["url"] == "http://influx:8086"
    assert ds["jsonData"]["version"] == "InfluxQL" and ds["jsonData"]["dbName"] == "rpm"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${RPM_INFLUX_TOKEN}"
    provider = yaml.safe_load((out / "dashboards" / "rpm.yaml").read_text())["providers"][0]
    assert Path(provider["options"]["path"]) == (out / "dashboards" / "rpm").resolve()
    names = sorted(p.name for p in (out / "dashboards" / "rpm").iterdir())
    assert names == ["rpm-patient.json", "rpm-ward-north.json", "rpm-ward-south.json"]
    for name in names:
        doc = json.loads((out / "dashboards" / "rpm" / name).read_text())
        assert doc["uid"] and doc["templating"]["list"][-1]["name"] == "patient"
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for panel in doc["panels"]:
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in (DATASOURCE_UID, "__expr__")
    north = json.loads((out / "dashboards" / "rpm" / "rpm-ward-north.json").read_text())
    ward = north["templating"]["list"][0]
    assert ward["name"] == "ward" and ward["current"]["value"].split("|") == sorted(
        load_roster(REPO / "roster.yaml").wards["north"].patients), "tests/people/test_grafana_ward.py: the rest"
    patient = json.loads((out / "dashboards" / "rpm" / "rpm-patient.json").read_text())
    glucose = next(p for p in patient["panels"] if p["title"].startswith("Glucose"))
    steps = glucose["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 70, 180], "the 70-180 target band is shaded"
    assert glucose["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "area"
    assert patient["annotations"]["list"][0]["textColumn"] == "message"


def test_without_a_roster_there_is_one_ward_of_everyone(tmp_path: Path) -> None:
    written = provision(tmp_path, ProvisionOptions())
    assert sorted(p.name for p in written if p.suffix == ".json") == ["rpm-patient.json", "rpm-ward-all.json"]
    ward = json.loads(next(p for p in written if p.name == "rpm-ward-all.json").read_text())
    variable = ward["templating"]["list"][0]
    assert variable["query"] == PATIENT_VARIABLE_QUERY and variable["allValue"] == ".*"


# -- every query against known points ---------------------------------------------------------


GLUCOSE = [50, 60, 65, 100, 120, 150, 170, 190, 240, 300]  # 10 % very low, 30 % < 70, 40 % in, 30 % > 180, 10 % > 250


def known_points(now_ms: int) -> tuple[list[str], list[float]]:
    lines = [f"vitals,device=cgm-pk,metric=glucose,patient=pk,source=sim value={float(v)} "
             f"{now_ms - 3_600_000 + i * 300_000}" for i, v in enumerate(GLUCOSE)]
    rng = np.random.default_rng(7)
    rr = (0.8 + rng.normal(0, 0.03, 600)).round(4).tolist()
    for i, r in enumerate(rr):
        t = now_ms - 600_000 + i * 1000
        lines.append(f"vitals,device=hrs-pk,metric=rr_interval,patient=pk,source=sim value={r} {t}")
        lines.append(f"vitals,device=hrs-pk,metric=heart_rate,patient=pk,source=sim value={70.0 + i % 3} {t}")
    lines += [
        f"vitals,device=hrs-pq,metric=heart_rate,patient=pq,source=sim value=88.0 {now_ms - 1_800_000}",
        f"device_status,device=hrs-pk,patient=pk battery_pct=64i {now_ms - 60_000}",
    ]
    now = now_ms / 1000
    low = {"alert": "a2", "metric": "glucose"}
    lines += [
        alert_row("pk", "tachycardia", "warning", "raised", now - 900, value=130.0),
        alert_row("pk", "tachycardia", "warning", "acknowledged", now - 800, by="Ana"),
        alert_row("pk", "glucose_low", "critical", "raised", now - 3000, value=50.0, **low),
        alert_row("pk", "glucose_low", "critical", "cleared", now - 2000, value=100.0, **low),
        alert_row("pq", "bradycardia", "warning", "raised", now - 1000, alert="a3", value=44.0),
    ]
    return lines, rr


def test_every_panel_query_returns_the_expected_series_on_known_points(influx_url: str, influx_db: str) -> None:
    now_ms = int(time.time() * 1000)
    lines, rr = known_points(now_ms)
    write_lines(influx_url, influx_db, lines)
    kw: dict[str, Any] = {"patients": ["pk"], "start_ms": now_ms - 7_200_000, "end_ms": now_ms}

    assert [v[1] for v in run(influx_url, influx_db, PATIENT_VARIABLE_QUERY)[0]["values"]] == ["pk", "pq"]
    hr = panel_results(influx_url, influx_db, by_title(PATIENT_PANELS, "Heart rate"), **kw)["A"]
    assert hr[0]["columns"] == ["time", "mean", "min", "max"] and len(hr[0]["values"]) >= 10
    glucose = panel_results(influx_url, influx_db, by_title(PATIENT_PANELS, "Glucose"), **kw)["A"]
    assert sorted(v[1] for v in glucose[0]["values"]) == sorted(GLUCOSE)

    expected = {"Very low": 10.0, "Below range": 30.0, "In range": 40.0, "Above range": 30.0, "Very high": 10.0}
    for prefix, pct in expected.items():
        panel = by_title(PATIENT_PANELS, prefix)
        res = panel_results(influx_url, influx_db, panel, **kw)
        a, b = res["A"][0]["values"][0][1], res["B"][0]["values"][0][1]
        assert panel.expression == "$A / $B * 100" and a / b * 100 == pytest.approx(pct), prefix

    diffs = np.diff(np.array(rr))
    windows = run(influx_url, influx_db, render(by_title(PATIENT_PANELS, "Rhythm:").queries[0].text, **kw))
    values = [v[1] for v in windows[0]["values"]]
    overall = 1000 * math.sqrt(float(np.mean(diffs**2)))
    assert all(0.5 * overall < v < 2 * overall for v in values) and values, (values, overall)
    assert max(values) < 100, "a regular rhythm does not raise the flag"

    last_seen = table(panel_results(influx_url, influx_db, by_title(PATIENT_PANELS, "Devices: last"), **kw)["A"])
    assert {(r["device"], r["metric"]) for r in last_seen} == {
        ("cgm-pk", "glucose"), ("hrs-pk", "heart_rate"), ("hrs-pk", "rr_interval")}
    battery = table(panel_results(influx_url, influx_db, by_title(PATIENT_PANELS, "Devices: battery"), **kw)["A"])
    assert [(r["device"], r["battery_pct"]) for r in battery] == [("hrs-pk", 64)]
    history = table(panel_results(influx_url, influx_db, by_title(PATIENT_PANELS, "Alert history"), **kw)["A"])
    assert [r["state"] for r in history] == ["raised", "cleared", "raised", "acknowledged"]
    notes = table(run(influx_url, influx_db, render(PATIENT_ANNOTATION.text, **kw)))
    assert len(notes) == 4 and {"message", "rule", "severity", "state"} <= set(notes[0])

    ward: dict[str, Any] = {**kw, "patients": ["pk", "pq"]}
    active = table(panel_results(influx_url, influx_db, by_title(WARD_PANELS, "Patients with active"), **ward)["A"])
    assert sorted((r["patient"], r["rule"], r["state"]) for r in active) == [
        ("pk", "tachycardia", "acknowledged"), ("pq", "bradycardia", "raised")], "cleared alerts are not active"
    last = table(panel_results(influx_url, influx_db, by_title(WARD_PANELS, "Last readings"), **ward)["A"])
    assert {(r["patient"], r["metric"]) for r in last} == {("pk", "glucose"), ("pk", "heart_rate"),
                                                             ("pq", "heart_rate")}
    stale = panel_results(influx_url, influx_db, by_title(WARD_PANELS, "Stale devices"), **ward)
    seen = {r["device"] for r in table(stale["A"])}
    recent = {r["device"] for r in table(stale["B"])}
    assert seen - recent == {"cgm-pk", "hrs-pq"}, "the transformation keeps the devices without recent readings"
    overview = panel_results(influx_url, influx_db, by_title(WARD_PANELS, "Heart rate of"), **ward)["A"]
    assert sorted(s["tags"]["patient"] for s in overview) == ["pk", "pq"]


# -- every query against the real simulation --------------------------------------------------


@pytest.mark.slow
def test_every_panel_query_works_on_what_the_simulated_pipeline_wrote(sim: Sim) -> None:
    now_ms = int(time.time() * 1000)
    kw: dict[str, Any] = {"start_ms": now_ms - 2 * 3_600_000, "end_ms": now_ms}
    # device_status is written from edge-agent status, not by the simulator; an empty count is Grafana's "0 %".
    empty = {("p0000", "Devices: battery", "A"), ("p0001", "Devices: battery", "A")}
    empty |= {("p0000", t, "A") for t in ("Very low (<54)", "Below range (<70)", "Very high (>250)")}
    empty |= {(p, t, "A") for p in ("p0000", "p0001") for t in ("Above range (>180)", "Very high (>250)")}
    for patient in ("p0000", "p0001"):
        for panel in PATIENT_PANELS:
            for ref, series in panel_results(sim.url, sim.db, panel, patients=[patient], **kw).items():
                if (patient, panel.title) == ("p0001", "In range (70–180)"):
                    continue  # a reading or two while the scripted hypoglycaemia ramps down
                assert bool(series) != ((patient, panel.title, ref) in empty), (patient, panel.title, ref)
    tir = {p.title: panel_results(sim.url, sim.db, p, patients=["p0001"], **kw)
           for p in PATIENT_PANELS if p.expression}
    very_low = tir["Very low (<54)"]
    assert very_low["A"][0]["values"][0][1] >= 1, "the hypoglycaemic patient spent time below 54"
    assert "series" not in influx_query(sim.url, render(by_title(PATIENT_PANELS, "Very low").queries[0].text,
                                                         patients=["p0003"], **kw), db=sim.db)["results"][0]  # type: ignore[index]

    patients = [f"p000{i}" for i in range(4)]
    active = table(panel_results(sim.url, sim.db, WARD_PANELS[0], patients=patients, **kw)["A"])
    assert {("p0000", "tachycardia"), ("p0001", "glucose_low"), ("p0002", "bradycardia")} <= {
        (r["patient"], r["rule"]) for r in active}
    for panel in WARD_PANELS[1:]:
        results = panel_results(sim.url, sim.db, panel, patients=patients, **kw)
        assert results["A"], panel.title
    last = table(panel_results(sim.url, sim.db, WARD_PANELS[1], patients=patients, **kw)["A"])
    assert {r["patient"] for r in last} == set(patients)
