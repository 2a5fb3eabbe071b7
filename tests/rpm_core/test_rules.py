"""Loading and validating alert rules: every bad file gives a RulesError naming file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import Direction, RuleSet, Severity
from detectors.rules import RateRule
from rpm_core.errors import RpmError, RulesError
from rpm_core.rules import check_main, default_rules_path, explain, load_rules, parse_rules

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
version: 1
defaults:
  max_gap: 5m
  escalate_after: 15m
rules:
  tachy:
    type: threshold
    metric: heart_rate
    direction: above
    levels:
      warning: {threshold: 120, for: 10m}
      critical: {threshold: 150, for: 2m, escalate_after: 5m}
    clear: {threshold: 110, for: 5m}
    cooldown: 10m
  low:
    type: threshold
    metric: glucose
    direction: below
    levels:
      critical: {threshold: 54, for: 900}
    clear: {threshold: 70, for: 15 min}
    max_gap: 20m
    escalate_after: null
"""


def line_of(doc: str, text: str) -> int:
    """1-based line of the first line containing ``text``."""
    return next(i for i, line in enumerate(doc.splitlines(), 1) if text in line)


def error_of(doc: str) -> RulesError:
    with pytest.raises(RulesError) as info:
        parse_rules(doc, source="rules.yaml")
    return info.value


# -- the shipped rules ---------------------------------------------------------------------------


def test_default_file_loads_with_the_documented_values() -> None:
    rules = load_rules(ROOT / "alert_rules.yaml")
    assert rules.names() == (
        "glucose_low",
        "glucose_high",
        "tachycardia",
        "bradycardia",
        "glucose_meter_low",
        "glucose_above_measuring_range",
        "glucose_below_measuring_range",
        "glucose_urgent_low_soon",
        "glucose_high_soon",
        "glucose_falling_fast",
        "cgm_stale",
        "heart_rate_stale",
        "af_screening",
        "heart_rate_above_baseline",
    )
    low = rules.by_name()["glucose_low"]
    assert low.direction is Direction.BELOW
    assert [(lv.severity, lv.threshold, lv.for_s) for lv in low.levels] == [
        (Severity.WARNING, 70, 0),
        (Severity.CRITICAL, 54, 0),
    ]
    assert (low.clear_threshold, low.clear_for_s) == (70, 2700)
    # A meter reading is glucose_meter_low's alone; any other glucose device stays watched.
    assert (low.device_prefix, low.exclude_device_prefix) == (None, "bgm-")
    assert rules.by_name()["glucose_meter_low"].device_prefix == "bgm-"
    falling = rules.by_name()["glucose_falling_fast"]
    assert isinstance(falling, RateRule)
    assert (falling.gate_below, falling.levels[0].threshold, falling.consecutive) == (115, -2.5, 3)
    high = rules.by_name()["glucose_high"]
    assert [(lv.severity, lv.threshold) for lv in high.levels] == [(Severity.INFO, 180), (Severity.WARNING, 250)]
    tachy = rules.by_name()["tachycardia"]
    assert [(lv.threshold, lv.for_s) for lv in tachy.levels] == [(120, 600), (150, 120)]
    brady = rules.by_name()["bradycardia"]
    assert [(lv.threshold, lv.for_s) for lv in brady.levels] == [(50, 600), (40, 120)]
    # a meter's "HI"/"LO" (issue 14): critical at once, whatever its limit
    for name, direction, threshold in (("glucose_above_measuring_range", Direction.ABOVE, 600),
                                       ("glucose_below_measuring_range", Direction.BELOW, 20)):
        rule = rules.by_name()[name]
        assert rule.direction is direction
        assert [(lv.severity, lv.threshold, lv.for_s) for lv in rule.levels] == [(Severity.CRITICAL, threshold, 0)]


def test_packaged_default_is_a_byte_identical_copy_of_the_root_file() -> None:
    assert default_rules_path().read_bytes() == (ROOT / "alert_rules.yaml").read_bytes()


def test_bare_default_name_falls_back_to_the_packaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_rules("alert_rules.yaml").names() == load_rules(default_rules_path()).names()


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "rules.yaml"
    with pytest.raises(RulesError, match=str(missing)):
        load_rules(missing)


