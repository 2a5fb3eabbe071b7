"""Rule models: frozen, plain-Python descriptions of what the detectors look for.

They are built by ``rpm_core.rules`` from ``alert_rules.yaml`` (or directly in code by tests and
backtests) and validated here, so that every way of making a rule gets the same checks. Validation
errors are :class:`~detectors.errors.RuleValidationError` naming the field, which the YAML loader
maps back to a file line.

Every rule type carries ``type`` (the YAML discriminator). Milestone 1 has ``threshold``; rate,
forecast, staleness, rhythm and baseline rules join :data:`Rule` as more dataclasses.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final

from detectors.const import CRITICAL, INFO, METRIC_NAMES, SEVERITY_NAMES, WARNING
from detectors.errors import RuleValidationError

# Rule names become InfluxDB tag values and parts of alert ids: keep them tame.
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

DEFAULT_MAX_GAP_S: Final = 300.0


class Severity(enum.IntEnum):
    """How urgent an alert is; the integer is the level code used in the engine's arrays."""

    INFO = INFO
    WARNING = WARNING
    CRITICAL = CRITICAL

    @property
    def label(self) -> str:
        """The name used in YAML, events and InfluxDB (``info`` | ``warning`` | ``critical``)."""
        return SEVERITY_NAMES[self.value - 1]

    @classmethod
    def from_label(cls, label: str) -> Severity:
        """The severity called ``label``; ``ValueError`` for anything else."""
        if label not in SEVERITY_NAMES:
            raise ValueError(f"unknown severity {label!r}")
        return cls(SEVERITY_NAMES.index(label) + 1)


class Direction(enum.Enum):
    """Which side of a threshold is abnormal."""

    ABOVE = "above"
    BELOW = "below"

    @property
    def sign(self) -> float:
        """Multiplier that turns a ``below`` rule into an ``above`` one (negation is exact in floats)."""
        return 1.0 if self is Direction.ABOVE else -1.0


def _check_duration(field_name: str, value: float, *, positive: bool = False) -> None:
    bad = not math.isfinite(value) or value < 0 or (positive and value == 0)
    if bad:
        need = "a positive" if positive else "a non-negative"
        raise RuleValidationError(
            field_name,
            f"duration {value!r} s is not {need} finite number",
            f"Write {need} duration such as 90, 90s, 10m or 1h.",
        )


