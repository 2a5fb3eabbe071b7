"""The nurse station's alarm policy: re-alarm intervals and silence limits, from ``alert_rules.yaml``.

The ``station:`` section of the rules file (the detectors ignore it)::

    station:
      realarm_after: {critical: 15m, warning: 30m, info: null}   # null: never re-alarms
      silence_max:   {critical: 15m, warning: 30m, info: 60m}
      technical_silence_max: 60m
      rules:
        glucose_low: {realarm_after: {critical: 15m}, silence_max: {critical: 15m}}

``realarm_after``: an alert acknowledged at a station that is still active (not ``cleared`` by
the worker) this long after the acknowledgement alarms again. ``silence_max``: the longest a
nurse may silence an alert of that severity (the safety floor of "silence for N min").
A rule's own entry wins over the defaults, severity by severity. Durations as in the rules:
seconds, or ``90s`` / ``10m`` / ``1.5h``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from rpm_core.errors import ConfigError
from rpm_core.wire import is_valid_id

SEVERITIES: Final = ("info", "warning", "critical")
# Without a station section: re-alarm a critical alert after 15 min (the 15-minute recheck of
# hypoglycaemia treatment, ADA Standards of Care), warnings after 30 min; never an info.
DEFAULT_REALARM_S: Final[Mapping[str, float | None]] = {"critical": 900.0, "warning": 1800.0, "info": None}
DEFAULT_SILENCE_MAX_S: Final[Mapping[str, float]] = {"critical": 900.0, "warning": 1800.0, "info": 3600.0}
DEFAULT_TECHNICAL_SILENCE_MAX_S: Final = 3600.0
_KEYS: Final = {"realarm_after", "silence_max", "technical_silence_max", "rules"}
_RULE_KEYS: Final = {"realarm_after", "silence_max"}
_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*")
_UNIT_S: Final = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_MAX_S: Final = 7 * 86400.0


class AlarmPolicyError(ConfigError):
    """An invalid ``station:`` section; the message names the file, the field and the fix."""


@dataclass(frozen=True, slots=True)
class AlarmPolicy:
    """Re-alarm intervals and silence limits per severity, with per-rule overrides (seconds)."""

    realarm_after: Mapping[str, float | None] = field(default_factory=lambda: dict(DEFAULT_REALARM_S))
    silence_max: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SILENCE_MAX_S))
    technical_silence_max: float = DEFAULT_TECHNICAL_SILENCE_MAX_S
    rules: Mapping[str, tuple[Mapping[str, float | None], Mapping[str, float]]] = field(default_factory=dict)

    def realarm_s(self, rule: str, severity: str) -> float | None:
        """Seconds after an acknowledgement at which a still-active alert alarms again (None: never)."""
        own = self.rules.get(rule)
        if own is not None and severity in own[0]:
            return own[0][severity]
        return self.realarm_after.get(severity)

    def silence_max_s(self, rule: str, severity: str, *, technical: bool = False) -> float:
        """The longest silence allowed for an alert of ``rule`` at ``severity``."""
        if technical:
            return self.technical_silence_max
        own = self.rules.get(rule)
        if own is not None and severity in own[1]:
            return own[1][severity]
        return self.silence_max.get(severity, 0.0)


def realarm_table(policy: AlarmPolicy, rules: Iterable[str]) -> dict[str, tuple[float | None, ...]]:
    """Per rule, the re-alarm seconds for info, warning and critical: what the worker's engine takes
    (``detectors.Engine(realarm_after=…)``), so the worker, every station and the notifier agree."""
    return {rule: tuple(policy.realarm_s(rule, sev) for sev in ("info", "warning", "critical")) for rule in rules}


def load_alarm_policy(path: str | Path | None) -> AlarmPolicy:
    """The ``station:`` section of the rules file at ``path`` (defaults without a file or section)."""
    if path is None or not Path(path).is_file():
        return AlarmPolicy()
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise AlarmPolicyError(f"{path}: cannot read the rules file: {exc}") from exc
    section = doc.get("station") if isinstance(doc, dict) else None
    return parse_alarm_policy(section, source=str(path))


def parse_alarm_policy(section: Any, *, source: str = "<string>") -> AlarmPolicy:
    """Validate a decoded ``station:`` section; :class:`AlarmPolicyError` naming the field."""
    if section is None:
        return AlarmPolicy()
    where = f"{source}: station"
    _mapping(section, where, _KEYS)
    realarm = {**DEFAULT_REALARM_S, **_per_severity(section.get("realarm_after"), f"{where}.realarm_after", True)}
    silence = {**DEFAULT_SILENCE_MAX_S, **_per_severity(section.get("silence_max"), f"{where}.silence_max", False)}
    tech = section.get("technical_silence_max", DEFAULT_TECHNICAL_SILENCE_MAX_S)
    rules: dict[str, tuple[Mapping[str, float | None], Mapping[str, float]]] = {}
    own_rules = {} if section.get("rules") is None else section["rules"]
    for name, entry in _mapping(own_rules, f"{where}.rules", None).items():
        if not is_valid_id(name):
            raise AlarmPolicyError(f"{where}.rules: {name!r} is not a rule name")
        _mapping(entry, f"{where}.rules.{name}", _RULE_KEYS)
        own_realarm = _per_severity(entry.get("realarm_after"), f"{where}.rules.{name}.realarm_after", True)
        own_silence = _per_severity(entry.get("silence_max"), f"{where}.rules.{name}.silence_max", False)
        rules[name] = (own_realarm, {k: v for k, v in own_silence.items() if v is not None})
    tech_s = _duration(tech, f"{where}.technical_silence_max")
    return AlarmPolicy(realarm_after=realarm, silence_max={k: v for k, v in silence.items() if v is not None},
                       technical_silence_max=tech_s, rules=rules)


def _mapping(value: Any, where: str, keys: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AlarmPolicyError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in value if keys is not None and k not in keys)
    if unknown:
        raise AlarmPolicyError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(keys or ()))}")
    return value


def _per_severity(value: Any, where: str, nullable: bool) -> dict[str, float | None]:
    if value is None:
        return {}
    out: dict[str, float | None] = {}
    for sev, d in _mapping(value, where, set(SEVERITIES)).items():
        if d is None and nullable:
            out[sev] = None
        else:
            out[sev] = _duration(d, f"{where}.{sev}")
    return out


def _duration(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise AlarmPolicyError(f"{where}: expected a duration such as 90s, 15m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.fullmatch(str(value))
        if m is None:
            raise AlarmPolicyError(f"{where}: {value!r} is not a duration; write 90s, 15m or 1h")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2) or "s"]
    if not 0 < seconds <= _MAX_S:
        raise AlarmPolicyError(f"{where}: must be more than 0 and at most 7 days")
    return seconds