def test_errors_are_rpm_and_value_errors() -> None:
    assert issubclass(RulesError, RpmError) and issubclass(RulesError, ValueError)


def test_explain_describes_every_rule_and_override() -> None:
    doc = VALID + "patients:\n  p0001:\n    rules:\n      tachy:\n        levels: {warning: {threshold: 130}}\n"
    text = explain(parse_rules(doc))
    assert "tachy (threshold on heart_rate)" in text
    assert "warning  when heart_rate > 120 bpm for 10 min; escalates if unacknowledged for 15 min" in text
    assert "clears   when glucose >= 70 mg/dL for 15 min" in text
    assert "patient p0001 overrides tachy:" in text and "> 130 bpm" in text


def test_check_main_prints_the_explanation(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(str(ROOT / "alert_rules.yaml")) == 0
    out = capsys.readouterr().out
    assert "valid (version 1, 14 rules)" in out and "glucose_low" in out


def test_check_main_warns_when_a_glucose_lo_would_page_nobody(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """glucose_below_measuring_range is off by default (a LO pages once, through glucose_low or
    glucose_meter_low): a patient whose low rule is disabled would get no page at all for a LO,
    which a valid file does not show. `rpm rules check` says so, per patient and kind of device."""
    text = (ROOT / "alert_rules.yaml").read_text()
    assert check_main(str(ROOT / "alert_rules.yaml")) == 0
    assert "warning:" not in capsys.readouterr().out, "the defaults page every LO"
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace("patients: {}", "patients:\n  p7:\n    rules:\n      glucose_low: {enabled: false}\n"
                                 "  p8:\n    rules:\n      glucose_low: {enabled: false}\n"
                                 "      glucose_below_measuring_range: {enabled: true}\n"))
    assert check_main(str(path)) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: patient p7: a glucose LO from a CGM or other glucose device pages nobody (no "
                        "enabled below-threshold glucose rule takes it); enable glucose_below_measuring_range for "
                        "them, or the low rule you disabled"]


def test_check_main_reports_errors_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("threshold: 120,", "threshold: abc,"))
    assert check_main(str(bad)) == 1
    err = capsys.readouterr().err
    assert f"{bad}:11" in err and "rules.tachy.levels.warning.threshold" in err and "Fix:" in err


# -- the schema ------------------------------------------------------------------------------------


def test_valid_document_parses_durations_and_defaults() -> None:
    rules = parse_rules(VALID)
    tachy, low = rules.rules
    assert tachy.max_gap_s == 300 and tachy.cooldown_s == 600
    assert [lv.escalate_after_s for lv in tachy.levels] == [900, 300]
    assert low.max_gap_s == 1200 and low.clear_for_s == 900 and low.levels[0].for_s == 900
    assert low.levels[0].escalate_after_s is None


def test_partial_per_patient_overrides() -> None:
    doc = VALID + textwrap.dedent(
        """\
        patients:
          p0001:
            rules:
              tachy:
                levels:
                  warning: {threshold: 130}
                  critical: null
                cooldown: 0s
              low: {enabled: false}
        """
    )
    rules = parse_rules(doc)
    tachy = rules.rule_for("p0001", "tachy")
    assert [(lv.severity, lv.threshold, lv.for_s) for lv in tachy.levels] == [(Severity.WARNING, 130, 600)]
    assert tachy.cooldown_s == 0 and tachy.clear_threshold == 110
    assert rules.rule_for("p0001", "low").enabled is False
    assert rules.rule_for("p0002", "tachy") == rules.by_name()["tachy"]


def _case(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new, 1)


