"""``rpm export fhir --patient P --since …``: a FHIR R4 Bundle of a patient's vitals and alerts.

The way an EMR takes our data in: a ``Bundle`` of type ``collection`` holding

- vital-sign ``Observation`` s, coded in LOINC with UCUM units:

  | what | LOINC | category | unit |
  | --- | --- | --- | --- |
  | heart rate | 8867-4 Heart rate (FHIR vital-signs profile ``heartrate``) | vital-signs | ``/min`` |
  | CGM glucose (``cgm-…``) | 99504-3 Glucose [Mass/volume] in Interstitial fluid (CGM IG) | laboratory | ``mg/dL`` |
  | meter glucose (``bgm-…``) | 41653-7 Glucose [Mass/volume] in Capillary blood by Glucometer | laboratory | mg/dL |
  |  | and 2339-0 Glucose [Mass/volume] in Blood | | |
  | glucose from anything else | 2339-0 Glucose [Mass/volume] in Blood | laboratory | ``mg/dL`` |

  A CGM measures interstitial fluid, not blood, so it must not be sent as 2339-0. A meter
  measures capillary blood: 41653-7 says exactly that, and 2339-0 is added as a second coding
  for receivers that only map the generic blood-glucose code. Heart rate at 1 Hz is far more
  than a chart wants: by default one Observation per 5 minutes carries the mean (with
  ``effectivePeriod`` and a note of how many readings); ``--heart-rate-every 0`` sends every
  reading.

- the alert history as ``DetectedIssue`` resources, one per alert episode. Chosen over ``Flag``:
  a Flag is a standing "be aware of" notice with no severity, evidence or record of who acted;
  a DetectedIssue is "a clinical issue detected for a patient", detected by a device
  (``author``: the rpm alert engine), with ``severity`` (critical → high, warning → moderate,
  info → low), ``identifiedPeriod`` (raised → cleared) and ``mitigation`` (the acknowledgement:
  when and by whom). Escalation is in ``detail``.

fhir.resources 8 models R5, R4B and STU3; this module validates with the R4B models. R4B (4.3)
changed nothing in Observation, DetectedIssue or Bundle relative to R4 (4.0.1) and we use no
element that R4 lacks, so the output is valid R4.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from rpm_app.report import InfluxReader, alert_episodes, day_chunks, require_data, time_clause
from rpm_core.errors import ConfigError
from rpm_core.interpretation import DISPLAY as FLAG_DISPLAY
from rpm_core.interpretation import SYSTEM as FLAG_SYSTEM
from rpm_core.interpretation import Limit, interpret
from rpm_core.settings import Settings
from rpm_core.wire import is_valid_id

_LOGGER = logging.getLogger(__name__)

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
OBS_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
RULE_SYSTEM: Final = "urn:rpm:alert-rule"
ALERT_ID_SYSTEM: Final = "urn:rpm:alert-id"
# Namespace of the deterministic resource ids: the same reading always gets the same id, so an EMR
# that imports overlapping exports can recognise what it already has.
ID_NAMESPACE: Final = uuid.UUID("7b0f3c52-2a77-4f0e-9d55-6c1f4d1b9a10")

HEART_RATE_CODE: Final = {"system": LOINC, "code": "8867-4", "display": "Heart rate"}
CGM_GLUCOSE_CODE: Final = {"system": LOINC, "code": "99504-3", "display": "Glucose [Mass/volume] in Interstitial fluid"}
METER_GLUCOSE_CODE: Final = {"system": LOINC, "code": "41653-7",
                             "display": "Glucose [Mass/volume] in Capillary blood by Glucometer"}
BLOOD_GLUCOSE_CODE: Final = {"system": LOINC, "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}
HEART_RATE_PROFILE: Final = "http://hl7.org/fhir/StructureDefinition/heartrate"
SEVERITY: Final = {"critical": "high", "warning": "moderate", "info": "low"}
DEVICE_SYSTEM: Final = "urn:rpm:device"
DELIVERY_SYSTEM: Final = "urn:rpm:notification"
AUDIT_TYPE: Final = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                     "display": "Patient Record"}
AUDIT_SUBTYPE: Final = {"system": "urn:rpm:audit", "code": "alert-acknowledged", "display": "Alert acknowledged"}
DEVICE_KINDS: Final = {"cgm-": "Continuous glucose monitor", "bgm-": "Blood glucose meter",
                       "hrs-": "Heart rate sensor", "gls-": "Blood glucose meter"}
# Evidence of an alert: the readings of its metric from this long before it was raised until it
# cleared (or this long after, while open) — the rules need up to 15 min beyond a threshold.
EVIDENCE_BEFORE_S: Final = 30 * 60.0
EVIDENCE_MAX: Final = 50


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": OBS_CATEGORY, "code": code, "display": display}]}]


def glucose_codes(device: str) -> list[dict[str, str]]:
    """The LOINC codings of a glucose reading from ``device`` (by its kind prefix)."""
    if device.startswith("cgm-"):
        return [CGM_GLUCOSE_CODE]
    if device.startswith("bgm-"):
        return [METER_GLUCOSE_CODE, BLOOD_GLUCOSE_CODE]
    return [BLOOD_GLUCOSE_CODE]


def _id(*parts: object) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, "|".join(map(str, parts))))


def _device_ref(patient: str, device: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{_id('device', patient, device)}", "display": device}


def _interpretation(flag: str) -> list[dict[str, Any]] | None:
    if not flag:
        return None
    return [{"coding": [{"system": FLAG_SYSTEM, "code": flag, "display": FLAG_DISPLAY[flag]}]}]


def heart_rate_observation(*, patient_ref: str, device: str, t: float, value: float, period_s: float = 0.0,
                           n: int = 1, rid: str, device_ref: dict[str, str] | None = None, flag: str = ""
                           ) -> dict[str, Any]:
    """A heart-rate Observation (a mean over ``period_s`` when it is positive), flagged L/LL/H/HH if beyond limits."""
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": rid, "meta": {"profile": [HEART_RATE_PROFILE]}, "status": "final",
        "category": _category("vital-signs", "Vital Signs"),
        "code": {"coding": [HEART_RATE_CODE], "text": "Heart rate"},
        "subject": {"reference": patient_ref}, "device": device_ref or {"display": device},
        "valueQuantity": {"value": round(value, 1), "unit": "beats/minute", "system": UCUM, "code": "/min"},
    }
    if (coded := _interpretation(flag)) is not None:
        obs["interpretation"] = coded
    if period_s > 0:
        obs["effectivePeriod"] = {"start": _iso(t), "end": _iso(t + period_s)}
        obs["note"] = [{"text": f"Mean of {n} readings"}]
    else:
        obs["effectiveDateTime"] = _iso(t)
    return obs


def glucose_observation(*, patient_ref: str, device: str, t: float, value: float, rid: str,
                        device_ref: dict[str, str] | None = None, flag: str = "") -> dict[str, Any]:
    """A glucose Observation coded by the device kind (CGM: interstitial fluid; meter: capillary blood)."""
    codes = glucose_codes(device)
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": rid, "status": "final", "category": _category("laboratory", "Laboratory"),
        "code": {"coding": codes, "text": codes[0]["display"]}, "subject": {"reference": patient_ref},
        "device": device_ref or {"display": device}, "effectiveDateTime": _iso(t),
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
    }
    if (coded := _interpretation(flag)) is not None:
        obs["interpretation"] = coded
    return obs


def device(patient: str, device_id: str, *, patient_ref: str) -> dict[str, Any]:
    """The Device that took a patient's readings (its kind from the id's prefix)."""
    kind = next((text for prefix, text in DEVICE_KINDS.items() if device_id.startswith(prefix)), "Other device")
    return {"resourceType": "Device", "id": _id("device", patient, device_id), "status": "active",
            "identifier": [{"system": DEVICE_SYSTEM, "value": device_id}],
            "type": {"text": kind}, "patient": {"reference": patient_ref}}


def communication(row: dict[str, Any], *, patient: str, patient_ref: str) -> dict[str, Any]:
    """A Communication for one delivered notification (a ``notifications`` point with outcome delivered)."""
    alert = row.get("alert_id") or ""
    comm: dict[str, Any] = {
        "resourceType": "Communication", "id": _id("notification", patient, row.get("channel"), row["time"], alert),
        "status": "completed", "subject": {"reference": patient_ref}, "sent": _iso(row["time"] / 1000.0),
        "identifier": [{"system": DELIVERY_SYSTEM, "value": f"{row.get('channel')}@{row['time']}"}],
        "recipient": [{"display": str(row.get("recipient") or row.get("channel") or "unknown")}],
        "payload": [{"contentString": f"{row.get('kind') or 'notification'} via {row.get('channel')}: "
                                      f"{row.get('detail') or 'delivered'}"}],
    }
    if alert:
        comm["about"] = [{"reference": f"urn:uuid:{_id('alert', alert)}"}]
    return comm


def audit_event(episode: dict[str, Any]) -> dict[str, Any]:
    """An AuditEvent for the acknowledgement of one alert episode: who, when, which DetectedIssue."""
    return {
        "resourceType": "AuditEvent", "id": _id("ack", episode["alert_id"]), "type": AUDIT_TYPE,
        "subtype": [AUDIT_SUBTYPE], "action": "U", "recorded": _iso(episode["acknowledged"]), "outcome": "0",
        "agent": [{"who": {"display": episode["by"] or "unknown"}, "requestor": True}],
        "source": {"observer": {"display": "rpm nurse station"}},
        "entity": [{"what": {"reference": f"urn:uuid:{_id('alert', episode['alert_id'])}"}}],
    }


def _evidence(issue: dict[str, Any], episode: dict[str, Any], observations: list[dict[str, Any]]) -> None:
    """``evidence`` (the Observations of the alert's metric around it) and ``implicated`` (them and their Devices)."""
    start = episode["raised"] or episode["cleared"] or episode["acknowledged"]
    if not start:
        return
    end = episode["cleared"] or start + EVIDENCE_BEFORE_S
    lo, hi = _iso(start - EVIDENCE_BEFORE_S), _iso(end)
    metric_codes = {"heart_rate": {HEART_RATE_CODE["code"]},
                    "glucose": {c["code"] for c in (CGM_GLUCOSE_CODE, METER_GLUCOSE_CODE, BLOOD_GLUCOSE_CODE)}}
    wanted = metric_codes.get(episode["metric"] or "", set())
    found = [o for o in observations if o["code"]["coding"][0]["code"] in wanted and lo <= _when(o) <= hi]
    found = sorted(found, key=lambda o: abs(_seconds(_when(o)) - start))[:EVIDENCE_MAX]
    if not found:
        return
    found.sort(key=_when)
    refs = [{"reference": f"urn:uuid:{o['id']}"} for o in found]
    devices = {o["device"]["reference"]: o["device"] for o in found if "reference" in o["device"]}
    issue["evidence"] = [{"detail": refs}]
    issue["implicated"] = refs + list(devices.values())


def _when(o: dict[str, Any]) -> str:
    when: str = o.get("effectiveDateTime") or o["effectivePeriod"]["start"]
    return when


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def detected_issue(episode: dict[str, Any], *, patient_ref: str) -> dict[str, Any]:
    """A DetectedIssue for one alert episode (see :func:`rpm_app.report.alert_episodes`)."""
    start = episode["raised"] or episode["cleared"] or episode["acknowledged"]
    period: dict[str, str] = {"start": _iso(start)} if start else {}
    if episode["cleared"]:
        period["end"] = _iso(episode["cleared"])
    detail = episode["message"] or episode["rule"]
    if episode["escalated"]:
        detail += f". Escalated at {_iso(episode['escalated'])} (not acknowledged in time)"
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue", "id": _id("alert", episode["alert_id"]), "status": "final",
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": episode["alert_id"]}],
        "code": {"coding": [{"system": RULE_SYSTEM, "code": episode["rule"]}], "text": episode["rule"]},
        "severity": SEVERITY.get(episode["severity"] or "", "low"), "patient": {"reference": patient_ref},
        "author": {"type": "Device", "display": "rpm alert engine"}, "detail": detail,
    }
    if period:
        issue["identifiedPeriod"] = period
    if episode["acknowledged"]:
        issue["mitigation"] = [{"action": {"text": "Acknowledged at the nurse station"},
                                "date": _iso(episode["acknowledged"]),
                                "author": {"display": episode["by"] or "unknown"}}]
    return issue