def _check_finite(field_name: str, value: float) -> None:
    if not math.isfinite(value):
        raise RuleValidationError(field_name, f"{value!r} is not a finite number", "Write a number such as 120.")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdLevel:
    """One severity of a threshold rule: abnormal beyond ``threshold`` for at least ``for_s`` seconds.

    ``escalate_after_s``: an alert raised at this severity that nobody acknowledged for this long
    escalates once; ``None`` never escalates (sensible for ``info``).
    """

    severity: Severity
    threshold: float
    for_s: float = 0.0
    escalate_after_s: float | None = None

    def __post_init__(self) -> None:
        where = f"levels.{self.severity.label}"
        _check_finite(f"{where}.threshold", self.threshold)
        _check_duration(f"{where}.for", self.for_s)
        if self.escalate_after_s is not None:
            _check_duration(f"{where}.escalate_after", self.escalate_after_s, positive=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule:
    """Multi-level threshold with hysteresis, minimum durations, gap handling and cooldown.

    Semantics (one episode = one alert; see ``detectors/threshold.py`` for the algorithm):

    - a level is *met* by a sample beyond its threshold (strictly: ``>`` for ``above``, ``<`` for
      ``below``) and *due* once met continuously for ``for_s`` seconds of event time;
    - continuity breaks when two consecutive usable samples are more than ``max_gap_s`` apart;
    - with no open episode, the most severe due level raises an alert (unless within ``cooldown_s``
      of the previous episode's clearing); a more severe level becoming due later in the same episode
      re-raises the same alert at the higher severity; severities never drop within an episode;
    - the episode clears once samples stay on the normal side of ``clear_threshold`` (``<=`` for
      ``above``, ``>=`` for ``below``) continuously for ``clear_for_s`` seconds.
    """

    TYPE: ClassVar[str] = "threshold"

    name: str
    metric: str
    direction: Direction
    levels: tuple[ThresholdLevel, ...]
    clear_threshold: float
    clear_for_s: float = 0.0
    max_gap_s: float = DEFAULT_MAX_GAP_S
    cooldown_s: float = 0.0
    enabled: bool = True
    description: str = ""

    @property
    def type(self) -> str:
        """The YAML ``type:`` discriminator of this rule."""
        return self.TYPE

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_metric(self.metric)
        self._check_levels()
        _check_finite("clear.threshold", self.clear_threshold)
        _check_duration("clear.for", self.clear_for_s)
        _check_duration("max_gap", self.max_gap_s, positive=True)
        _check_duration("cooldown", self.cooldown_s)
        self._check_hysteresis()

    def level(self, severity: Severity) -> ThresholdLevel | None:
        """The level of ``severity``, if this rule has one."""
        return next((lv for lv in self.levels if lv.severity == severity), None)

    def _check_levels(self) -> None:
        if not self.levels:
            raise RuleValidationError(
                "levels", "a threshold rule needs at least one level", "Add e.g. `warning: {threshold: 120}`."
            )
        severities = [lv.severity for lv in self.levels]
        if severities != sorted(set(severities)):
            raise RuleValidationError(
                "levels",
                "levels must be listed once each, from least to most severe",
                "Keep at most one of info, warning, critical, in that order.",
            )
        sign = self.direction.sign
        for lower, higher in zip(self.levels, self.levels[1:], strict=False):
            if not sign * higher.threshold > sign * lower.threshold:
                side = "above" if self.direction is Direction.ABOVE else "below"
                raise RuleValidationError(
                    f"levels.{higher.severity.label}.threshold",
                    f"the {higher.severity.label} threshold {higher.threshold:g} is not {side} the "
                    f"{lower.severity.label} threshold {lower.threshold:g}",
                    f"For a `direction: {self.direction.value}` rule a more severe level must lie further "
                    f"{side} the normal range; swap or correct the thresholds.",
                )

    def _check_hysteresis(self) -> None:
        least = self.levels[0]
        sign = self.direction.sign
        if sign * self.clear_threshold > sign * least.threshold:
            side = "at or below" if self.direction is Direction.ABOVE else "at or above"
            raise RuleValidationError(
                "clear.threshold",
                f"clearing level {self.clear_threshold:g} is on the abnormal side of the "
                f"{least.severity.label} threshold {least.threshold:g} (inverted hysteresis)",
                f"For a `direction: {self.direction.value}` rule the clearing level must be {side} the least "
                f"severe threshold, e.g. {least.threshold - sign * 10:g}.",
            )


# The union of all rule types; rate, forecast, staleness, rhythm and baseline rules join it.
Rule = ThresholdRule

RULE_TYPES: Final[Mapping[str, type[Rule]]] = MappingProxyType({ThresholdRule.TYPE: ThresholdRule})
PLANNED_RULE_TYPES: Final = ("rate", "forecast", "staleness", "rhythm", "baseline")


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise RuleValidationError(
            "name",
            f"rule name {name!r} is not a lower-case identifier",
            "Use lower-case letters, digits and _, starting with a letter (e.g. tachycardia).",
        )


def _check_metric(metric: str) -> None:
    if metric not in METRIC_NAMES:
        raise RuleValidationError("metric", f"unknown metric {metric!r}", f"Use one of: {', '.join(METRIC_NAMES)}.")


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    """All rules in force: the defaults and, per patient, fully resolved overriding rules.

    ``patient_rules[patient][name]`` replaces rule ``name`` for that patient only; it must keep the
    rule's type, metric and direction (the engine keeps one set of arrays per rule).
    """

    rules: tuple[Rule, ...]
    patient_rules: Mapping[str, Mapping[str, Rule]] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise RuleValidationError(
                    f"rules.{rule.name}", f"duplicate rule name {rule.name!r}", "Give every rule its own name."
                )
            seen.add(rule.name)
        for patient, overrides in self.patient_rules.items():
            for name, rule in overrides.items():
                self._check_override(patient, name, rule)
        frozen = {p: MappingProxyType(dict(o)) for p, o in self.patient_rules.items()}
        object.__setattr__(self, "patient_rules", MappingProxyType(frozen))

    def _check_override(self, patient: str, name: str, rule: Rule) -> None:
        where = f"patients.{patient}.rules.{name}"
        base = self.by_name().get(name)
        if base is None:
            raise RuleValidationError(
                where, f"override of unknown rule {name!r}", f"Use one of: {', '.join(self.names())}."
            )
        for attr in ("name", "type", "metric", "direction"):
            if getattr(rule, attr) != getattr(base, attr):
                raise RuleValidationError(
                    f"{where}.{attr}",
                    f"a per-patient override cannot change the rule's {attr}",
                    "Define a separate rule instead, and disable the default one for this patient.",
                )

    def names(self) -> tuple[str, ...]:
        """Rule names in file order (the order of the engine's detectors and of events at one instant)."""
        return tuple(rule.name for rule in self.rules)

    def by_name(self) -> dict[str, Rule]:
        """Default rules keyed by name."""
        return {rule.name: rule for rule in self.rules}

    def rule_for(self, patient: str, name: str) -> Rule:
        """The rule ``name`` as it applies to ``patient`` (the override if there is one)."""
        override = self.patient_rules.get(patient, {}).get(name)
        return override if override is not None else self.by_name()[name]