BAD_CASES = {
    # PyYAML notices the unclosed bracket on the next line; the message names the line it opened on.
    "bad yaml": (_case("    cooldown: 10m", "    cooldown: [10m"), "  low:", "(document)"),
    "wrong type": (
        _case("threshold: 120,", "threshold: abc,"),
        "threshold: abc",
        "rules.tachy.levels.warning.threshold",
    ),
    "unknown key": (_case("    cooldown: 10m", "    cooldwn: 10m"), "cooldwn", "rules.tachy.cooldwn"),
    "missing field": (_case("    metric: heart_rate\n", ""), "  tachy:", "rules.tachy.metric"),
    "nan threshold": (
        _case("threshold: 120,", "threshold: .nan,"),
        "threshold: .nan",
        "rules.tachy.levels.warning.threshold",
    ),
    "inverted hysteresis": (
        _case("{threshold: 110, for: 5m}", "{threshold: 125, for: 5m}"),
        "threshold: 125",
        "rules.tachy.clear.threshold",
    ),
    "negative duration": (
        _case("threshold: 120, for: 10m", "threshold: 120, for: -60"),
        "for: -60",
        "rules.tachy.levels.warning.for",
    ),
    "bad duration text": (_case("for: 10m}", "for: 10 minutes}"), "10 minutes", "rules.tachy.levels.warning.for"),
    "unknown metric": (_case("metric: heart_rate", "metric: spo2"), "spo2", "rules.tachy.metric"),
    "duplicate names": (VALID.replace("  low:", "  tachy:  # again"), "# again", "rules.tachy"),
    "levels out of order": (
        _case("threshold: 150,", "threshold: 100,"),
        "threshold: 100",
        "rules.tachy.levels.critical.threshold",
    ),
    "zero max gap": (_case("max_gap: 20m", "max_gap: 0"), "max_gap: 0", "rules.low.max_gap"),
    "bad default": (_case("  max_gap: 5m", "  max_gap: 0s"), "  max_gap: 0s", "defaults.max_gap"),
    "version": (_case("version: 1", "version: 2"), "version: 2", "version"),
    "unknown type": (_case("type: threshold", "type: thresold"), "thresold", "rules.tachy.type"),
    "key of another type": (
        _case("    cooldown: 10m", "    consecutive: 3"),
        "consecutive: 3",
        "rules.tachy.consecutive",
    ),
    "unknown severity": (_case("      warning: {", "      urgent: {"), "urgent", "rules.tachy.levels.urgent"),
    "level without threshold": (
        _case("{threshold: 120, for: 10m}", "{for: 10m}"),
        "warning: {for",
        "rules.tachy.levels.warning.threshold",
    ),
    "bad direction": (_case("direction: above", "direction: up"), "direction: up", "rules.tachy.direction"),
    "bad rule name": (VALID.replace("  low:", "  Low Glucose:"), "Low Glucose", "rules.Low Glucose.name"),
    "rules not a mapping": ("version: 1\nrules: [a, b]\n", "rules:", "rules"),
    "boolean threshold": (
        _case("threshold: 120,", "threshold: true,"),
        "threshold: true",
        "rules.tachy.levels.warning.threshold",
    ),
    "enabled not bool": (_case("    cooldown: 10m", "    enabled: yes please"), "enabled", "rules.tachy.enabled"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_documents_name_file_line_and_field(case: str) -> None:
    doc, marker, field = BAD_CASES[case]
    err = error_of(doc)
    assert (err.file, err.field) == ("rules.yaml", field), str(err)
    assert err.line == line_of(doc, marker), str(err)
    assert str(err).startswith(f"rules.yaml:{err.line}: field {field}: "), str(err)
    assert err.hint and "Fix: " in str(err)


OVERRIDE_CASES = {
    "unknown rule": ("      nope: {cooldown: 1m}", "nope", "patients.p0001.rules.nope"),
    "fixed field": ("      tachy: {metric: glucose}", "{metric: glucose}", "patients.p0001.rules.tachy.metric"),
    "inverted by override": (
        "      tachy: {clear: {threshold: 125}}",
        "threshold: 125",
        "patients.p0001.rules.tachy.clear.threshold",
    ),
    "unknown override key": ("      tachy: {cooldwn: 1m}", "cooldwn", "patients.p0001.rules.tachy.cooldwn"),
    "all levels removed": (
        "      low: {levels: {critical: null}}",
        "      low:",
        "patients.p0001.rules.low.levels",
    ),
}


@pytest.mark.parametrize("case", sorted(OVERRIDE_CASES))
def test_bad_overrides_name_file_line_and_field(case: str) -> None:
    entry, marker, field = OVERRIDE_CASES[case]
    doc = VALID + "patients:\n  p0001:\n    rules:\n" + entry + "\n"
    err = error_of(doc)
    assert (err.field, err.line) == (field, line_of(doc, marker)), str(err)


def test_override_error_says_which_patient() -> None:
    doc = VALID + "patients:\n  p0001:\n    rules:\n      tachy: {clear: {threshold: 125}}\n"
    assert "patient p0001" in str(error_of(doc))


def test_yaml_syntax_error_names_where_the_construct_started() -> None:
    err = error_of(BAD_CASES["bad yaml"][0])
    assert f"started on line {line_of(VALID, 'cooldown: 10m')}" in str(err)


def test_invalid_patient_id() -> None:
    doc = VALID + "patients:\n  'p 1':\n    rules: {}\n"
    err = error_of(doc)
    assert (err.field, err.line) == ("patients.p 1", line_of(doc, "'p 1'"))


def test_duplicate_level_keys_are_rejected() -> None:
    doc = _case("      critical: {", "      warning: {threshold: 125}\n      critical: {")
    err = error_of(doc)
    assert err.field == "rules.tachy.levels.warning" and "duplicate" in err.problem


@pytest.mark.parametrize("doc", ["", "# only a comment\n", "42\n", "- a\n- b\n", "version: 1\n"])
def test_degenerate_documents(doc: str) -> None:
    err = error_of(doc)
    assert err.file == "rules.yaml" and err.line is not None and err.field is not None


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1 # é\n".encode("latin-1"))
    with pytest.raises(RulesError, match="UTF-8"):
        load_rules(path)


# -- fuzzing ---------------------------------------------------------------------------------------

KEYS = [
    "version",
    "defaults",
    "rules",
    "patients",
    "type",
    "metric",
    "direction",
    "levels",
    "clear",
    "threshold",
    "for",
    "escalate_after",
    "max_gap",
    "cooldown",
    "enabled",
    "description",
    "info",
    "warning",
    "critical",
    "tachy",
    "p0001",
    "heart_rate",
    "above",
    "below",
    "threshold",
    "<<",
    "",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["threshold", "heart_rate", "glucose", "above", "below", "10m", "-5m", "1.5h", "abc", "1", ""]),
    st.text(max_size=8),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), children, max_size=5),
    ),
    max_leaves=30,
)


