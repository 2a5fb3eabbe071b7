"""What a notification says: webhook JSON, e-mail subject and body, caregiver texts.

Clinicians' messages carry the alert's own message (with the reading that raised it): that is what
they need to act. Caregiver digests and notices are read-only and carry no readings: the rule, the
severity and the time only. Patients get only what routes.yaml says to tell them (see
:mod:`notify.channels.edge`).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any, Final

from notify.router import AlertInfo, Notification
from rpm_core.technical import SYSTEM_SUBJECT, TECHNICAL_METRIC

PAYLOAD_VERSION: Final = 1
_KIND_TITLE: Final = {"step": "", "update": "UPDATE ", "repeat": "REMINDER ", "digest": "", "caregiver": ""}


def utc(t: float) -> str:
    """``2025-11-25 21:05 UTC``."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def is_read_only(note: Notification) -> bool:
    """Caregiver digests and notices: information only, no readings, nothing to acknowledge."""
    return note.kind in ("digest", "caregiver")


def alert_doc(alert: AlertInfo, *, read_only: bool) -> dict[str, Any]:
    """One alert in a webhook payload."""
    doc: dict[str, Any] = {"alert_id": alert.alert_id, "rule": alert.rule, "severity": alert.severity,
                           "metric": alert.metric, "raised_at": alert.raised_at}
    if not read_only:
        doc |= {"message": alert.message, "since": alert.since}
    return doc


def webhook_payload(note: Notification) -> dict[str, Any]:
    """The JSON document a webhook receives."""
    read_only = is_read_only(note)
    return {
        "v": PAYLOAD_VERSION, "id": note.id, "kind": note.kind, "read_only": read_only,
        "patient": note.patient, "ward": note.ward, "route": note.route, "escalation": note.escalation,
        "step": note.step, "final_step": note.final_step, "receiver": note.receiver, "sent_at": note.at,
        "summary": subject(note), "alerts": [alert_doc(a, read_only=read_only) for a in note.alerts],
    }


def subject(note: Notification) -> str:
    """One line: what and whom it is about."""
    if note.kind == "digest":
        return f"[rpm] Daily summary for patient {note.patient}: {len(note.alerts)} alert(s) in 24 h"
    lead = note.lead
    if lead is None:
        return f"[rpm] patient {note.patient}: no open alerts"
    if note.kind == "caregiver":
        return f"[rpm] Critical alert for patient {note.patient}: {lead.rule.replace('_', ' ')}"
    more = f" (+{len(note.alerts) - 1} more)" if len(note.alerts) > 1 else ""
    escalated = f"ESCALATION step {note.step}: " if note.step > 0 and note.kind == "step" else ""
    if lead.metric == TECHNICAL_METRIC:  # rpm cannot monitor someone: say what, not whom
        who = "" if note.patient == SYSTEM_SUBJECT else f" patient {note.patient}:"
        return f"[rpm] {_KIND_TITLE[note.kind]}{escalated}TECHNICAL ALERT{who} {lead.message[:160]}{more}"
    return f"[rpm] {_KIND_TITLE[note.kind]}{escalated}{lead.severity.upper()} {note.patient} {lead.rule}{more}"


def body(note: Notification) -> str:
    """The plain-text body of an e-mail."""
    if note.kind == "digest":
        return _digest_body(note)
    if note.kind == "caregiver":
        return _caregiver_body(note)
    lines = [subject(note).removeprefix("[rpm] "), ""]
    lines += [f"- {a.severity.upper()} {a.rule}: {a.message} (raised {utc(a.raised_at)})" for a in note.alerts]
    lines += ["", f"Patient {note.patient}, ward {note.ward or 'unassigned'}.",
              f"Escalation '{note.escalation}', step {note.step}" + (" (last step)." if note.final_step else "."),
              "Acknowledge at the nurse station: this stops the escalation.", "", f"Notification {note.id}"]
    return "\n".join(lines) + "\n"


def _caregiver_body(note: Notification) -> str:
    lead = note.lead
    assert lead is not None
    return (f"A critical alert ({lead.rule.replace('_', ' ')}) was raised for patient {note.patient} at "
            f"{utc(lead.raised_at)}. The care team has been notified and is following it up.\n\n"
            "This message is for your information; there is nothing to reply or acknowledge.\n")


def _digest_body(note: Notification) -> str:
    hours = note.window_s / 3600
    if not note.alerts:
        return f"No alerts for patient {note.patient} in the last {hours:g} hours.\n"
    counts = Counter((a.rule, a.severity) for a in note.alerts)
    lines = [f"Alerts for patient {note.patient} in the last {hours:g} hours:", ""]
    lines += [f"- {rule.replace('_', ' ')} ({severity}): {n}" for (rule, severity), n in sorted(counts.items())]
    lines += ["", "This summary is for your information; the care team follows up every alert."]
    return "\n".join(lines) + "\n"
