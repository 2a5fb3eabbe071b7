"""``rpm grafana provision --out DIR``: Grafana provisioning files for the clinicians' dashboards.

Writes::

    DIR/datasources/rpm-influxdb.yaml      the InfluxDB data source (InfluxQL)
    DIR/dashboards/rpm.yaml                a file provider pointing at the JSON below
    DIR/dashboards/rpm/rpm-patient.json    one patient: HR and glucose trends, time in ranges, rhythm, devices
    DIR/dashboards/rpm/rpm-ward-<w>.json   one per ward (roster) or ``all``: active alerts, last readings, stale devices

Every query is raw InfluxQL, so the same dashboards work with InfluxDB 1.8 (database ``rpm``),
2.x (a DBRP mapping of database ``rpm`` onto the bucket, token in an ``Authorization`` header)
and 3.x (database ``rpm`` through the v1-compatible ``/query`` API, token likewise); see
docs/grafana.md. The panels are built as data here (:data:`PATIENT_PANELS`, …) so the test suite
can substitute the template variables and run every query against a real InfluxDB.
"""

# ruff: noqa: S608  (every query here is a constant built from constants, never from input)
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from rpm_core.roster import ALL_WARD, Roster
from rpm_core.settings import split_influx_url

DATASOURCE_UID: Final = "rpm-influxdb"
DATASOURCE_NAME: Final = "rpm InfluxDB"
FOLDER: Final = "Remote patient monitoring"
SCHEMA_VERSION: Final = 39
# International Consensus on Time in Range (Battelino 2019), mg/dL.
GLUCOSE_VERY_LOW: Final = 54
GLUCOSE_LOW: Final = 70
GLUCOSE_HIGH: Final = 180
GLUCOSE_VERY_HIGH: Final = 250
# Short-term HRV is computed over 5-minute windows (Task Force of the ESC and NASPE, 1996).
RMSSD_WINDOW: Final = "5m"
# A 5-min RMSSD above this at rest suggests an irregular rhythm worth a look (screening, not diagnosis).
RMSSD_FLAG_MS: Final = 100
# A device that sent nothing for 10 minutes is stale (HR straps send every second, CGMs every 5 min).
STALE_AFTER: Final = "10m"

PATIENT: Final = '"patient" =~ /^$patient$/'


@dataclass(frozen=True)
class Query:
    """One InfluxQL target of a panel (``ref`` is Grafana's refId)."""

    ref: str
    text: str
    fmt: str = "time_series"  # or "table"
    hidden: bool = False


@dataclass(frozen=True)
class Panel:
    """A dashboard panel: its queries and the JSON options Grafana needs."""

    title: str
    kind: str
    queries: tuple[Query, ...]
    grid: tuple[int, int, int, int]  # x, y, w, h
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    field_config: dict[str, Any] = field(default_factory=dict)
    expression: str | None = None  # a Grafana math expression over the queries ($A, $B)
    transformations: tuple[dict[str, Any], ...] = ()
    overrides: tuple[dict[str, Any], ...] = ()  # Grafana fieldConfig overrides (e.g. data links)


def _vitals(metric: str, select: str = 'mean("value")', extra: str = "") -> str:
    return (f'SELECT {select} FROM "vitals" WHERE {PATIENT} AND "metric" = \'{metric}\'{extra} '
            "AND $timeFilter")


def _range_stat(title: str, cond: str, x: int, *, good_below: float | None = None,
                good_above: float | None = None, description: str) -> Panel:
    """A stat panel: % of glucose readings meeting ``cond`` (count / total, by a math expression)."""
    if good_above is not None:
        steps = [{"color": "red", "value": None}, {"color": "green", "value": good_above}]
    else:
        steps = [{"color": "green", "value": None}, {"color": "red", "value": good_below}]
    return Panel(
        title=title, kind="stat", grid=(x, 17, 4, 4), description=description,
        queries=(Query("A", _vitals("glucose", 'count("value") AS "n"', f" AND {cond}"), hidden=True),
                 Query("B", _vitals("glucose", 'count("value") AS "n"'), hidden=True)),
        expression="$A / $B * 100",
        field_config={"unit": "percent", "decimals": 1, "noValue": "0",
                      "thresholds": {"mode": "absolute", "steps": steps}},
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "colorMode": "background", "graphMode": "none", "textMode": "value"},
    )


