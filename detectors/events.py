"""Alert events: the only output of the detectors, one per state change of an alert.

An alert is one episode of one rule for one patient. Its life: ``raised`` (again ``raised``, same
``alert_id``, when it worsens to a higher severity) → optionally ``acknowledged`` and/or
``escalated`` → ``cleared``. Ids are deterministic, so redelivered input reproduces the same ids
and the consumers (InfluxDB, nurse station) overwrite instead of duplicating.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

from detectors.const import METRIC_DECIMALS, METRIC_UNITS

SeverityName = Literal["info", "warning", "critical"]
AlertState = Literal["raised", "cleared", "acknowledged", "escalated"]


def alert_id(patient: str, rule: str, since: float) -> str:
    """Deterministic id of the episode of ``rule`` for ``patient`` that started at ``since``.

    ``repr`` of a float is exact and stable, so the same episode always hashes the same.
    """
    key = f"{patient}|{rule}|{float(since)!r}".encode()
    return hashlib.sha1(key, usedforsecurity=False).hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertEvent:
    """One state change of one alert.

    - ``time``: event time in UTC epoch seconds: the sample that caused it (``raised``/``cleared``),
      the tick time (``escalated``) or the acknowledgement time (``acknowledged``);
    - ``value``: the sample value that caused it, NaN for ``escalated``/``acknowledged``;
    - ``severity``: the alert's severity after this event;
    - ``since``: when the episode started (the first sample of the run that raised it);
    - ``by``: who acknowledged (``acknowledged`` only).
    """

    alert_id: str
    patient: str
    rule: str
    severity: SeverityName
    metric: str
    state: AlertState
    time: float
    value: float
    message: str
    since: float
    by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-able dict (NaN or ±inf ``value``, i.e. none or beyond the device's
        range, becomes ``None``; the message says which)."""
        return {
            "alert_id": self.alert_id,
            "patient": self.patient,
            "rule": self.rule,
            "severity": self.severity,
            "metric": self.metric,
            "state": self.state,
            "time": self.time,
            "value": self.value if math.isfinite(self.value) else None,
            "message": self.message,
            "since": self.since,
            "by": self.by,
        }


def format_value(metric: str, value: float) -> str:
    """``value`` with the metric's unit, as a nurse reads it (``134 bpm``, ``52 mg/dL``); ±inf is a
    reading beyond the device's measuring range (a meter's "HI" / "LO")."""
    if math.isinf(value):
        return "HI, above the device's measuring range" if value > 0 else "LO, below the device's measuring range"
    return f"{value:.{METRIC_DECIMALS[metric]}f} {METRIC_UNITS[metric]}"


def format_duration(seconds: float) -> str:
    """A duration in the largest whole unit that fits (``10 min``, ``90 s``, ``2 h``)."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
