"""Load and validate ``alert_rules.yaml`` into the detectors' frozen rule models.

The file is composed into PyYAML's node tree (not loaded into plain dicts) so every value keeps
its line: each error is a :class:`~rpm_core.errors.RulesError` naming the file, the line, the
field and the fix. Structure and types are checked here (unknown keys are rejected);
the meaning of the values (levels ordered, hysteresis the right way round, durations positive,
known metrics) is checked by the models in :mod:`detectors.rules`, whose errors name the field,
which this module maps back to its line.

Schema (version 1; see the commented default file for the meaning of each field)::

    version: 1
    defaults: {max_gap: 5m, cooldown: 0s, escalate_after: 15m}     # all optional
    rules:
      <name>:
        type: threshold | rate | forecast | baseline | rhythm | staleness
        metric: heart_rate | rr_interval | glucose
        description: str, enabled: bool, cooldown: D, escalate_after: D|null,
        device_prefix: str (only these devices), exclude_device_prefix: str (every device but these)
        # threshold, rate, forecast, baseline:
        direction: above | below
        levels: {info|warning|critical: {threshold: N, for: D, escalate_after: D|null}}
        clear: {threshold: N, for: D}
        max_gap: D
        tolerate: D     # returns back across shorter than this do not restart a level's clock
        # threshold:  median_of: N  (the median of the last N readings is the signal, not each reading)
        schedule: {<period>: {from: "HH:MM", to: "HH:MM", tz: Zone, levels: {...}, clear: {...}}}
        flapping: {raises: K, within: D, hold: D}
        # rate:      consecutive: N, gate: {below: N, above: N}
        # forecast:  model: kalman | damped_trend | ar2, horizon: D, window: D, damping: D, min_points: N, confirm: N
        # baseline:  block: D, window: D, min_blocks: N, min_scale: N
        # rhythm:    method: dash | model, window: beats, every: beats, votes: N, trim: beats, nrmssd: N,
        #            tpr: [lo, hi], entropy: N; levels: {<severity>: {for: D, escalate_after: D}}; clear: {for: D}
        # staleness: levels: {<severity>: {after: D, escalate_after: D|null}}
    patients:
      <patient id>: {rules: {<name>: <any subset of the rule's fields but type, metric,
                     direction, device_prefix, exclude_device_prefix, forecast model, baseline
                     block/window, rhythm window>}}
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from detectors.const import METRIC_NAMES, METRIC_UNITS, SEVERITY_NAMES
from detectors.errors import RuleValidationError
from detectors.events import format_duration
from detectors.rules import (
    DEFAULT_MAX_GAP_S,
    RULE_TYPES,
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
    device_source,
    parse_clock,
)
from rpm_core.errors import RulesError
from rpm_core.wire import is_valid_id

_LOGGER = logging.getLogger(__name__)

SUPPORTED_VERSION: Final = 1
DEFAULT_RULES_FILE: Final = "alert_rules.yaml"

# `station:` is the nurse station's alarm policy (rpm_core.alarm_policy); the detectors ignore it.
_ROOT_KEYS: Final = {"version", "defaults", "rules", "patients", "station"}
_DEFAULT_KEYS: Final = {"max_gap", "cooldown", "escalate_after"}
# Keys every rule type accepts, then each type's own (``levels``/``clear`` contents differ too).
_COMMON_KEYS: Final = {
    "type",
    "metric",
    "description",
    "enabled",
    "escalate_after",
    "cooldown",
    "device_prefix",
    "exclude_device_prefix",
}
_SIGNAL_KEYS: Final = {"direction", "levels", "clear", "max_gap", "tolerate", "schedule", "flapping"}
_TYPE_KEYS: Final[dict[str, set[str]]] = {
    "threshold": _SIGNAL_KEYS | {"median_of"},
    "rate": _SIGNAL_KEYS | {"consecutive", "gate"},
    "forecast": _SIGNAL_KEYS | {"model", "horizon", "window", "damping", "min_points", "confirm"},
    "baseline": _SIGNAL_KEYS | {"block", "window", "min_blocks", "min_scale"},
    "rhythm": {
        "levels",
        "clear",
        "max_gap",
        "schedule",
        "flapping",
        "window",
        "every",
        "votes",
        "trim",
        "nrmssd",
        "tpr",
        "entropy",
        "method",
    },
    "staleness": {"levels"},
}
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    kind: ("type", "metric", "direction", "levels", "clear") for kind in ("threshold", "rate", "forecast", "baseline")
} | {"rhythm": ("type", "metric", "levels"), "staleness": ("type", "metric", "levels")}
# Not overridable per patient: they decide which samples a rule sees or size its per-patient state.
_FIXED_KEYS: Final[dict[str, set[str]]] = {
    "threshold": {"median_of"},
    "forecast": {"model"},
    "baseline": {"block", "window"},
    "rhythm": {"window"},
}
_ALWAYS_FIXED: Final = {"type", "metric", "direction", "device_prefix", "exclude_device_prefix"}
_LEVEL_KEYS: Final[dict[str, set[str]]] = {
    "rhythm": {"for", "escalate_after"},
    "staleness": {"after", "escalate_after"},
}
_SIGNAL_LEVEL_KEYS: Final = {"threshold", "for", "escalate_after"}
_LEVEL_REQUIRED: Final[dict[str, tuple[str, ...]]] = {"rhythm": (), "staleness": ("after",)}
_NESTED_KEYS: Final[dict[str, set[str]]] = {"gate": {"below", "above"}, "flapping": {"raises", "within", "hold"}}
_PERIOD_KEYS: Final = {"from", "to", "tz", "levels", "clear"}
_RHYTHM_THRESHOLD: Final = 0.5  # the rhythm signal is 0 (regular) or 1 (irregular)
_KIND: Final = "#type"  # where a raw rule keeps its parsed type
_TYPE_HINT: Final = "add `type:` (one of: threshold, rate, forecast, baseline, rhythm, staleness)"
_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)\s*")
_UNIT_S: Final = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_SELF: Final = "."  # key under which a level keeps its own node (for errors about the whole level)
_DURATION_HINT: Final = "write a duration such as 90 (seconds), 90s, 10m or 1.5h"

T = TypeVar("T")


# -- public API ------------------------------------------------------------------------------------


def default_rules_path() -> Path:
    """The default rules packaged with rpm (a copy of the repository's ``alert_rules.yaml``)."""
    return Path(str(resources.files("rpm_core").joinpath("default_rules.yaml")))


def load_rules(path: str | Path) -> RuleSet:
    """Read, validate and return the rules in ``path``; :class:`RulesError` if it is not valid.

    When ``path`` is the bare default name ``alert_rules.yaml`` and no such file exists in the
    working directory, the packaged default is used (so ``rpm demo`` works from anywhere); any
    other missing path is an error, never silently replaced by defaults.
    """
    source = str(path)
    file = Path(path)
    if source == DEFAULT_RULES_FILE and not file.exists():
        _LOGGER.warning("%s not found in %s; using the packaged default rules", source, Path.cwd())
        file = default_rules_path()
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RulesError(
            f"cannot read the rules file ({exc.strerror or exc})",
            file=source,
            hint="check the path (RPM_RULES or --rules)",
        ) from exc
    except UnicodeDecodeError as exc:
        raise RulesError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=source, hint="save the file as UTF-8"
        ) from exc
    return parse_rules(text, source=source)