_RMSSD = ('SELECT 1000 * sqrt(mean("d2")) AS "rmssd_ms" FROM (SELECT pow(difference("value"), 2) AS "d2" '
          f"FROM \"vitals\" WHERE {PATIENT} AND \"metric\" = 'rr_interval' AND $timeFilter) "
          f"WHERE $timeFilter GROUP BY time({RMSSD_WINDOW}) fill(none)")

_HR_SELECT = 'mean("value") AS "mean", min("value") AS "min", max("value") AS "max"'

_TARGET_BAND = {"mode": "absolute", "steps": [
    {"color": "transparent", "value": None},
    {"color": "rgba(86, 166, 75, 0.22)", "value": GLUCOSE_LOW},
    {"color": "transparent", "value": GLUCOSE_HIGH},
]}

PATIENT_PANELS: Final[tuple[Panel, ...]] = (
    Panel(
        title="Heart rate", kind="timeseries", grid=(0, 0, 24, 8),
        description="Mean, minimum and maximum per interval (bpm).",
        queries=(Query("A", _vitals("heart_rate", _HR_SELECT) + " GROUP BY time($__interval) fill(none)"),),
        field_config={"unit": "suffix: bpm", "custom": {"lineWidth": 2, "spanNulls": False}},
    ),
    Panel(
        title="Glucose (target range 70–180 mg/dL shaded)", kind="timeseries", grid=(0, 8, 24, 9),
        description="CGM and meter glucose; the green band is the consensus target range 70-180 mg/dL.",
        queries=(Query("A", _vitals("glucose", 'mean("value") AS "glucose"') +
                       " GROUP BY time($__interval) fill(none)"),),
        field_config={"unit": "conmgdL", "min": 40, "custom": {"thresholdsStyle": {"mode": "area"}, "lineWidth": 2,
                                                             "pointSize": 4, "showPoints": "always"},
                      "thresholds": _TARGET_BAND},
    ),
    _range_stat("Very low (<54)", f'"value" < {GLUCOSE_VERY_LOW}', 0, good_below=1,
                description="Level 2 hypoglycaemia; consensus target < 1 % of readings."),
    _range_stat("Below range (<70)", f'"value" < {GLUCOSE_LOW}', 4, good_below=4,
                description="Level 1 and 2 hypoglycaemia; consensus target < 4 %."),
    _range_stat("In range (70–180)", f'"value" >= {GLUCOSE_LOW} AND "value" <= {GLUCOSE_HIGH}', 8, good_above=70,
                description="Time in range; consensus target > 70 %."),
    _range_stat("Above range (>180)", f'"value" > {GLUCOSE_HIGH}', 12, good_below=25,
                description="Level 1 and 2 hyperglycaemia; consensus target < 25 %."),
    _range_stat("Very high (>250)", f'"value" > {GLUCOSE_VERY_HIGH}', 16, good_below=5,
                description="Level 2 hyperglycaemia; consensus target < 5 %."),
    Panel(
        title="Rhythm flag (max 5-min RMSSD)", kind="stat", grid=(20, 17, 4, 4),
        description=(f"Largest 5-minute RMSSD of RR intervals in the range. Above {RMSSD_FLAG_MS} ms at rest "
                     "suggests an irregular rhythm (e.g. atrial fibrillation) worth an ECG. A screening flag, "
                     "not a diagnosis; movement and ectopic beats raise it too."),
        queries=(Query("A", _RMSSD),),
        field_config={"unit": "ms", "decimals": 0, "thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": RMSSD_FLAG_MS}]}},
        options={"reduceOptions": {"calcs": ["max"], "fields": "", "values": False}, "colorMode": "background",
                 "graphMode": "none"},
    ),
    Panel(
        title="Rhythm: RMSSD of RR intervals (5-min windows)", kind="timeseries", grid=(0, 21, 16, 8),
        description="Root mean square of successive RR differences, per 5 minutes (ms).",
        queries=(Query("A", _RMSSD),),
        field_config={"unit": "ms", "custom": {"thresholdsStyle": {"mode": "line+area"}},
                      "thresholds": {"mode": "absolute", "steps": [
                          {"color": "transparent", "value": None},
                          {"color": "rgba(242, 73, 92, 0.15)", "value": RMSSD_FLAG_MS}]}},
    ),
    Panel(
        title="Devices: last seen", kind="table", grid=(16, 21, 8, 4),
        description="Last reading per device and metric in the range (time = last seen).",
        queries=(Query("A", 'SELECT last("value") AS "last_value" FROM "vitals" WHERE '
                       f'{PATIENT} AND $timeFilter GROUP BY "device", "metric"', fmt="table"),),
        field_config={"custom": {"align": "auto"}},
    ),
    Panel(
        title="Devices: battery", kind="table", grid=(16, 25, 8, 4),
        description=("Last battery level per device (measurement device_status, written from the edge "
                     "agent's status messages)."),
        queries=(Query("A", 'SELECT last("battery_pct") AS "battery_pct" FROM "device_status" WHERE '
                       f'{PATIENT} AND $timeFilter GROUP BY "device"', fmt="table"),),
        field_config={"unit": "percent", "thresholds": {"mode": "absolute", "steps": [
            {"color": "red", "value": None}, {"color": "orange", "value": 15}, {"color": "green", "value": 30}]}},
    ),
    Panel(
        title="Alert history", kind="table", grid=(0, 29, 24, 8),
        description="Every state change of this patient's alerts (raised, escalated, acknowledged, cleared).",
        queries=(Query("A", 'SELECT "rule", "severity", "state", "value", "message", "by", "alert_id" FROM "alerts" '
                       f"WHERE {PATIENT} AND $timeFilter", fmt="table"),),
        options={"sortBy": [{"displayName": "Time", "desc": True}]},
    ),
)

