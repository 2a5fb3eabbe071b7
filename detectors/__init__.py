"""Pure, vectorized detectors over numpy arrays: no I/O, no Faust, no config files.

The same code serves the live Faust worker and ``rpm backtest`` (DESIGN.md). Public API:

- :class:`Engine` — runs a :class:`RuleSet` over :class:`SampleBatch` micro-batches, returns
  :class:`AlertEvent` s; ``tick``, ``acknowledge``, per-patient ``export_state``/``import_state``
  (and packed, many patients at once: ``export_packed``/``import_packed``);
- rule models :class:`RuleSet`, :class:`ThresholdRule` (and its signal-rule subclasses
  :class:`RateRule`, :class:`ForecastRule`, :class:`BaselineRule`, :class:`RhythmRule`),
  :class:`StalenessRule`, :class:`ThresholdLevel`, :class:`StaleLevel`, :class:`Period`,
  :class:`Flapping`, :class:`Severity`, :class:`Direction` (built from ``alert_rules.yaml`` by
  ``rpm_core.rules``);
- :class:`PatientRegistry` (patient id ↔ dense index) and :class:`SampleBatch`.
"""

from __future__ import annotations

from detectors.batch import PatientRegistry, SampleBatch
from detectors.engine import Engine
from detectors.errors import DetectorError, RuleValidationError, StateError
from detectors.events import AlertEvent, alert_id
from detectors.rules import (
    BaselineRule,
    Direction,
    Flapping,
    ForecastRule,
    Period,
    RateRule,
    RhythmRule,
    Rule,
    RuleSet,
    Severity,
    StaleLevel,
    StalenessRule,
    ThresholdLevel,
    ThresholdRule,
)

__all__ = [
    "AlertEvent",
    "BaselineRule",
    "DetectorError",
    "Direction",
    "Engine",
    "Flapping",
    "ForecastRule",
    "PatientRegistry",
    "Period",
    "RateRule",
    "RhythmRule",
    "Rule",
    "RuleSet",
    "RuleValidationError",
    "SampleBatch",
    "Severity",
    "StaleLevel",
    "StalenessRule",
    "StateError",
    "ThresholdLevel",
    "ThresholdRule",
    "alert_id",
]
