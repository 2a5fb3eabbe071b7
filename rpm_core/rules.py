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
        type: threshold                 # discriminator; rate, forecast, staleness, rhythm, baseline to come
        metric: heart_rate | rr_interval | glucose
        direction: above | below
        levels: {info|warning|critical: {threshold: N, for: D, escalate_after: D|null}}
        clear: {threshold: N, for: D}
        max_gap: D, cooldown: D, escalate_after: D|null, enabled: bool, description: str
    patients:
      <patient id>: {rules: {<name>: <any subset of the rule's fields but type/metric/direction>}}
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
    PLANNED_RULE_TYPES,
    Direction,
    Rule,
    RuleSet,
    Severity,
    ThresholdLevel,
    ThresholdRule,
)
from rpm_core.errors import RulesError
from rpm_core.wire import is_valid_id

_LOGGER = logging.getLogger(__name__)

SUPPORTED_VERSION: Final = 1
DEFAULT_RULES_FILE: Final = "alert_rules.yaml"

_ROOT_KEYS: Final = {"version", "defaults", "rules", "patients"}
_DEFAULT_KEYS: Final = {"max_gap", "cooldown", "escalate_after"}
_RULE_KEYS: Final = {
    "type",
    "metric",
    "direction",
    "description",
    "levels",
    "clear",
    "max_gap",
    "cooldown",
    "escalate_after",
    "enabled",
}
_FIXED_KEYS: Final = {"type", "metric", "direction"}  # not overridable per patient
_LEVEL_KEYS: Final = {"threshold", "for", "escalate_after"}
_CLEAR_KEYS: Final = {"threshold", "for"}
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
    return 0


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
        lines.append(f"{rule.name} ({rule.type} on {rule.metric}{state}){about}")
    elif not rule.enabled:
        lines.append("  DISABLED for this patient")
    unit = METRIC_UNITS[rule.metric]
    op, back = (">", "<=") if rule.direction is Direction.ABOVE else ("<", ">=")
    lines.extend(
        f"  {lv.severity.label:<8} when {rule.metric} {op} {lv.threshold:g} {unit}{_for(lv.for_s)}; {_escalation(lv)}"
        for lv in rule.levels
    )
    lines.append(f"  clears   when {rule.metric} {back} {rule.clear_threshold:g} {unit}{_for(rule.clear_for_s)}")
    cooldown = (
        f"no new episode for {format_duration(rule.cooldown_s)} after clearing" if rule.cooldown_s else "no cooldown"
    )
    lines.append(f"  gaps over {format_duration(rule.max_gap_s)} restart the clocks; {cooldown}")
    return "\n".join(lines)


def _escalation(level: ThresholdLevel) -> str:
    if level.escalate_after_s is None:
        return "never escalates"
    return f"escalates if unacknowledged for {format_duration(level.escalate_after_s)}"


def _for(seconds: float) -> str:
    return f" for {format_duration(seconds)}" if seconds else ""


# -- YAML nodes ------------------------------------------------------------------------------------


def _compose(text: str, source: str) -> yaml.Node:
    """The YAML node tree of ``text`` (line numbers kept), translating PyYAML's errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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

    def raw_fields(self, node: yaml.Node, path: str, allowed: set[str]) -> _Raw:
        return {k: _Leaf(_join(path, k), v) for k, (_, v) in self.mapping(node, path, allowed).items()}

    def raw_rule(self, node: yaml.Node, path: str, key_node: yaml.Node, *, override: bool = False) -> _Raw:
        """A rule's fields as leaves (``levels``/``clear`` nested), checking keys only."""
        required = () if override else ("type", "metric", "direction", "levels", "clear")
        entries = self.mapping(node, path, _RULE_KEYS, required, owner=key_node)
        raw: _Raw = {"name": _Leaf(_join(path, "name"), key_node), _SELF: _Leaf(path, key_node)}
        for key, (key_node_, value) in entries.items():
            where = _join(path, key)
            if override and key in _FIXED_KEYS:
                raise self.fail(
                    key_node_,
                    where,
                    f"a per-patient override cannot change {key!r}",
                    "define a separate rule instead, and disable the default one for this patient",
                )
            if key == "levels":
                raw[key] = self.raw_levels(value, where, key_node_, override=override)
            elif key == "clear":
                needed = () if override else ("threshold",)
                raw[key] = {
                    k: _Leaf(_join(where, k), v)
                    for k, (_, v) in self.mapping(value, where, _CLEAR_KEYS, needed, owner=key_node_).items()
                }
            else:
                raw[key] = _Leaf(where, value)
        if "type" in raw:
            self.rule_type(raw["type"])
        return raw

    def raw_levels(self, node: yaml.Node, path: str, owner: yaml.Node, *, override: bool) -> dict[str, _Raw | None]:
        entries = self.mapping(node, path, set(SEVERITY_NAMES))
        if not entries and not override:
            raise self.fail(owner, path, "no levels", "add at least one of info, warning, critical")
        out: dict[str, _Raw | None] = {}
        for severity, (severity_key, value) in entries.items():
            where = _join(path, severity)
            is_null = isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null"
            if is_null and override:
                out[severity] = None  # an override removes this level
                continue
            required = () if override else ("threshold",)
            entries_ = self.mapping(value, where, _LEVEL_KEYS, required, owner=severity_key)
            fields = {k: _Leaf(_join(where, k), v) for k, (_, v) in entries_.items()}
            fields[_SELF] = _Leaf(where, severity_key)
            out[severity] = fields
        return out

    def rule_type(self, leaf: _Leaf) -> str:
        value = self.scalar(leaf)
        if value in PLANNED_RULE_TYPES:
            raise self.fail(
                leaf.node,
                leaf.path,
                f"rule type {value!r} is not supported by this version yet",
                "use `type: threshold` for now",
            )
        return self.choice(leaf, (ThresholdRule.TYPE,), "rule type")

    # -- building the models -------------------------------------------------------------------

    def build(self, name: str, raw: _Raw, defaults: _Raw, patient: str | None = None) -> Rule:
        """The rule model of ``raw`` (defaults applied); model errors mapped to their line."""
        leaves: dict[str, _Leaf] = {}  # where each field came from, to put a line on a model's complaint
        try:
            return self._threshold(name, raw, defaults, leaves)
        except RuleValidationError as exc:
            leaf = leaves.get(exc.field) or _nearest(leaves, exc.field) or raw[_SELF]
            note = f" (in the override for patient {patient})" if patient else ""
            raise self.fail(leaf.node, leaf.path, exc.problem + note, exc.hint) from exc

    def _threshold(self, name: str, raw: _Raw, defaults: _Raw, leaves: dict[str, _Leaf]) -> ThresholdRule:
        leaves["name"] = raw["name"]

        def pick(key: str, convert: Callable[[_Leaf], T], fallback: T) -> T:
            leaf = raw.get(key) or defaults.get(key)
            if leaf is None:
                return fallback
            leaves[key] = leaf
            return convert(leaf)

        metric = self.choice(raw["metric"], METRIC_NAMES, "metric")
        leaves["metric"] = raw["metric"]
        direction = Direction(self.choice(raw["direction"], ("above", "below"), "direction"))
        escalate = pick("escalate_after", self.optional_duration, None)
        levels = tuple(self._level(sev, lv, escalate, leaves) for sev, lv in raw["levels"].items() if lv is not None)
        levels = tuple(sorted(levels, key=lambda lv: lv.severity))
        clear = raw["clear"]
        leaves["clear.threshold"] = clear["threshold"]
        if "for" in clear:
            leaves["clear.for"] = clear["for"]
        if not levels:
            raise self.fail(
                raw[_SELF].node,
                _join(raw[_SELF].path, "levels"),
                "no levels left",
                "keep at least one of info, warning, critical",
            )
        return ThresholdRule(
            name=name,
            metric=metric,
            direction=direction,
            levels=levels,
            clear_threshold=self.number(clear["threshold"]),
            clear_for_s=self.duration(clear["for"]) if "for" in clear else 0.0,
            max_gap_s=pick("max_gap", self.duration, DEFAULT_MAX_GAP_S),
            cooldown_s=pick("cooldown", self.duration, 0.0),
            enabled=pick("enabled", self.boolean, True),
            description=pick("description", self.text, ""),
        )

    def _level(self, severity: str, raw: _Raw, escalate: float | None, leaves: dict[str, _Leaf]) -> ThresholdLevel:
        where = f"levels.{severity}"
        own = raw[_SELF]
        if "threshold" not in raw:
            raise self.fail(
                own.node,
                _join(own.path, "threshold"),
                f"missing required field 'threshold' in level {severity}",
                f"add `{severity}: {{threshold: N, for: D}}`",
            )
        for key, leaf in raw.items():
            if key != _SELF:
                leaves[f"{where}.{key}"] = leaf
        return ThresholdLevel(
            severity=Severity.from_label(severity),
            threshold=self.number(raw["threshold"]),
            for_s=self.duration(raw["for"]) if "for" in raw else 0.0,
            escalate_after_s=self.optional_duration(raw["escalate_after"]) if "escalate_after" in raw else escalate,
        )

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
                partial = self.raw_rule(rule_node, path, rule_key, override=True)
                overrides[name] = self.build(name, _merge(raws[name], partial), defaults, patient)
            out[patient] = overrides
        return out


def _merge(base: _Raw, override: _Raw) -> _Raw:
    """``base`` with the fields of ``override`` replacing it, levels merged per severity and field."""
    merged = dict(base)
    for key, value in override.items():
        if key == "name":
            continue
        if key == "levels":
            levels = dict(base.get("levels", {}))
            for severity, fields in value.items():
                if fields is None:
                    levels.pop(severity, None)
                else:
                    levels[severity] = {**(levels.get(severity) or {}), **fields}
            merged[key] = levels
        elif key == "clear":
            merged[key] = {**base.get("clear", {}), **value}
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
