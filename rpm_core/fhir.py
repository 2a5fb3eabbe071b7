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

from rpm_core.errors import ConfigError
from rpm_core.report import InfluxReader, alert_episodes, day_chunks, require_data, time_clause
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


def heart_rate_observation(*, patient_ref: str, device: str, t: float, value: float, period_s: float = 0.0,
                           n: int = 1, rid: str) -> dict[str, Any]:
    """A heart-rate Observation (a mean over ``period_s`` when it is positive)."""
    obs: dict[str, Any] = {
        "resourceType": "Observation", "id": rid, "meta": {"profile": [HEART_RATE_PROFILE]}, "status": "final",
        "category": _category("vital-signs", "Vital Signs"),
        "code": {"coding": [HEART_RATE_CODE], "text": "Heart rate"},
        "subject": {"reference": patient_ref}, "device": {"display": device},
        "valueQuantity": {"value": round(value, 1), "unit": "beats/minute", "system": UCUM, "code": "/min"},
    }
    if period_s > 0:
        obs["effectivePeriod"] = {"start": _iso(t), "end": _iso(t + period_s)}
        obs["note"] = [{"text": f"Mean of {n} readings"}]
    else:
        obs["effectiveDateTime"] = _iso(t)
    return obs


def glucose_observation(*, patient_ref: str, device: str, t: float, value: float, rid: str) -> dict[str, Any]:
    """A glucose Observation coded by the device kind (CGM: interstitial fluid; meter: capillary blood)."""
    codes = glucose_codes(device)
    return {
        "resourceType": "Observation", "id": rid, "status": "final", "category": _category("laboratory", "Laboratory"),
        "code": {"coding": codes, "text": codes[0]["display"]}, "subject": {"reference": patient_ref},
        "device": {"display": device}, "effectiveDateTime": _iso(t),
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
    }


def detected_issue(episode: dict[str, Any], *, patient_ref: str) -> dict[str, Any]:
    """A DetectedIssue for one alert episode (see :func:`rpm_core.report.alert_episodes`)."""
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


def _heart_rate(reader: InfluxReader, o: ExportOptions, ref: str, lo: datetime, hi: datetime
                ) -> Iterable[dict[str, Any]]:
    where = f"\"metric\" = 'heart_rate' AND \"patient\" = '{o.patient}' AND {time_clause(lo, hi)}"
    every = int(o.heart_rate_every.total_seconds())
    if every <= 0:
        q = f'SELECT "value" FROM "vitals" WHERE {where} GROUP BY "device"'  # noqa: S608 (validated ids, ints)
        for r in reader.rows(q):
            t = r["time"] / 1000.0
            yield heart_rate_observation(patient_ref=ref, device=r["device"], t=t, value=float(r["value"]),
                                         rid=_id(o.patient, "heart_rate", r["device"], r["time"]))
        return
    q = (f'SELECT mean("value") AS "mean", count("value") AS "n" FROM "vitals" WHERE {where} '  # noqa: S608
         f'GROUP BY time({every}s), "device" fill(none)')
    for r in reader.rows(q):
        yield heart_rate_observation(patient_ref=ref, device=r["device"], t=r["time"] / 1000.0,
                                     value=float(r["mean"]), period_s=every, n=int(r["n"]),
                                     rid=_id(o.patient, "heart_rate", r["device"], r["time"], every))


def _glucose(reader: InfluxReader, o: ExportOptions, ref: str, lo: datetime, hi: datetime
             ) -> Iterable[dict[str, Any]]:
    q = (f"SELECT \"value\" FROM \"vitals\" WHERE \"metric\" = 'glucose' AND \"patient\" = '{o.patient}' "  # noqa: S608
         f'AND {time_clause(lo, hi)} GROUP BY "device"')
    for r in reader.rows(q):
        yield glucose_observation(patient_ref=ref, device=r["device"], t=r["time"] / 1000.0, value=float(r["value"]),
                                  rid=_id(o.patient, "glucose", r["device"], r["time"]))


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
    issues = [detected_issue(e, patient_ref=ref) for e in alert_episodes(rows)]
    return observations + issues


def bundle(resources: list[dict[str, Any]], *, now: datetime | None = None) -> dict[str, Any]:
    """A ``collection`` Bundle of ``resources`` (fullUrl ``urn:uuid:<id>``)."""
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "collection", "timestamp": stamp,
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}


def validate(doc: dict[str, Any]) -> None:
    """Validate a Bundle with the fhir.resources (R4B ≙ R4 here) models; ``ValueError`` if invalid."""
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(doc)


def export_bundle(settings: Settings, options: ExportOptions) -> bytes:
    """The validated Bundle as JSON bytes."""
    doc = bundle(collect(InfluxReader.from_settings(settings), options))
    validate(doc)
    _LOGGER.info("FHIR export of %s: %d resources", options.patient, len(doc["entry"]))
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)