PATIENT_ANNOTATION: Final = Query(
    "annotations", 'SELECT "message", "state", "rule", "severity" FROM "alerts" WHERE '
    f"{PATIENT} AND $timeFilter")

WARD: Final = '"patient" =~ /^$patient$/'
PATIENT_VARIABLE_QUERY: Final = 'SHOW TAG VALUES FROM "vitals" WITH KEY = "patient"'
# On a ward dashboard the patient picker lists the patients of the ward chosen in ``$ward``, whose
# value is the regex of the ward's patients (from the roster).
WARD_PATIENTS_QUERY: Final = PATIENT_VARIABLE_QUERY + ' WHERE "patient" =~ /^(${ward:raw})$/'
WARD_ANNOTATION: Final = Query(
    "annotations", 'SELECT "message", "state", "rule", "severity", "patient" FROM "alerts" WHERE '
    f"{WARD} AND \"state\" =~ /^(raised|escalated)$/ AND $timeFilter")
PATIENT_DASHBOARD_UID: Final = "rpm-patient"
# A data link from a row (or series) of a ward panel to that patient's dashboard, keeping the time range.
PATIENT_LINK: Final = f"/d/{PATIENT_DASHBOARD_UID}/rpm-patient?var-patient=${{__value.raw}}&${{__url_time_range}}"
SERIES_PATIENT_LINK: Final = (f"/d/{PATIENT_DASHBOARD_UID}/rpm-patient?var-patient=${{__field.labels.patient}}"
                              "&${__url_time_range}")

_PATIENT_COLUMN_LINK: Final = ({"matcher": {"id": "byName", "options": "patient"}, "properties": [
    {"id": "links", "value": [{"title": "Open ${__value.raw}'s dashboard", "url": PATIENT_LINK}]}]},)