def parse_rules(text: str, *, source: str = "<string>") -> RuleSet:
    """Validate rules given as YAML text; ``source`` names the file in error messages."""
    root = _compose(text, source)
    return _Parser(source).ruleset(root)


def check_main(path: str) -> int:
    """``rpm rules check FILE``: print the explanation (exit 0) or the error (stderr, exit 1)."""
    if path == DEFAULT_RULES_FILE and not Path(path).exists():
        print(f"note: no {path} here; checking the packaged default {default_rules_path()}")  # noqa: T201
    try:
        ruleset = load_rules(path)
    except RulesError as exc:
        print(f"invalid rules: {exc}", file=sys.stderr)  # noqa: T201 - this is a CLI entry point
        return 1
    print(f"{path}: valid (version {ruleset.version}, {len(ruleset.rules)} rules)\n")  # noqa: T201
    print(explain(ruleset))  # noqa: T201
    for warning in coverage_warnings(ruleset):
        print(f"\nwarning: {warning}")  # noqa: T201
    return 0


# Devices of each kind whose glucose "LO" (BELOW_RANGE, below every threshold) must page someone.
_GLUCOSE_DEVICES: Final = (("a glucose meter (bgm-*)", "bgm-0"), ("a CGM or other glucose device", "cgm-0"))


def coverage_warnings(ruleset: RuleSet) -> list[str]:
    """Valid settings that leave a patient unwatched where a nurse would expect a page: today, a
    glucose "LO" (below the device's measuring range) that no enabled below-threshold glucose rule
    takes for that kind of device (e.g. glucose_low disabled for a patient while
    glucose_below_measuring_range is off, as by default), for the defaults and each patient."""
    base = {rule.name: rule for rule in ruleset.rules}
    out: list[str] = []
    patients = [(f"patient {p}", o) for p, o in sorted(ruleset.patient_rules.items())]
    for who, overrides in [("every patient", {}), *patients]:
        rules = {**base, **overrides}
        for kind, device in _GLUCOSE_DEVICES:
            if not any(type(r) is ThresholdRule and r.enabled and r.metric == "glucose"
                       and r.direction is Direction.BELOW
                       and (r.device_prefix is None or device.startswith(r.device_prefix))
                       and (r.exclude_device_prefix is None or not device.startswith(r.exclude_device_prefix))
                       for r in rules.values()):
                out.append(f"{who}: a glucose LO from {kind} pages nobody (no enabled below-threshold glucose rule "
                           "takes it); enable glucose_below_measuring_range for them, or the low rule you disabled")
    return out


