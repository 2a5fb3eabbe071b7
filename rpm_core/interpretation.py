"""Interpretation flags of a reading (HL7 v3 ObservationInterpretation: L, LL, H, HH) from the alert rules.

A reading beyond a threshold rule's ``info`` or ``warning`` level is L (direction below) or H
(above), beyond its ``critical`` level LL or HH: the same limits the clinicians agreed for alerting
(alert_rules.yaml, with its sources), applied to one reading without the rule's duration. Per-patient
overrides apply; daily schedules do not (a flag describes the value, not the time it was taken).
Used by the FHIR export (``Observation.interpretation``) and the HL7 output (OBX-8).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from detectors.rules import Direction, RuleSet, Severity, ThresholdRule

Flag = Literal["", "L", "LL", "H", "HH"]
DISPLAY: Final = {"L": "Low", "LL": "Critical low", "H": "High", "HH": "Critical high"}
SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


@dataclass(frozen=True, slots=True)
class Limit:
    """One threshold: readings strictly beyond it get ``flag``."""

    metric: str
    below: bool
    threshold: float
    flag: Flag


def limits(ruleset: RuleSet, patient: str | None = None) -> tuple[Limit, ...]:
    """The limits of the enabled threshold rules (with ``patient``'s overrides), most severe first."""
    overrides = ruleset.patient_rules.get(patient or "", {})
    out: list[Limit] = []
    for base in ruleset.rules:
        rule = overrides.get(base.name, base)
        if type(rule) is not ThresholdRule or not rule.enabled:  # rate, forecast, baseline: not the reading itself
            continue
        below = rule.direction == Direction.BELOW
        for level in rule.levels:
            critical = level.severity == Severity.CRITICAL
            flag: Flag = ("LL" if below else "HH") if critical else ("L" if below else "H")
            out.append(Limit(rule.metric, below, level.threshold, flag))
    return tuple(sorted(out, key=lambda x: len(x.flag), reverse=True))


def interpret(metric: str, value: float, table: Iterable[Limit]) -> Flag:
    """The flag of one reading: the most severe limit it is beyond, or "" (normal)."""
    for lim in table:
        if lim.metric == metric and (value < lim.threshold if lim.below else value > lim.threshold):
            return lim.flag
    return ""