@dataclass(frozen=True)
class ExportOptions:
    """What ``rpm export fhir`` exports."""

    patient: str
    since: datetime
    until: datetime
    heart_rate_every: timedelta = timedelta(minutes=5)
    patient_reference: str | None = None
    limits: tuple[Limit, ...] = ()  # from the alert rules (rpm_core.interpretation.limits); none: no flags


def _heart_rate(reader: InfluxReader, o: ExportOptions, ref: str, lo: datetime, hi: datetime
                ) -> Iterable[dict[str, Any]]:
    where = f"\"metric\" = 'heart_rate' AND \"patient\" = '{o.patient}' AND {time_clause(lo, hi)}"
    every = int(o.heart_rate_every.total_seconds())
    if every <= 0:
        q = f'SELECT "value" FROM "vitals" WHERE {where} GROUP BY "device"'  # noqa: S608 (validated ids, ints)
        for r in reader.rows(q):
            t = r["time"] / 1000.0
            yield heart_rate_observation(patient_ref=ref, device=r["device"], t=t, value=float(r["value"]),
                                         rid=_id(o.patient, "heart_rate", r["device"], r["time"]),
                                         device_ref=_device_ref(o.patient, r["device"]),
                                         flag=interpret("heart_rate", float(r["value"]), o.limits))
        return
    q = (f'SELECT mean("value") AS "mean", count("value") AS "n" FROM "vitals" WHERE {where} '  # noqa: S608
         f'GROUP BY time({every}s), "device" fill(none)')
    for r in reader.rows(q):
        yield heart_rate_observation(patient_ref=ref, device=r["device"], t=r["time"] / 1000.0,
                                     value=float(r["mean"]), period_s=every, n=int(r["n"]),
                                     rid=_id(o.patient, "heart_rate", r["device"], r["time"], every),
                                     device_ref=_device_ref(o.patient, r["device"]),
                                     flag=interpret("heart_rate", float(r["mean"]), o.limits))


