"""What ``rpm hl7 send`` sends, read from InfluxDB: vitals per period and every alert state change.

Vitals: one ORU^R01 per patient and period (``every``, default 5 minutes), holding the mean heart
rate of each heart-rate device over the period and every glucose reading in it (glucose is sparse
and each reading matters). Alerts: one ORU^R40 per state change of the ``alerts`` measurement
(raised, escalated, acknowledged, cleared). Messages come out in time order.

What cannot be encoded as HL7 (an alert whose rule name or id HL7 cannot carry, a time outside
2000-2100, a device id that is no identifier) is set aside with its reason (:class:`Refused`) and
the rest is sent: one bad row never stops an export.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from hl7out.errors import Hl7EncodeError
from hl7out.messages import (
    AlertChange,
    Header,
    Observation,
    VitalsReport,
    control_id,
    encode_alert,
    encode_vitals,
)
from hl7out.sender import Outgoing
from rpm_app.report import InfluxReader, day_chunks, time_clause
from rpm_core.interpretation import Limit, interpret

_STATES = ("raised", "escalated", "acknowledged", "cleared")


@dataclass(frozen=True, slots=True)
class Selection:
    """Whose data, which period, what kinds."""

    patients: tuple[str, ...]
    since: datetime
    until: datetime
    every_s: int = 300
    vitals: bool = True
    alerts: bool = True
    # per patient: OBX-8 flags (L, LL, H, HH) from the alert rules; none: no flags
    limits: Mapping[str, tuple[Limit, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refused:
    """A row of the selection that cannot be encoded as HL7, and why. ``item.text`` is the row as
    JSON (what InfluxDB holds), not HL7: the dead letter keeps what could not be sent."""

    item: Outgoing
    reason: str


def _refused(patient: str, kind: Literal["vitals", "alert"], row: Mapping[str, Any], exc: Hl7EncodeError,
             *, rule: str = "-", severity: str = "-", alert_id: str = "") -> Refused:
    text = orjson.dumps(dict(row), default=str).decode()
    cid = control_id("refused", kind, patient, text)
    return Refused(Outgoing(cid, text, patient, kind, rule, severity, alert_id), f"cannot be encoded as HL7: {exc}")


def vitals(reader: InfluxReader, patient: str, sel: Selection,
           refused: list[Refused] | None = None) -> Iterator[VitalsReport]:
    """The vitals reports of ``patient``, one per period with data. A reading that cannot be an
    observation is added to ``refused`` (raised as :class:`Hl7EncodeError` without it)."""
    by_bucket: dict[int, list[Observation]] = defaultdict(list)
    flags = sel.limits.get(patient, ())
    for lo, hi in day_chunks(sel.since, sel.until, align_s=sel.every_s):
        where = f"\"patient\" = '{patient}' AND {time_clause(lo, hi)}"
        for r in reader.rows(f'SELECT mean("value") AS "mean", count("value") AS "n" FROM "vitals" '  # noqa: S608
                             f"WHERE \"metric\" = 'heart_rate' AND {where} "
                             f'GROUP BY time({sel.every_s}s), "device" fill(none)'):
            with _refusing(refused, patient, "vitals", r):
                by_bucket[r["time"] // 1000].append(Observation(
                    metric="heart_rate", device=r["device"], time_s=r["time"] / 1000.0, value=float(r["mean"]),
                    n=int(r["n"]), interpretation=interpret("heart_rate", float(r["mean"]), flags)))
        for r in reader.rows(f"SELECT \"value\" FROM \"vitals\" WHERE \"metric\" = 'glucose' AND {where} "  # noqa: S608
                             'GROUP BY "device"'):
            t = r["time"] / 1000.0
            with _refusing(refused, patient, "vitals", r):
                by_bucket[int(t // sel.every_s * sel.every_s)].append(Observation(
                    metric="glucose", device=r["device"], time_s=t, value=float(r["value"]),
                    interpretation=interpret("glucose", float(r["value"]), flags)))
    for start in sorted(by_bucket):
        obs = tuple(sorted(by_bucket[start], key=lambda o: (o.time_s, o.metric, o.device)))
        yield VitalsReport(patient=patient, time_s=float(start), observations=obs)


@contextlib.contextmanager
def _refusing(refused: list[Refused] | None, patient: str, kind: Literal["vitals", "alert"],
              row: Mapping[str, Any]) -> Iterator[None]:
    """Set a row that cannot be encoded aside in ``refused`` (None: let the error out)."""
    try:
        yield
    except Hl7EncodeError as exc:
        if refused is None:
            raise
        refused.append(_refused(patient, kind, row, exc, rule=str(row.get("rule") or "-"),
                                severity=str(row.get("severity") or "-"), alert_id=str(row.get("alert_id") or "")))


def _alert_rows(reader: InfluxReader, patient: str, sel: Selection) -> list[dict[str, Any]]:
    rows = reader.rows('SELECT "rule", "severity", "metric", "state", "value", "message", "by", "alert_id" '  # noqa: S608
                       f"FROM \"alerts\" WHERE \"patient\" = '{patient}' AND {time_clause(sel.since, sel.until)}")
    return [r for r in sorted(rows, key=lambda r: r["time"]) if r.get("state") in _STATES]


def _change(patient: str, r: Mapping[str, Any]) -> AlertChange:
    return AlertChange(
        alert_id=r.get("alert_id") or f"{r.get('rule')}@{r['time']}", patient=patient, rule=r.get("rule") or "-",
        severity=r.get("severity") or "info", metric=r.get("metric") or "-", state=r["state"],
        time_s=r["time"] / 1000.0, message=r.get("message") or "",
        value=float(r["value"]) if r.get("value") is not None else None, by=r.get("by"),
        kind="technical" if (r.get("rule") or "").startswith("tech.") else "clinical")


def alert_changes(reader: InfluxReader, patient: str, sel: Selection) -> Iterator[AlertChange]:
    """Every alert state change of ``patient`` in the period, in time order."""
    for r in _alert_rows(reader, patient, sel):
        yield _change(patient, r)


def outgoing(reader: InfluxReader, sel: Selection, *, header: Header, now_s: float
             ) -> tuple[list[Outgoing], list[Refused]]:
    """Every message of the selection, encoded, in time order (vitals before alerts at the same time),
    and the rows that cannot be encoded, with their reasons."""
    timed: list[tuple[float, int, Outgoing]] = []
    refused: list[Refused] = []
    for patient in sel.patients:
        if sel.vitals:
            for report in vitals(reader, patient, sel, refused):
                period = {"patient": patient, "time": int(report.time_s * 1000),
                          "observations": len(report.observations)}
                with _refusing(refused, patient, "vitals", period):
                    cid, text = encode_vitals(report, header=header, now_s=now_s)
                    timed.append((report.time_s, 0, Outgoing(cid, text, patient, "vitals")))
        if sel.alerts:
            for r in _alert_rows(reader, patient, sel):
                with _refusing(refused, patient, "alert", r):
                    change = _change(patient, r)
                    cid, text = encode_alert(change, header=header, now_s=now_s)
                    timed.append((change.time_s, 1, Outgoing(cid, text, patient, "alert", change.rule,
                                                             change.severity, change.alert_id)))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [o for *_, o in timed], refused
