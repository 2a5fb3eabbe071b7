"""Codes of the HL7 v2 messages.

Observations are coded in LOINC (``LN``), as in the FHIR export (:mod:`rpm_app.fhir`), with
UCUM units (``UCUM``): receivers map LOINC far more often than they map MDC. The alert
messages follow IHE PCD Technical Framework Vol. 2, PCD-04 Report Alert: the event identification
OBX carries ``196616^MDC_EVT_ALARM^MDC`` and the ACM facets travel as OBX with the MDC attribute
codes below (values as the TF lists them). Our alert rules have no MDC event code, so the rule is
sent in a local coding system (``99RPM``, HL7's convention for local tables).
"""

from __future__ import annotations

from typing import Final, Literal

LOINC: Final = "LN"
UCUM: Final = "UCUM"
MDC: Final = "MDC"
LOCAL_RULES: Final = "99RPM"
HL7_VERSION: Final = "2.6"

# (code, text) and UCUM unit per metric and device kind (see rpm_app.fhir for why CGM ≠ blood)
HEART_RATE: Final = ("8867-4", "Heart rate", "/min")
CGM_GLUCOSE: Final = ("99504-3", "Glucose [Mass/volume] in Interstitial fluid", "mg/dL")
METER_GLUCOSE: Final = ("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer", "mg/dL")
BLOOD_GLUCOSE: Final = ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL")

# IHE PCD-04: OBX-3 of the alert's facets
MDC_EVT_ALARM: Final = ("196616", "MDC_EVT_ALARM")
MDC_ATTR_EVENT_PHASE: Final = ("68481", "MDC_ATTR_EVENT_PHASE")
MDC_ATTR_ALARM_STATE: Final = ("68482", "MDC_ATTR_ALARM_STATE")
MDC_ATTR_ALARM_INACTIVATION_STATE: Final = ("68483", "MDC_ATTR_ALARM_INACTIVATION_STATE")

EventPhase = Literal["start", "continue", "end", "escalate", "update"]
AlarmState = Literal["active", "inactive", "latched"]
InactivationState = Literal["enabled", "alert-acknowledged", "audio-paused", "alarm-paused"]

# our alert states → the ACM facets (phase, alarm state, inactivation state)
FACETS: Final[dict[str, tuple[EventPhase, AlarmState, InactivationState]]] = {
    "raised": ("start", "active", "enabled"),
    "escalated": ("escalate", "active", "enabled"),
    "acknowledged": ("update", "active", "alert-acknowledged"),
    "cleared": ("end", "inactive", "enabled"),
}
# OBX-8 abnormal flags of the alert: priority (PH/PM/PL) and source type (SP physiological, ST technical)
PRIORITY: Final = {"critical": "PH", "warning": "PM", "info": "PL"}
SOURCE_PHYSIOLOGICAL: Final = "SP"
SOURCE_TECHNICAL: Final = "ST"