def explain(ruleset: RuleSet) -> str:
    """A human summary of every rule and every per-patient override."""
    blocks = [_explain_rule(rule) for rule in ruleset.rules]
    for patient, overrides in sorted(ruleset.patient_rules.items()):
        for name, rule in overrides.items():
            blocks.append(f"patient {patient} overrides {name}:\n" + _explain_rule(rule, header=False))
    return "\n\n".join(blocks)


# -- explanation -----------------------------------------------------------------------------------


def _explain_rule(rule: Rule, *, header: bool = True) -> str:
    lines = []
    if header:
        state = "" if rule.enabled else ", DISABLED"
        about = f": {rule.description}" if rule.description else ""
        source = device_source(rule.device_prefix, rule.exclude_device_prefix)
        lines.append(f"{rule.name} ({rule.type} on {rule.metric}{source}{state}){about}")
    elif not rule.enabled:
        lines.append("  DISABLED for this patient")
    if isinstance(rule, StalenessRule):
        lines.extend(
            f"  {lv.severity.label:<8} when no usable {rule.metric} for over {format_duration(lv.after_s)}; "
            f"{_escalation(lv)}"
            for lv in rule.levels
        )
        lines.append("  clears   with the next usable reading")
        return "\n".join(lines)
    lines.extend(_explain_signal(rule))
    for period in rule.schedule:
        hours = f"{_clock(period.start_min)}-{_clock(period.end_min)}"
        lines.append(f"  during {period.name} ({hours} {period.tz}):")
        lines.extend("  " + line for line in _explain_signal(rule, period))
    cooldown = (
        f"no new episode for {format_duration(rule.cooldown_s)} after clearing" if rule.cooldown_s else "no cooldown"
    )
    lines.append(f"  gaps over {format_duration(rule.max_gap_s)} restart the clocks; {cooldown}")
    if rule.median_of > 1:
        lines.append(f"  compares the median of the last {rule.median_of} readings, not each reading")
    if rule.tolerate_s:
        tolerate = format_duration(rule.tolerate_s)
        lines.append(f"  readings back across for less than {tolerate} do not restart a level's clock")
    if rule.flapping is not None:
        flap = rule.flapping
        lines.append(
            f"  flapping: raise number {flap.raises} or later within {format_duration(flap.within_s)} is held "
            f"open until clear for {format_duration(flap.hold_s)}"
        )
    return "\n".join(lines)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _explain_signal(rule: ThresholdRule, period: Period | None = None) -> list[str]:
    """Levels and clearing of a signal rule in words (the signal named after the rule type)."""
    unit = METRIC_UNITS[rule.metric]
    op, back = (">", "<=") if rule.direction is Direction.ABOVE else ("<", ">=")
    signal, unit = _signal_name(rule, unit)
    levels = rule.period_levels(period)
    clear, clear_for = rule.period_clear(period)
    if isinstance(rule, RhythmRule):
        lines = [f"  {lv.severity.label:<8} when irregular{_for(lv.for_s)}; {_escalation(lv)}" for lv in levels]
        return [*lines, f"  clears   when regular{_for(clear_for)}"]
    lines = [
        f"  {lv.severity.label:<8} when {signal} {op} {lv.threshold:g}{unit}{_for(lv.for_s)}; {_escalation(lv)}"
        for lv in levels
    ]
    return [*lines, f"  clears   when {signal} {back} {clear:g}{unit}{_for(clear_for)}"]


def _signal_name(rule: ThresholdRule, unit: str) -> tuple[str, str]:
    """What a rule type compares with its thresholds, and in which unit."""
    if isinstance(rule, RateRule):
        gate = "".join(
            f", while {rule.metric} {op} {value:g} {unit}"
            for op, value in (("<", rule.gate_below), (">", rule.gate_above))
            if value is not None
        )
        return f"{rule.metric} rate over {rule.consecutive} readings{gate},", f" {unit}/min"
    if isinstance(rule, ForecastRule):
        return f"{rule.metric} predicted ({rule.model}) within {format_duration(rule.horizon_s)}", f" {unit}"
    if isinstance(rule, BaselineRule):
        return f"robust z-score against the {format_duration(rule.window_s)} personal baseline", ""
    return rule.metric, f" {unit}"


def _escalation(level: ThresholdLevel | StaleLevel) -> str:
    if level.escalate_after_s is None:
        return "never escalates"
    return f"escalates if unacknowledged for {format_duration(level.escalate_after_s)}"


def _for(seconds: float) -> str:
    return f" for {format_duration(seconds)}" if seconds else ""


# -- YAML nodes ------------------------------------------------------------------------------------