WARD_PANELS: Final[tuple[Panel, ...]] = (
    Panel(
        title="Patients with active alerts", kind="table", grid=(0, 0, 24, 8),
        description="Latest state of each patient's alert rules in the range, unless cleared.",
        queries=(Query("A", 'SELECT * FROM (SELECT last("state") AS "state", "severity", "value", "message", '
                       f'"alert_id" FROM "alerts" WHERE {WARD} AND $timeFilter GROUP BY "patient", "rule") '
                       "WHERE \"state\" <> 'cleared'", fmt="table"),),
        options={"sortBy": [{"displayName": "severity", "desc": False}]}, overrides=_PATIENT_COLUMN_LINK,
    ),
    Panel(
        title="Last readings", kind="table", grid=(0, 8, 12, 9),
        description="Last heart rate and glucose of every patient in the range (time = when measured).",
        queries=(Query("A", 'SELECT last("value") AS "value" FROM "vitals" WHERE '
                       f"{WARD} AND \"metric\" =~ /^(heart_rate|glucose)$/ AND $timeFilter "
                       'GROUP BY "patient", "metric"', fmt="table"),),
        overrides=_PATIENT_COLUMN_LINK,
    ),
    Panel(
        title=f"Stale devices (nothing for {STALE_AFTER})", kind="table", grid=(12, 8, 12, 9),
        description=(f"Devices that sent readings in the range but none in the last {STALE_AFTER}: query A is "
                     "the last reading per device, B the recent count; the rows without B are stale."),
        queries=(
            Query("A", 'SELECT last("value") AS "last_value" FROM "vitals" WHERE '
                  f'{WARD} AND $timeFilter GROUP BY "patient", "device"', fmt="table"),
            Query("B", 'SELECT count("value") AS "recent" FROM "vitals" WHERE '
                  f'{WARD} AND time > now() - {STALE_AFTER} GROUP BY "patient", "device"', fmt="table"),
        ),
        transformations=(
            {"id": "joinByField", "options": {"byField": "device", "mode": "outer"}},
            {"id": "filterByValue", "options": {"type": "include", "match": "any", "filters": [
                {"fieldName": "recent", "config": {"id": "isNull", "options": {}}}]}},
            {"id": "organize", "options": {"excludeByName": {"recent": True, "Time 2": True, "patient 2": True}}},
        ),
        overrides=_PATIENT_COLUMN_LINK,
    ),
    Panel(
        title="Heart rate of the ward", kind="timeseries", grid=(0, 17, 24, 8),
        queries=(Query("A", f'SELECT mean("value") FROM "vitals" WHERE {WARD} AND "metric" = \'heart_rate\' '
                       'AND $timeFilter GROUP BY time($__interval), "patient" fill(none)'),),
        field_config={"unit": "suffix: bpm", "links": [{"title": "Open ${__field.labels.patient}'s dashboard",
                                                         "url": SERIES_PATIENT_LINK}]},
    ),
)



# -- JSON --------------------------------------------------------------------------------------------


def _ds(uid: str) -> dict[str, str]:
    return {"type": "influxdb", "uid": uid}


def _target(q: Query, uid: str) -> dict[str, Any]:
    return {"refId": q.ref, "datasource": _ds(uid), "query": q.text, "rawQuery": True, "resultFormat": q.fmt,
            "hide": q.hidden}


def panel_json(panel: Panel, pid: int, uid: str) -> dict[str, Any]:
    """The Grafana JSON of one panel."""
    x, y, w, h = panel.grid
    targets = [_target(q, uid) for q in panel.queries]
    if panel.expression:
        targets.append({"refId": "C", "datasource": {"type": "__expr__", "uid": "__expr__"}, "type": "math",
                        "expression": panel.expression, "hide": False})
    return {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description,
        "gridPos": {"x": x, "y": y, "w": w, "h": h}, "datasource": _ds(uid), "targets": targets,
        "fieldConfig": {"defaults": dict(panel.field_config), "overrides": [dict(o) for o in panel.overrides]},
        "options": dict(panel.options),
        "transformations": [dict(t) for t in panel.transformations],
    }


def _patient_variable(uid: str, patients: Sequence[str] | None) -> dict[str, Any]:
    base = {"name": "patient", "label": "Patient", "hide": 0}
    if patients:
        options = [{"text": p, "value": p, "selected": i == 0} for i, p in enumerate(patients)]
        return {**base, "type": "custom", "query": ",".join(patients), "options": options, "multi": True,
                "includeAll": True, "current": {"text": "All", "value": "$__all"}}
    return {**base, "type": "query", "datasource": _ds(uid), "query": PATIENT_VARIABLE_QUERY, "refresh": 1,
            "sort": 1, "definition": PATIENT_VARIABLE_QUERY}