def _mutate(base: str, edits: list[tuple[int, str]]) -> str:
    text = base
    for pos, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + 1 :]
    return text


def _parses_or_explains(doc: str) -> None:
    """A RuleSet, or a RulesError that names the file and a field; any other exception fails the test."""
    error: RulesError | None = None
    try:
        assert isinstance(parse_rules(doc), RuleSet)
    except RulesError as exc:
        error = exc
    if error is not None:
        assert error.file == "<string>" and error.field


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(tree=TREES)
def test_fuzz_random_trees_raise_only_rules_errors(tree: object) -> None:
    doc = yaml.safe_dump({"version": 1, "rules": tree} if isinstance(tree, dict) else tree)
    _parses_or_explains(doc)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(
                [
                    "",
                    " ",
                    "\n",
                    ":",
                    "-",
                    "{",
                    "}",
                    "[",
                    "]",
                    "'",
                    '"',
                    "&a ",
                    "*a",
                    "!!python/object ",
                    "0",
                    ".nan",
                    "-1",
                    "null",
                    "\t",
                    "#",
                    "warning",
                    "%",
                    "@",
                    "\x00",
                    "é",
                    "?",
                ]
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fuzz_mutated_valid_document_raises_only_rules_errors(edits: list[tuple[int, str]]) -> None:
    doc = _mutate(VALID, edits)
    _parses_or_explains(doc)


def test_control_characters_name_their_line() -> None:
    err = error_of(VALID.replace("    cooldown: 10m", "    cooldown: 10m\x07"))
    assert (err.line, err.field) == (line_of(VALID, "cooldown: 10m"), "(document)")
    assert "U+0007" in str(err)


# -- every rule type -------------------------------------------------------------------------------

TYPES = """\
version: 1
rules:
  tachy:
    type: threshold
    metric: heart_rate
    direction: above
    levels:
      warning: {threshold: 120, for: 10m}
    clear: {threshold: 110, for: 5m}
    schedule:
      night:
        from: "22:00"
        to: "07:00"
        tz: Europe/Paris
        levels:
          warning: {threshold: 100}
        clear: {threshold: 90}
    flapping: {raises: 3, within: 1h, hold: 30m}
  falling:
    type: rate
    metric: glucose
    direction: below
    consecutive: 3
    gate: {below: 120}
    levels:
      warning: {threshold: -2}
    clear: {threshold: -1}
  soon:
    type: forecast
    metric: glucose
    direction: below
    model: ar2
    horizon: 20m
    levels:
      critical: {threshold: 55}
    clear: {threshold: 70, for: 15m}
  meter:
    type: threshold
    metric: glucose
    device_prefix: gls-
    direction: below
    levels:
      critical: {threshold: 54}
    clear: {threshold: 70}
  stale:
    type: staleness
    metric: glucose
    exclude_device_prefix: bgm-
    levels:
      warning: {after: 30m}
      critical: {after: 2h, escalate_after: 10m}
  af:
    type: rhythm
    metric: rr_interval
    window: 64
    tpr: [0.5, 0.8]
    levels:
      warning: {for: 5m}
    clear: {for: 10m}
  base:
    type: baseline
    metric: heart_rate
    direction: above
    block: 1h
    window: 24h
    levels:
      warning: {threshold: 3.5, for: 30m}
    clear: {threshold: 2}
"""


def test_every_rule_type_parses() -> None:
    from detectors.rules import BaselineRule, ForecastRule, RhythmRule, StalenessRule

    rules = parse_rules(TYPES).by_name()
    tachy = rules["tachy"]
    (night,) = tachy.schedule
    assert (night.start_min, night.end_min, night.tz, night.clear_threshold) == (1320, 420, "Europe/Paris", 90)
    assert night.levels is not None and [(lv.threshold, lv.for_s) for lv in night.levels] == [(100, 600)]
    assert tachy.flapping is not None and (tachy.flapping.raises, tachy.flapping.hold_s) == (3, 1800)
    falling = rules["falling"]
    assert isinstance(falling, RateRule) and (falling.consecutive, falling.gate_below) == (3, 120)
    soon = rules["soon"]
    assert isinstance(soon, ForecastRule) and (soon.model, soon.horizon_s) == ("ar2", 1200)
    assert rules["meter"].device_prefix == "gls-"
    assert (rules["meter"].exclude_device_prefix, rules["stale"].exclude_device_prefix) == (None, "bgm-")
    stale = rules["stale"]
    assert isinstance(stale, StalenessRule) and [lv.after_s for lv in stale.levels] == [1800, 7200]
    af = rules["af"]
    assert isinstance(af, RhythmRule) and (af.window_beats, af.tpr_low, af.tpr_high) == (64, 0.5, 0.8)
    assert af.method == "dash"  # the default when a rule does not say
    assert af.levels[0].threshold == 0.5 and af.clear_for_s == 600
    assert isinstance(rules["base"], BaselineRule) and rules["base"].n_blocks == 24
    text = explain(parse_rules(TYPES))
    assert "during night (22:00-07:00 Europe/Paris)" in text and "no usable glucose for over 30 min" in text
    assert "meter (threshold on glucose from gls-* devices)" in text
    assert "stale (staleness on glucose from devices other than glucose meters (bgm-*))" in text


def _types_case(old: str, new: str) -> str:
    assert old in TYPES, old
    return TYPES.replace(old, new, 1)


TYPE_CASES = {
    "consecutive zero": (
        _types_case("consecutive: 3", "consecutive: 0"),
        "consecutive: 0",
        "rules.falling.consecutive",
    ),
    "unknown model": (_types_case("model: ar2", "model: lstm"), "model: lstm", "rules.soon.model"),
    "bad clock": (_types_case('from: "22:00"', 'from: "25:00"'), '"25:00"', "rules.tachy.schedule.night.from"),
    "bad zone": (_types_case("tz: Europe/Paris", "tz: Mars/Olympus"), "Mars/Olympus", "rules.tachy.schedule.night.tz"),
    "night inverted": (
        _types_case("clear: {threshold: 90}", "clear: {threshold: 105}"),
        "threshold: 105",
        "rules.tachy.schedule.night.clear.threshold",
    ),
    "flapping once": (_types_case("raises: 3", "raises: 1"), "raises: 1", "rules.tachy.flapping.raises"),
    "flapping partial": (_types_case("within: 1h, ", ""), "flapping:", "rules.tachy.flapping.within"),
    "staleness without after": (
        _types_case("warning: {after: 30m}", "warning: {for: 30m}"),
        "for: 30m",
        "rules.stale.levels.warning.for",
    ),
    "staleness order": (_types_case("after: 2h,", "after: 10m,"), "after: 10m", "rules.stale.levels.critical.after"),
    "rhythm threshold": (
        _types_case("warning: {for: 5m}", "warning: {threshold: 1}"),
        "{threshold: 1}",
        "rules.af.levels.warning.threshold",
    ),
    "tpr not a pair": (_types_case("tpr: [0.5, 0.8]", "tpr: 0.5"), "tpr: 0.5", "rules.af.tpr"),
    "tpr reversed": (_types_case("tpr: [0.5, 0.8]", "tpr: [0.8, 0.5]"), "tpr:", "rules.af.tpr"),
    "baseline window": (_types_case("window: 24h", "window: 90m"), "window: 90m", "rules.base.window"),
    "gate key": (_types_case("gate: {below: 120}", "gate: {under: 120}"), "under", "rules.falling.gate.under"),
    "empty prefix": (
        _types_case("device_prefix: gls-", "device_prefix: ''"),
        "device_prefix",
        "rules.meter.device_prefix",
    ),
    "missing type": (_types_case("    type: staleness\n", ""), "  stale:", "rules.stale.type"),
    "empty exclusion": (
        _types_case("exclude_device_prefix: bgm-", "exclude_device_prefix: ''"),
        "exclude_device_prefix",
        "rules.stale.exclude_device_prefix",
    ),
    "exclusion not text": (
        _types_case("exclude_device_prefix: bgm-", "exclude_device_prefix: 5"),
        "exclude_device_prefix: 5",
        "rules.stale.exclude_device_prefix",
    ),
    "exclusion a list": (
        _types_case("exclude_device_prefix: bgm-", "exclude_device_prefix: [bgm-, gls-]"),
        "exclude_device_prefix",
        "rules.stale.exclude_device_prefix",
    ),
    "include and exclude the same": (
        _types_case("device_prefix: gls-", "device_prefix: gls-\n    exclude_device_prefix: gls-"),
        "exclude_device_prefix: gls-",
        "rules.meter.exclude_device_prefix",
    ),
    "exclusion wider than the inclusion": (
        _types_case("device_prefix: gls-", "device_prefix: gls-1\n    exclude_device_prefix: gls"),
        "exclude_device_prefix: gls",
        "rules.meter.exclude_device_prefix",
    ),
}


@pytest.mark.parametrize("case", sorted(TYPE_CASES))
def test_bad_rule_types_name_file_line_and_field(case: str) -> None:
    doc, marker, field = TYPE_CASES[case]
    err = error_of(doc)
    assert (err.field, err.line) == (field, line_of(doc, marker)), str(err)
    assert err.hint


def test_device_filter_errors_say_what_is_wrong() -> None:
    same = error_of(TYPE_CASES["include and exclude the same"][0])
    assert "leaves out every gls-* device the rule takes" in str(same), str(same)
    empty = error_of(TYPE_CASES["empty exclusion"][0])
    assert "would leave out every device" in str(empty), str(empty)
    assert "expected text" in str(error_of(TYPE_CASES["exclusion not text"][0]))


@pytest.mark.parametrize(
    ("entry", "marker", "field"),
    [
        ("      soon: {model: damped_trend}", "{model: damped_trend}", "patients.p0001.rules.soon.model"),
        ("      base: {block: 2h}", "{block: 2h}", "patients.p0001.rules.base.block"),
        ("      meter: {device_prefix: cgm-}", "{device_prefix: cgm-}", "patients.p0001.rules.meter.device_prefix"),
        (
            "      stale: {exclude_device_prefix: cgm-}",
            "{exclude_device_prefix: cgm-}",
            "patients.p0001.rules.stale.exclude_device_prefix",
        ),
        (
            "      meter: {exclude_device_prefix: gls-9}",
            "{exclude_device_prefix: gls-9}",
            "patients.p0001.rules.meter.exclude_device_prefix",
        ),
    ],
)
def test_overrides_cannot_change_what_sizes_the_state(entry: str, marker: str, field: str) -> None:
    doc = TYPES + "patients:\n  p0001:\n    rules:\n" + entry + "\n"
    err = error_of(doc)
    assert (err.field, err.line) == (field, line_of(doc, marker)), str(err)


def test_per_patient_night_and_staleness_overrides() -> None:
    doc = TYPES + (
        "patients:\n  p0001:\n    rules:\n"
        "      tachy: {schedule: {night: {from: '23:30', levels: {warning: {threshold: 95}}}}}\n"
        "      stale: {enabled: false}\n"
    )
    rules = parse_rules(doc)
    (night,) = rules.rule_for("p0001", "tachy").schedule
    assert (night.start_min, night.end_min) == (1410, 420)
    assert night.levels is not None and night.levels[0].threshold == 95
    assert rules.rule_for("p0001", "stale").enabled is False


def test_rhythm_method_is_parsed_and_checked() -> None:
    from detectors.rules import RhythmRule

    model = parse_rules(_types_case("    window: 64\n", "    window: 64\n    method: model\n")).by_name()["af"]
    assert isinstance(model, RhythmRule) and model.method == "model"
    doc = _types_case("    window: 64\n", "    window: 64\n    method: neural\n")
    err = error_of(doc)
    assert err.field == "rules.af.method" and err.line == line_of(doc, "method: neural"), str(err)
    assert "neural" in str(err) and "dash, model" in str(err)


def test_default_af_screening_uses_the_learned_model() -> None:
    from detectors.rules import RhythmRule

    af = load_rules(ROOT / "alert_rules.yaml").by_name()["af_screening"]
    assert isinstance(af, RhythmRule)
    assert (af.method, af.window_beats, af.every_beats, af.votes, af.levels[0].for_s) == ("model", 64, 16, 4, 90)


@pytest.mark.parametrize("device", ["cgm-1", "bgm-1", "gls-unknown-1"])
def test_a_lo_reading_pages_once_with_the_default_rules_and_stays_one_alert(device: str) -> None:
    """A CGM's or meter's "LO" (BELOW_RANGE, the device's limit as value) raised glucose_low (or
    glucose_meter_low) *and* glucose_below_measuring_range: two critical alerts for one reading, two to
    acknowledge. One now, critical at once (level 2 hypoglycaemia, < 54 mg/dL), saying it was LO; the
    measurable lows that follow belong to it."""
    from detectors import Engine
    from detectors.const import FLAG_BELOW_RANGE
    from tests.detectors.helpers import T0, run6

    engine = Engine(load_rules(ROOT / "alert_rules.yaml"))
    lo = [("p", "glucose", T0, 40.0, FLAG_BELOW_RANGE, device)]
    events = run6(engine, lo, now=T0)
    raised = [e for e in events if e.state == "raised"]
    assert [(e.severity, e.rule) for e in raised] == [
        (Severity.CRITICAL.label, "glucose_meter_low" if device.startswith("bgm-") else "glucose_low")]
    assert "LO" in raised[0].message
    later = run6(engine, [("p", "glucose", T0 + 300 * k, v, 0, device) for k, v in enumerate([45.0, 52.0], 1)],
                 now=T0 + 600)
    assert [e for e in later if e.state == "raised"] == []