# libyaml's parser when PyYAML has it (about 10x faster: every process and test loads the rules);
# the same node tree with the same line marks.
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str, source: str) -> yaml.Node:
    """The YAML node tree of ``text`` (line numbers kept), translating PyYAML's errors."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = f"not valid YAML: {exc.problem or exc.context}"
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            problem += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise RulesError(
            problem,
            file=source,
            line=line,
            field="(document)",
            hint="fix the YAML syntax at that line or just above it (indentation, colons, brackets, quotes)",
        ) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise RulesError(
            f"character U+{exc.character:04X} is not allowed in YAML",
            file=source,
            line=line,
            field="(document)",
            hint="remove the control character (often pasted from another program)",
        ) from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"not valid YAML: {exc}", file=source, field="(document)", hint="fix the YAML syntax") from exc
    except RecursionError as exc:
        raise RulesError(
            "nested too deeply", file=source, field="(document)", hint="a rules file needs only a few levels of nesting"
        ) from exc
    if root is None:
        raise RulesError(
            "the file is empty",
            file=source,
            line=1,
            field="version",
            hint="start with `version: 1` and a `rules:` mapping (see the default alert_rules.yaml)",
        )
    return root


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A scalar in the file: where it sits (dotted path) and its node (for the line)."""

    path: str
    node: yaml.Node


# A rule's raw fields before conversion: scalars as leaves, ``levels``/``clear`` as nested dicts.
_Raw = dict[str, Any]