def _ward_variable(current: str, wards: Sequence[tuple[str, str, Sequence[str]]]) -> dict[str, Any]:
    """``$ward``: one option per roster ward, text its name, value the regex of its patients."""
    def value(patients: Sequence[str]) -> str:
        return "|".join(re.escape(p) for p in sorted(patients))

    def text(name: str) -> str:
        return name.replace(",", "\\,")

    options = [{"text": name, "value": value(patients), "selected": wid == current} for wid, name, patients in wards]
    chosen = next(o for o, (wid, *_rest) in zip(options, wards, strict=True) if wid == current)
    return {"name": "ward", "label": "Ward", "type": "custom", "hide": 0, "multi": False, "includeAll": False,
            "query": ",".join(f"{text(name)} : {value(patients)}" for _wid, name, patients in wards),
            "options": options, "current": {"text": chosen["text"], "value": chosen["value"]}}


def _ward_annotation(uid: str) -> dict[str, Any]:
    return {"name": "Alerts", "datasource": _ds(uid), "enable": True, "iconColor": "red",
            "query": WARD_ANNOTATION.text, "textColumn": "message", "tagsColumn": "patient,rule,severity,state",
            "target": {"query": WARD_ANNOTATION.text, "rawQuery": True, "resultFormat": "table",
                       "refId": "annotations"}}


_DASHBOARD_LINKS: Final = ({"title": "rpm dashboards", "type": "dashboards", "tags": ["rpm"], "asDropdown": True,
                            "keepTime": True, "includeVars": False, "targetBlank": False},)


def _dashboard(*, uid: str, title: str, panels: Iterable[Panel], variable: dict[str, Any] | list[dict[str, Any]],
               ds_uid: str, annotations: list[dict[str, Any]], time_from: str, tags: list[str]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "tags": tags, "timezone": "browser", "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "1m", "graphTooltip": 1,
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variable if isinstance(variable, list) else [variable]},
        "annotations": {"list": annotations}, "links": [dict(link) for link in _DASHBOARD_LINKS],
        "panels": [panel_json(p, i + 1, ds_uid) for i, p in enumerate(panels)],
    }


def patient_dashboard(ds_uid: str = DATASOURCE_UID) -> dict[str, Any]:
    """The patient dashboard (one patient at a time, chosen with ``$patient``)."""
    variable = _patient_variable(ds_uid, None)
    variable.update({"multi": False, "includeAll": False})
    annotation = {"name": "Alerts", "datasource": _ds(ds_uid), "enable": True, "iconColor": "red",
                  "query": PATIENT_ANNOTATION.text, "textColumn": "message", "tagsColumn": "rule,severity,state",
                  "target": {"query": PATIENT_ANNOTATION.text, "rawQuery": True, "resultFormat": "table",
                             "refId": "annotations"}}
    return _dashboard(uid=PATIENT_DASHBOARD_UID, title="rpm · Patient", panels=PATIENT_PANELS, variable=variable,
                      ds_uid=ds_uid, annotations=[annotation], time_from="now-24h", tags=["rpm", "patient"])


def ward_dashboard(ward: str, name: str, patients: Sequence[str] | None, ds_uid: str = DATASOURCE_UID, *,
                   wards: Sequence[tuple[str, str, Sequence[str]]] = ()) -> dict[str, Any]:
    """The ward overview; ``patients`` from the roster, or every patient in InfluxDB (ward ``all``).

    With the roster's ``wards`` (id, name, patients), a ``$ward`` picker (this ward chosen) comes
    first and the patient picker lists the chosen ward's patients (all of them selected).
    """
    variables: list[dict[str, Any]]
    if wards:
        patient = {"name": "patient", "label": "Patient", "hide": 0, "type": "query", "datasource": _ds(ds_uid),
                   "query": WARD_PATIENTS_QUERY, "definition": WARD_PATIENTS_QUERY, "refresh": 1, "sort": 1,
                   "multi": True, "includeAll": True, "current": {"text": "All", "value": "$__all"}}
        variables = [_ward_variable(ward, wards), patient]
    else:
        variable = _patient_variable(ds_uid, sorted(patients) if patients else None)
        if not patients:
            variable.update({"multi": True, "includeAll": True, "allValue": ".*",
                             "current": {"text": "All", "value": "$__all"}})
        variables = [variable]
    return _dashboard(uid=f"rpm-ward-{ward}"[:40], title=f"rpm · Ward {name}", panels=WARD_PANELS,
                      variable=variables, ds_uid=ds_uid, annotations=[_ward_annotation(ds_uid)], time_from="now-6h",
                      tags=["rpm", "ward"])


