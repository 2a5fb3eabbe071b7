"""routes.yaml: the repository's example loads; every mistake names file, line, field and fix; fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notify.errors import RoutesError
from notify.loader import load_routes, parse_routes
from notify.model import Routes
from tests.notify.helpers import ROUTES

REPO = Path(__file__).resolve().parents[2]


def test_the_repository_routes_file_is_valid() -> None:
    r = load_routes(REPO / "routes.yaml")
    assert [s.receiver for s in r.escalations["critical"].steps] == ["ward-nurses", "on-call-nurse", "physician"]
    assert [s.after_s for s in r.escalations["critical"].steps] == [0, 300, 900]
    assert r.find_route("critical") is not None
    assert r.secret_envs() == {"RPM_PAGER_SECRET", "RPM_SMTP_USER", "RPM_SMTP_PASSWORD"}
    assert r.timezone.key == "Europe/Berlin"


@pytest.mark.parametrize(("change", "line", "field", "words"), [
    (("route:\n  receiver: nurses", "route:\n  receiver: nurses\n  recevier: x"), 18, "route.recevier",
     "unknown key"),
    (("- {after: 5m, receiver: oncall}", "- {after: 5m, receiver: on-call}"), 12, "receiver", "unknown receiver"),
    (("- {after: 15m, receiver: physician}", "- {after: 4m, receiver: physician}"), 13, "after",
     "later and later"),
    (("escalation: critical", "escalation: critcal"), 21, "route.routes[0].escalation", "unknown escalation"),
    (("match: {severity: critical}", "match: {severity: urgent}"), 20, "severity", "unknown severity"),
    (("defaults: {group_wait: 10s", "defaults: {group_wait: 10 weeks"), 3, "defaults.group_wait", "not a duration"),
    (("secret_env: HOOK_SECRET}]}\n  physician", "secret_env: s3cr3t-value}]}\n  physician"), 6,
     "secret_env", "not an environment variable"),
    (("version: 1", "version: 2"), 2, "version", "unsupported version"),
    (("{type: nurse_station}", "{type: pager}"), 5, "type", "unknown channel type"),
])
def test_mistakes_name_the_file_line_field_and_fix(change: tuple[str, str], line: int, field: str,
                                                   words: str) -> None:
    old, new = change
    assert old in ROUTES
    with pytest.raises(RoutesError) as err:
        parse_routes(ROUTES.replace(old, new, 1), source="routes.yaml")
    e = err.value
    assert (e.file, e.line) == ("routes.yaml", line), str(e)
    assert field in (e.field or ""), str(e)
    assert words in str(e) and "Fix:" in str(e)


@pytest.mark.parametrize(("extra", "words"), [
    ('time_windows:\n  night: {start: "25:00", end: "07:00"}\n', "not a time of day"),
    ('time_windows:\n  night: {start: 22:00, end: "07:00", timezone: Mars/Olympus}\n', "unknown time zone"),
    ("digests:\n  fam: {receiver: nurses, daily_at: \"08:00\"}\n", "email or webhook only"),
    ("digests:\n  fam: {receiver: oncall}\n", "never goes out"),
    ("inhibit:\n  - {source: warning, targets: [warning]}\n", "its own severity"),
    ("receivers2: {}\n", "unknown key"),
])
def test_more_mistakes(extra: str, words: str) -> None:
    with pytest.raises(RoutesError, match=words):
        parse_routes(ROUTES.replace("inhibit:\n  - {source: critical, targets: [warning, info]}\n", "") + extra)


def test_unquoted_times_of_day_are_read_as_written_not_as_sexagesimal_numbers() -> None:
    r = parse_routes(ROUTES + "time_windows:\n  night: {start: 22:00, end: 07:00}\n")
    assert r.route.quiet_hours == ()
    text = ROUTES.replace("route:\n  receiver: nurses\n", "route:\n  receiver: nurses\n  quiet_hours: [night]\n")
    r = parse_routes(text + "time_windows:\n  night: {start: 22:00, end: 07:00}\n")
    (night,) = r.route.quiet_hours
    assert (night.start_min, night.end_min) == (22 * 60, 7 * 60)


def test_an_email_channel_needs_smtp_and_missing_files_are_named() -> None:
    with pytest.raises(RoutesError, match="smtp"):
        parse_routes(ROUTES.replace("{type: nurse_station}", "{type: email, to: [a@b.example]}"))
    with pytest.raises(RoutesError, match="cannot read") as err:
        load_routes("/nonexistent/routes.yaml")
    assert err.value.file == "/nonexistent/routes.yaml"


# -- fuzzing --------------------------------------------------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["critical", "nurses", "10s", "22:00", "p0001", "webhook"]))
_KEYS = st.sampled_from(["version", "route", "receivers", "escalations", "steps", "after", "receiver", "match",
                         "severity", "channels", "type", "url", "secret_env", "routes", "continue", "during",
                         "time_windows", "start", "end", "inhibit", "digests", "x"])
_DOCS = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
                     max_leaves=25)


def _valid_doc() -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load(ROUTES)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_any_text_is_a_routes_file_or_a_routes_error(text: str) -> None:
    error: RoutesError | None = None
    try:
        assert isinstance(parse_routes(text), Routes)
    except RoutesError as exc:
        error = exc
    assert error is None or (error.file == "<routes>" and error.hint), str(error)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.lists(st.sampled_from(["route", "receivers", "escalations", "inhibit", "defaults", "nurses",
                                      "critical", "steps", "channels", "routes", 0, 1]), max_size=4),
       value=_DOCS)
def test_a_valid_file_with_any_one_part_replaced_loads_or_fails_with_a_routes_error(
        path: list[object], value: object) -> None:
    doc = _valid_doc()
    node: object = doc
    for key in path[:-1]:
        nxt = node.get(key) if isinstance(node, dict) else (
            node[key] if isinstance(node, list) and isinstance(key, int) and key < len(node) else None)
        if nxt is None:
            break
        node = nxt
    last = path[-1] if path else "route"
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    text = yaml.safe_dump(doc, allow_unicode=True)
    error: RoutesError | None = None
    try:
        parse_routes(text)
    except RoutesError as exc:
        error = exc
    # valid YAML: every complaint points at a line and a field, and says how to fix it
    assert error is None or (error.line is not None and error.field and error.hint), str(error)