class _Parser:
    """Walks the node tree; every error it raises names the file, line and field."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, path: str, problem: str, hint: str) -> RulesError:
        """The error to raise about ``node`` (its line) at field ``path`` ("" is the whole document)."""
        line = node.start_mark.line + 1
        return RulesError(problem, file=self.source, line=line, field=path or "(document)", hint=hint)

    # -- structure ----------------------------------------------------------------------------

    def mapping(
        self,
        node: yaml.Node,
        path: str,
        allowed: set[str] | None = None,
        required: tuple[str, ...] = (),
        owner: yaml.Node | None = None,
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping's entries by key (key node, value node); rejects duplicates and unknown keys.

        ``owner`` (the key naming this mapping) is where a missing field is reported: a block
        mapping's own node starts at its first entry, which is not where a reader would look.
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(
                node,
                path,
                f"expected a mapping, got {_kind(node)}",
                "write `key: value` entries, indented under this field",
            )
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                raise self.fail(
                    key_node,
                    path,
                    f"keys must be plain names, got {_kind(key_node)}",
                    "use a name such as `warning` or `tachycardia` as the key",
                )
            where = _join(path, key)
            if key in out:
                raise self.fail(
                    key_node,
                    where,
                    f"duplicate key {key!r} (first on line {out[key][0].start_mark.line + 1})",
                    "keep one of them; names must be unique",
                )
            if allowed is not None and key not in allowed:
                raise self.fail(
                    key_node,
                    where,
                    f"unknown key {key!r}",
                    f"use one of: {', '.join(sorted(allowed))} (check the spelling)",
                )
            out[key] = (key_node, value_node)
        for key in required:
            if key not in out:
                raise self.fail(
                    owner or node,
                    _join(path, key),
                    f"missing required field {key!r}",
                    f"add `{key}:` to {path or 'the top level'}",
                )
        return out

    def scalar(self, leaf: _Leaf) -> Any:
        if not isinstance(leaf.node, yaml.ScalarNode):
            raise self.fail(
                leaf.node,
                leaf.path,
                f"expected a single value, got {_kind(leaf.node)}",
                "write a plain value on this line",
            )
        try:
            return self._constructor.construct_object(leaf.node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            raise self.fail(
                leaf.node, leaf.path, f"unreadable value {leaf.node.value!r}", "write a plain number or name"
            ) from exc

    def number(self, leaf: _Leaf) -> float:
        value = self.scalar(leaf)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(leaf.node, leaf.path, f"expected a number, got {value!r}", "write a number such as 120")
        try:
            number = float(value)
        except OverflowError as exc:
            raise self.fail(leaf.node, leaf.path, "number too large", "write a realistic number") from exc
        if not math.isfinite(number):
            raise self.fail(
                leaf.node,
                leaf.path,
                f"{leaf.node.value} is not a finite number",
                "write a real threshold such as 120, not .nan or .inf",
            )
        return number

    def duration(self, leaf: _Leaf) -> float:
        value = self.scalar(leaf)
        if isinstance(value, str):
            match = _DURATION_RE.fullmatch(value)
            if match is None:
                raise self.fail(leaf.node, leaf.path, f"{value!r} is not a duration", _DURATION_HINT)
            return float(match.group(1)) * _UNIT_S[match.group(2)]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(leaf.node, leaf.path, f"expected a duration, got {value!r}", _DURATION_HINT)
        try:
            seconds = float(value)
        except OverflowError as exc:
            raise self.fail(leaf.node, leaf.path, "duration too large", _DURATION_HINT) from exc
        if not math.isfinite(seconds) or seconds < 0:
            raise self.fail(
                leaf.node,
                leaf.path,
                f"duration {value!r} is negative or not finite",
                "write a duration of zero or more, " + _DURATION_HINT,
            )
        return seconds

    def optional_duration(self, leaf: _Leaf) -> float | None:
        return None if self.scalar(leaf) is None else self.duration(leaf)

    def choice(self, leaf: _Leaf, options: tuple[str, ...], what: str) -> str:
        value = self.scalar(leaf)
        if not isinstance(value, str) or value not in options:
            raise self.fail(leaf.node, leaf.path, f"unknown {what} {value!r}", f"use one of: {', '.join(options)}")
        return value

    def text(self, leaf: _Leaf) -> str:
        value = self.scalar(leaf)
        if not isinstance(value, str):
            raise self.fail(leaf.node, leaf.path, f"expected text, got {value!r}", "put the text in quotes")
        return value

    def boolean(self, leaf: _Leaf) -> bool:
        value = self.scalar(leaf)
        if not isinstance(value, bool):
            raise self.fail(leaf.node, leaf.path, f"expected true or false, got {value!r}", "write true or false")
        return value

    # -- document -----------------------------------------------------------------------------

    def ruleset(self, root: yaml.Node) -> RuleSet:
        top = self.mapping(root, "", _ROOT_KEYS, required=("version", "rules"))
        self.version(_Leaf("version", top["version"][1]))
        defaults = self.raw_fields(top["defaults"][1], "defaults", _DEFAULT_KEYS) if "defaults" in top else {}
        rules_node = top["rules"][1]
        entries = self.mapping(rules_node, "rules")
        if not entries:
            raise self.fail(rules_node, "rules", "no rules defined", "define at least one rule under `rules:`")
        raws = {name: self.raw_rule(value, f"rules.{name}", key) for name, (key, value) in entries.items()}
        rules = tuple(self.build(name, raw, defaults) for name, raw in raws.items())
        patient_rules = self.patients(top["patients"][1], raws, defaults) if "patients" in top else {}
        try:
            return RuleSet(rules=rules, patient_rules=patient_rules, version=SUPPORTED_VERSION)
        except RuleValidationError as exc:  # defensive: the checks above should have caught it
            raise self.fail(root, exc.field, exc.problem, exc.hint) from exc

    def version(self, leaf: _Leaf) -> None:
        value = self.scalar(leaf)
        if value != SUPPORTED_VERSION or isinstance(value, bool):
            raise self.fail(
                leaf.node,
                "version",
                f"unsupported version {value!r}; this rpm reads version {SUPPORTED_VERSION}",
                f"write `version: {SUPPORTED_VERSION}` and follow the default file's format",
            )

    def raw_fields(
        self,
        node: yaml.Node,
        path: str,
        allowed: set[str],
        required: tuple[str, ...] = (),
        owner: yaml.Node | None = None,
    ) -> _Raw:
        entries = self.mapping(node, path, allowed, required, owner)
        return {k: _Leaf(_join(path, k), v) for k, (_, v) in entries.items()}

    def raw_rule(self, node: yaml.Node, path: str, key_node: yaml.Node, *, override: str | None = None) -> _Raw:
        """A rule's fields as leaves (mappings nested), checking keys only.

        ``override`` is the type of the rule being overridden (``None``: a rule definition).
        """
        entries = self.mapping(node, path, owner=key_node)
        if override is None:
            if "type" not in entries:
                raise self.fail(key_node, _join(path, "type"), "missing required field 'type'", _TYPE_HINT)
            kind = self.rule_type(_Leaf(_join(path, "type"), entries["type"][1]))
        else:
            kind = override
        allowed = _COMMON_KEYS | _TYPE_KEYS[kind]
        for key, (key_node_, _) in entries.items():
            if key not in allowed:
                raise self.fail(
                    key_node_,
                    _join(path, key),
                    f"unknown key {key!r} for a {kind} rule",
                    f"use one of: {', '.join(sorted(allowed))} (check the spelling)",
                )
        for key in () if override else _REQUIRED[kind]:
            if key not in entries:
                raise self.fail(
                    key_node, _join(path, key), f"missing required field {key!r}", f"add `{key}:` to {path}"
                )
        raw: _Raw = {"name": _Leaf(_join(path, "name"), key_node), _SELF: _Leaf(path, key_node), _KIND: kind}
        for key, (key_node_, value) in entries.items():
            where = _join(path, key)
            if override and key in _ALWAYS_FIXED | _FIXED_KEYS.get(kind, set()):
                raise self.fail(
                    key_node_,
                    where,
                    f"a per-patient override cannot change {key!r}",
                    "define a separate rule instead, and disable the default one for this patient",
                )
            raw[key] = self.raw_field(kind, key, value, where, key_node_, partial=override is not None)
        return raw

    def raw_field(self, kind: str, key: str, value: yaml.Node, where: str, owner: yaml.Node, *, partial: bool) -> Any:
        """One field of a rule: a leaf, or nested leaves for the mappings."""
        if key == "levels":
            return self.raw_levels(value, where, owner, kind=kind, override=partial)
        if key == "clear":
            allowed = {"for"} if kind == "rhythm" else {"threshold", "for"}
            needed: tuple[str, ...] = () if partial or kind == "rhythm" else ("threshold",)
            return self.raw_fields(value, where, allowed, needed, owner)
        if key in _NESTED_KEYS:
            required = tuple(sorted(_NESTED_KEYS[key])) if key == "flapping" and not partial else ()
            return self.raw_fields(value, where, _NESTED_KEYS[key], required, owner)
        if key == "schedule":
            return self.raw_schedule(kind, value, where)
        return _Leaf(where, value)

    def raw_schedule(self, kind: str, node: yaml.Node, path: str) -> dict[str, _Raw]:
        """Periods by name; their levels and clearing condition are partial (merged with the rule's)."""
        out: dict[str, _Raw] = {}
        for name, (key_node, value) in self.mapping(node, path).items():
            where = _join(path, name)
            entries = self.mapping(value, where, _PERIOD_KEYS, owner=key_node)
            period: _Raw = {_SELF: _Leaf(where, key_node)}
            for key, (key_node_, value_) in entries.items():
                if key in ("levels", "clear"):
                    period[key] = self.raw_field(kind, key, value_, _join(where, key), key_node_, partial=True)
                else:
                    period[key] = _Leaf(_join(where, key), value_)
            out[name] = period
        return out

    def raw_levels(
        self, node: yaml.Node, path: str, owner: yaml.Node, *, kind: str, override: bool
    ) -> dict[str, _Raw | None]:
        entries = self.mapping(node, path, set(SEVERITY_NAMES))
        if not entries and not override:
            raise self.fail(owner, path, "no levels", "add at least one of info, warning, critical")
        allowed = _LEVEL_KEYS.get(kind, _SIGNAL_LEVEL_KEYS)
        out: dict[str, _Raw | None] = {}
        for severity, (severity_key, value) in entries.items():
            where = _join(path, severity)
            is_null = isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null"
            if is_null and override:
                out[severity] = None  # an override removes this level
                continue
            required = () if override else _LEVEL_REQUIRED.get(kind, ("threshold",))
            fields = self.raw_fields(value, where, allowed, required, severity_key)
            fields[_SELF] = _Leaf(where, severity_key)
            out[severity] = fields
        return out

    def rule_type(self, leaf: _Leaf) -> str:
        return self.choice(leaf, tuple(RULE_TYPES), "rule type")

    # -- building the models -------------------------------------------------------------------

    def build(self, name: str, raw: _Raw, defaults: _Raw, patient: str | None = None) -> Rule:
        """The rule model of ``raw`` (defaults applied); model errors mapped to their line."""
        build = _Build(self, name, raw, defaults)
        try:
            return build.staleness() if raw[_KIND] == "staleness" else build.signal()
        except RuleValidationError as exc:
            leaf = build.leaves.get(exc.field) or _nearest(build.leaves, exc.field) or raw[_SELF]
            note = f" (in the override for patient {patient})" if patient else ""
            raise self.fail(leaf.node, leaf.path, exc.problem + note, exc.hint) from exc

    def integer(self, leaf: _Leaf) -> int:
        value = self.scalar(leaf)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(leaf.node, leaf.path, f"expected a whole number, got {value!r}", "write e.g. 3")
        return int(value)

    def pair(self, leaf: _Leaf) -> tuple[float, float]:
        node = leaf.node
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 2:
            raise self.fail(node, leaf.path, f"expected [low, high], got {_kind(node)}", "write e.g. [0.54, 0.77]")
        low, high = (self.number(_Leaf(leaf.path, item)) for item in node.value)
        return low, high

    # -- per-patient overrides -----------------------------------------------------------------

    def patients(self, node: yaml.Node, raws: dict[str, _Raw], defaults: _Raw) -> dict[str, dict[str, Rule]]:
        out: dict[str, dict[str, Rule]] = {}
        for patient, (key_node, value) in self.mapping(node, "patients").items():
            where = f"patients.{patient}"
            if not is_valid_id(patient):
                raise self.fail(
                    key_node,
                    where,
                    f"{patient!r} is not a valid patient id",
                    "use the id the patient's devices publish under ([A-Za-z0-9_.:-], up to 64)",
                )
            entries = self.mapping(value, where, {"rules"}, required=("rules",))
            overrides: dict[str, Rule] = {}
            for name, (rule_key, rule_node) in self.mapping(entries["rules"][1], f"{where}.rules").items():
                path = f"{where}.rules.{name}"
                if name not in raws:
                    raise self.fail(
                        rule_key, path, f"override of unknown rule {name!r}", f"use one of: {', '.join(raws)}"
                    )
                partial = self.raw_rule(rule_node, path, rule_key, override=raws[name][_KIND])
                overrides[name] = self.build(name, _merge(raws[name], partial), defaults, patient)
            out[patient] = overrides
        return out


def _merge(base: _Raw, override: _Raw) -> _Raw:
    """``base`` with the fields of ``override`` replacing it; nested mappings (levels, clear, gate,
    flapping, schedule periods) merge field by field, and a ``None`` level removes that level."""
    merged = dict(base)
    for key, value in override.items():
        if key in ("name", _KIND):
            continue
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nearest(leaves: dict[str, _Leaf], field_path: str) -> _Leaf | None:
    """The leaf of the closest enclosing field (``levels.warning`` for ``levels.warning.for``)."""
    while "." in field_path:
        field_path = field_path.rsplit(".", 1)[0]
        for key, leaf in leaves.items():
            if key.startswith(field_path + "."):
                return leaf
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


class _Build:
    """Builds one rule model from its raw leaves, remembering which leaf each model field came from."""

    def __init__(self, parser: _Parser, name: str, raw: _Raw, defaults: _Raw) -> None:
        self.p = parser
        self.name = name
        self.raw = raw
        self.defaults = defaults
        self.kind: str = raw[_KIND]
        self.leaves: dict[str, _Leaf] = {"name": raw["name"]}

    def pick(self, key: str, convert: Callable[[_Leaf], T], fallback: T, *, field: str | None = None) -> T:
        """The rule's own value of ``key``, else the file default, else ``fallback``."""
        leaf = self.raw.get(key) or self.defaults.get(key)
        if leaf is None:
            return fallback
        self.leaves[field or key] = leaf
        return convert(leaf)

    def nested(self, group: str, key: str, convert: Callable[[_Leaf], T], fallback: T) -> T:
        leaf = self.raw.get(group, {}).get(key)
        if leaf is None:
            return fallback
        self.leaves[f"{group}.{key}"] = leaf
        return convert(leaf)

    def common(self) -> dict[str, Any]:
        p = self.p
        self.leaves["metric"] = self.raw["metric"]
        return {
            "name": self.name,
            "metric": p.choice(self.raw["metric"], METRIC_NAMES, "metric"),
            "cooldown_s": self.pick("cooldown", p.duration, 0.0),
            "enabled": self.pick("enabled", p.boolean, True),
            "description": self.pick("description", p.text, ""),
            "device_prefix": self.pick("device_prefix", p.text, None),
            "exclude_device_prefix": self.pick("exclude_device_prefix", p.text, None),
        }

    # -- signal rules ------------------------------------------------------------------------------

    def signal(self) -> ThresholdRule:
        p, raw, kind = self.p, self.raw, self.kind
        fields = self.common()
        if kind == "rhythm":
            direction = Direction.ABOVE
        else:
            self.leaves["direction"] = raw["direction"]
            direction = Direction(p.choice(raw["direction"], ("above", "below"), "direction"))
        escalate = self.pick("escalate_after", p.optional_duration, None)
        levels = self.levels(raw["levels"], "levels", escalate)
        clear = raw.get("clear", {})
        clear_threshold = self.nested("clear", "threshold", p.number, _RHYTHM_THRESHOLD)
        fields |= {
            "direction": direction,
            "levels": levels,
            "clear_threshold": clear_threshold,
            "clear_for_s": self.nested("clear", "for", p.duration, 0.0),
            "max_gap_s": self.pick("max_gap", p.duration, DEFAULT_MAX_GAP_S),
            "tolerate_s": self.pick("tolerate", p.duration, 0.0),
            **({"median_of": self.pick("median_of", p.integer, 1)} if kind == "threshold" else {}),
            "schedule": self.schedule(escalate),
            "flapping": self.flapping(),
        }
        del clear
        return RULE_TYPES[kind](**fields, **self.extras())  # type: ignore[return-value]

    def levels(
        self, raw_levels: dict[str, _Raw | None], where: str, escalate: float | None
    ) -> tuple[ThresholdLevel, ...]:
        built = [self.level(sev, lv, f"{where}.{sev}", escalate) for sev, lv in raw_levels.items() if lv is not None]
        if not built:
            own = self.raw[_SELF]
            raise self.p.fail(
                own.node, _join(own.path, where), "no levels left", "keep at least one of info, warning, critical"
            )
        return tuple(sorted(built, key=lambda lv: lv.severity))

    def level(self, severity: str, raw: _Raw, where: str, escalate: float | None) -> ThresholdLevel:
        p = self.p
        for key, leaf in raw.items():
            if key != _SELF:
                self.leaves[f"{where}.{key}"] = leaf
        if self.kind == "rhythm":
            threshold = _RHYTHM_THRESHOLD
        elif "threshold" not in raw:
            own = raw[_SELF]
            raise p.fail(
                own.node,
                _join(own.path, "threshold"),
                f"missing required field 'threshold' in level {severity}",
                f"add `{severity}: {{threshold: N, for: D}}`",
            )
        else:
            threshold = p.number(raw["threshold"])
        return ThresholdLevel(
            severity=Severity.from_label(severity),
            threshold=threshold,
            for_s=p.duration(raw["for"]) if "for" in raw else 0.0,
            escalate_after_s=p.optional_duration(raw["escalate_after"]) if "escalate_after" in raw else escalate,
        )

    def schedule(self, escalate: float | None) -> tuple[Period, ...]:
        p = self.p
        periods = []
        for name, raw in self.raw.get("schedule", {}).items():
            where = f"schedule.{name}"
            for key in ("from", "to", "tz"):
                if key in raw:
                    self.leaves[f"{where}.{key}"] = raw[key]
            for key in ("from", "to"):
                if key not in raw:
                    own = raw[_SELF]
                    raise p.fail(
                        own.node, _join(own.path, key), f"missing required field {key!r}", 'write e.g. from: "22:00"'
                    )
            levels = None
            if "levels" in raw:
                merged = _merge({"levels": self.raw["levels"]}, {"levels": raw["levels"]})["levels"]
                levels = self.levels(merged, f"{where}.levels", escalate)
            clear = raw.get("clear", {})
            for key, leaf in clear.items():
                self.leaves[f"{where}.clear.{key}"] = leaf
            periods.append(
                Period(
                    name=name,
                    start_min=parse_clock(f"{where}.from", p.text(raw["from"])),
                    end_min=parse_clock(f"{where}.to", p.text(raw["to"])),
                    tz=p.text(raw["tz"]) if "tz" in raw else "UTC",
                    levels=levels,
                    clear_threshold=p.number(clear["threshold"]) if "threshold" in clear else None,
                    clear_for_s=p.duration(clear["for"]) if "for" in clear else None,
                )
            )
        return tuple(periods)

    def flapping(self) -> Flapping | None:
        if "flapping" not in self.raw:
            return None
        p = self.p
        return Flapping(
            raises=self.nested("flapping", "raises", p.integer, 0),
            within_s=self.nested("flapping", "within", p.duration, 0.0),
            hold_s=self.nested("flapping", "hold", p.duration, 0.0),
        )

    def extras(self) -> dict[str, Any]:
        """Each type's own fields (model field names; errors name the YAML key)."""
        p, kind = self.p, self.kind
        if kind == "rate":
            return {
                "consecutive": self.pick("consecutive", p.integer, 3),
                "gate_below": self.nested("gate", "below", p.number, None),
                "gate_above": self.nested("gate", "above", p.number, None),
            }
        if kind == "forecast":
            return {
                "model": self.pick("model", p.text, "damped_trend"),
                "horizon_s": self.pick("horizon", p.duration, 1200.0),
                "window_s": self.pick("window", p.duration, 1500.0),
                "damping_s": self.pick("damping", p.duration, 1200.0),
                "min_points": self.pick("min_points", p.integer, 3),
                "confirm": self.pick("confirm", p.number, 1.0),
            }
        if kind == "baseline":
            return {
                "block_s": self.pick("block", p.duration, 3600.0),
                "window_s": self.pick("window", p.duration, 86400.0),
                "min_blocks": self.pick("min_blocks", p.integer, 12),
                "min_scale": self.pick("min_scale", p.number, 5.0),
            }
        if kind == "rhythm":
            low, high = self.pick("tpr", p.pair, (0.54, 0.77))
            return {
                "window_beats": self.pick("window", p.integer, 128),
                "every_beats": self.pick("every", p.integer, 8),
                "votes": self.pick("votes", p.integer, 4),
                "trim_beats": self.pick("trim", p.integer, 8),
                "nrmssd_min": self.pick("nrmssd", p.number, 0.1),
                "entropy_min": self.pick("entropy", p.number, 0.7),
                "tpr_low": low,
                "tpr_high": high,
                "method": self.pick("method", lambda leaf: p.choice(leaf, RhythmRule.METHODS, "method"), "dash"),
            }
        return {}

    # -- staleness -----------------------------------------------------------------------------------

    def staleness(self) -> StalenessRule:
        p = self.p
        fields = self.common()
        escalate = self.pick("escalate_after", p.optional_duration, None)
        levels = []
        for severity, raw in self.raw["levels"].items():
            if raw is None:
                continue
            where = f"levels.{severity}"
            for key, leaf in raw.items():
                if key != _SELF:
                    self.leaves[f"{where}.{key}"] = leaf
            if "after" not in raw:
                own = raw[_SELF]
                raise p.fail(
                    own.node,
                    _join(own.path, "after"),
                    f"missing 'after' in level {severity}",
                    f"add `{severity}: {{after: 30m}}`",
                )
            levels.append(
                StaleLevel(
                    severity=Severity.from_label(severity),
                    after_s=p.duration(raw["after"]),
                    escalate_after_s=p.optional_duration(raw["escalate_after"])
                    if "escalate_after" in raw
                    else escalate,
                )
            )
        if not levels:
            own = self.raw[_SELF]
            raise p.fail(own.node, _join(own.path, "levels"), "no levels left", "keep at least one level")
        return StalenessRule(**fields, levels=tuple(sorted(levels, key=lambda lv: lv.severity)))