# -- files -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionOptions:
    """What ``rpm grafana provision`` writes."""

    influx_url: str = "http://localhost:8086"
    influx_db: str = "rpm"
    dashboards_path: str | None = None
    token: bool = False
    influx_user: str | None = None  # InfluxDB 1.x: a read-only user (rpm demo's rpm_reader)
    influx_password_file: str | None = None  # its password, which Grafana reads ($__file{…}) when it starts
    roster: Roster | None = None
    datasource_uid: str = DATASOURCE_UID


def datasource_yaml(options: ProvisionOptions) -> str:
    """The data source provisioning file (InfluxQL; a read-only user for 1.x, or a token header for
    2.x/3.x when asked). No secret is written into it: Grafana reads the password from its file
    (``$__file{…}``) or the token from its environment when it loads the file."""
    json_data: dict[str, Any] = {"version": "InfluxQL", "dbName": options.influx_db, "httpMode": "POST",
                                 "timeInterval": "1s"}
    ds: dict[str, Any] = {"name": DATASOURCE_NAME, "uid": options.datasource_uid, "type": "influxdb",
                          "access": "proxy", "url": split_influx_url(options.influx_url)[0],
                          "database": options.influx_db, "jsonData": json_data, "editable": False}
    if options.influx_user and not options.token:
        ds["user"] = options.influx_user
        if options.influx_password_file:
            path = Path(options.influx_password_file).resolve()
            ds["secureJsonData"] = {"password": f"$__file{{{path}}}"}
    if options.token:
        json_data["httpHeaderName1"] = "Authorization"
        # Grafana expands $RPM_INFLUX_TOKEN from its own environment when it reads this file.
        ds["secureJsonData"] = {"httpHeaderValue1": "Token ${RPM_INFLUX_TOKEN}"}
    head = ("# Written by `rpm grafana provision`. InfluxQL works with InfluxDB 1.8+ (database), 2.x (a DBRP\n"
            "# mapping of this database onto the bucket, plus --token) and 3.x (database, plus --token).\n")
    return head + yaml.safe_dump({"apiVersion": 1, "datasources": [ds]}, sort_keys=False)


def provider_yaml(path: str) -> str:
    """The dashboard provider provisioning file."""
    doc = {"apiVersion": 1, "providers": [{
        "name": "rpm", "folder": FOLDER, "type": "file", "disableDeletion": False, "allowUiUpdates": True,
        "updateIntervalSeconds": 60, "options": {"path": path, "foldersFromFilesStructure": False},
    }]}
    return "# Written by `rpm grafana provision`.\n" + yaml.safe_dump(doc, sort_keys=False)


def dashboards(options: ProvisionOptions) -> dict[str, dict[str, Any]]:
    """File name → dashboard JSON."""
    uid = options.datasource_uid
    out = {"rpm-patient.json": patient_dashboard(uid)}
    roster = options.roster
    if roster is not None and roster.configured:
        wards = [(w.id, w.name, sorted(w.patients)) for w in roster.wards.values() if w.patients]
        for ward in roster.wards.values():
            out[f"rpm-ward-{ward.id}.json"] = ward_dashboard(ward.id, ward.name, sorted(ward.patients), uid,
                                                             wards=wards if ward.patients else ())
    else:
        out[f"rpm-ward-{ALL_WARD}.json"] = ward_dashboard(ALL_WARD, "all patients", None, uid)
    return out


def provision(out: Path, options: ProvisionOptions) -> list[Path]:
    """Write every provisioning file under ``out``; return their paths."""
    ds_dir, db_dir = out / "datasources", out / "dashboards"
    json_dir = db_dir / "rpm"
    json_dir.mkdir(parents=True, exist_ok=True)
    ds_dir.mkdir(parents=True, exist_ok=True)
    written = [ds_dir / "rpm-influxdb.yaml", db_dir / "rpm.yaml"]
    written[0].write_text(datasource_yaml(options))
    written[1].write_text(provider_yaml(options.dashboards_path or str(json_dir.resolve())))
    for name, doc in dashboards(options).items():
        path = json_dir / name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written