def _glucose(reader: InfluxReader, o: ExportOptions, ref: str, lo: datetime, hi: datetime
             ) -> Iterable[dict[str, Any]]:
    q = (f"SELECT \"value\" FROM \"vitals\" WHERE \"metric\" = 'glucose' AND \"patient\" = '{o.patient}' "  # noqa: S608
         f'AND {time_clause(lo, hi)} GROUP BY "device"')
    for r in reader.rows(q):
        yield glucose_observation(patient_ref=ref, device=r["device"], t=r["time"] / 1000.0, value=float(r["value"]),
                                  rid=_id(o.patient, "glucose", r["device"], r["time"]),
                                  device_ref=_device_ref(o.patient, r["device"]),
                                  flag=interpret("glucose", float(r["value"]), o.limits))


def collect(reader: InfluxReader, o: ExportOptions) -> list[dict[str, Any]]:
    """Every resource of the export, Observations in time order, then DetectedIssues."""
    if not is_valid_id(o.patient):
        raise ConfigError(f"patient {o.patient!r} is not a valid id")
    if o.until <= o.since:
        raise ConfigError("--since must be before --until")
    require_data(reader, o.patient, o.since, o.until)
    ref = o.patient_reference or f"Patient/{o.patient}"
    observations: list[dict[str, Any]] = []
    every = max(int(o.heart_rate_every.total_seconds()), 1)
    for lo, hi in day_chunks(o.since, o.until, align_s=every):
        observations += _heart_rate(reader, o, ref, lo, hi)
        observations += _glucose(reader, o, ref, lo, hi)
    observations.sort(key=lambda r: r.get("effectiveDateTime") or r["effectivePeriod"]["start"])
    rows = reader.rows('SELECT "rule", "severity", "metric", "state", "value", "message", "by", "alert_id" '  # noqa: S608
                       f"FROM \"alerts\" WHERE \"patient\" = '{o.patient}' AND {time_clause(o.since, o.until)}")
    episodes = alert_episodes(rows)
    issues = []
    for e in episodes:
        issue = detected_issue(e, patient_ref=ref)
        _evidence(issue, e, observations)
        issues.append(issue)
    devices = sorted({d["display"] for d in (obs["device"] for obs in observations)})
    audits = [audit_event(e) for e in episodes if e["acknowledged"]]
    sent = reader.rows(f"SELECT * FROM \"notifications\" WHERE \"patient\" = '{o.patient}' "  # noqa: S608
                       f"AND \"outcome\" = 'delivered' AND {time_clause(o.since, o.until)}")
    comms = [communication(r, patient=o.patient, patient_ref=ref) for r in sent]
    return ([device(o.patient, d, patient_ref=ref) for d in devices] + observations + issues + comms + audits)


def bundle(resources: list[dict[str, Any]], *, now: datetime | None = None, transaction: bool = False
           ) -> dict[str, Any]:
    """A ``collection`` (or ``transaction``) Bundle of ``resources`` (fullUrl ``urn:uuid:<id>``).

    In a transaction every entry is a ``PUT <type>/<id>``: the ids are deterministic, so sending an
    overlapping export again updates instead of duplicating; the server rewrites the ``urn:uuid``
    references between entries to the resources' ids.
    """
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    entries: list[dict[str, Any]] = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
    if transaction:
        for e in entries:
            r = e["resource"]
            e["request"] = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "transaction", "entry": entries}
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "collection", "timestamp": stamp,
            "entry": entries}


def validate(doc: dict[str, Any]) -> None:
    """Validate a Bundle with the fhir.resources (R4B ≙ R4 here) models; ``ValueError`` if invalid."""
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(doc)


def export_bundle(settings: Settings, options: ExportOptions, *, transaction: bool = False) -> bytes:
    """The validated Bundle as JSON bytes."""
    doc = bundle(collect(InfluxReader.from_settings(settings), options), transaction=transaction)
    validate(doc)
    _LOGGER.info("FHIR export of %s: %d resources", options.patient, len(doc["entry"]))
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)
