"""Every parser of network input, fuzzed field by field: an otherwise valid document with one field
replaced by any JSON value (null, booleans, integers beyond 64 bits, floats, text, lists, objects,
nested) or removed. Each parser returns a valid object or raises only its own validation error;
never ``TypeError``, ``KeyError``, ``AttributeError``, ``OverflowError``, ``IndexError``.

A list as "source" once raised TypeError in the bridge (``x not in SOME_FROZENSET``) and one such
MQTT message stopped it; the same pattern was in the nurse station's alert feed, the notifier's
alert decoder and the edge agent's command decoder. The ``@example`` cases are those regressions.

The HTTP handlers themselves are fuzzed against a real server in tests/people/test_station_http.py.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detectors import Engine, StateError
from detectors.history import History
from notify.cli import _alert_from_arg, explain
from notify.router import AlertUpdate
from notify.service import influx_rows
from rpm_app.report import InfluxReader
from rpm_core import topics
from rpm_core.acks import AckDecodeError, decode_ack
from rpm_core.commands import CommandDecodeError, PatientAck, PatientMessage
from rpm_core.errors import ConfigError, ServiceError
from rpm_core.roster import default_roster
from rpm_core.technical import TechnicalAlert
from rpm_core.wire import ALL_FLAGS, METRIC_RANGES, is_valid_id
from station.nurse_station import AlertBoard, AlertFeed, sparkline_points
from station.overview import parse_overview
from stream.records import RecordError, decode_record, decode_records
from tests.detectors.helpers import all_rulesets, device_streams, json_roundtrip, run6

T = TypeVar("T")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_764_100_000.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63 - 2, max_value=2**80)
    | st.integers(max_value=-(2**63) + 2, min_value=-(2**80))
    | st.floats(allow_nan=False) | st.sampled_from([math.nan, math.inf, -math.inf]) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def dumps(doc: Any) -> bytes:
    """JSON as a hostile sender may write it: stdlib, so integers beyond 64 bits and NaN/Infinity too."""
    return json.dumps(doc, allow_nan=True).encode()


def refused(parse: Callable[..., T], *args: Any, error: type[Exception] = ValueError) -> T | None:
    """``parse(*args)``, or None when it refused with ``error`` and a reason (any other exception fails)."""
    try:
        return parse(*args)
    except error as exc:
        if not str(exc):
            raise AssertionError("a refusal without a reason") from exc
        return None


def any_field(valid: dict[str, Any], values: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[dict[str, Any]]:
    """``valid`` with one of its fields replaced by any JSON value, or removed, or with an extra one."""
    keys = sorted(valid)
    return (st.sampled_from(keys).flatmap(lambda k: values.map(lambda v: {**valid, k: v}))
            | st.sampled_from(keys).map(lambda k: {f: v for f, v in valid.items() if f != k})
            | values.map(lambda v: {**valid, "extra": v}))


# --- rpm.alert-acks (rpm_core/acks.py) -------------------------------------------------------------------

VALID_ACK = {"v": 1, "alert_id": "3f2a00aa", "patient": "p0001", "by": "Nurse Ana", "at": NOW - 5,
             "station": "north-desk"}


@FUZZ
@given(doc=any_field(VALID_ACK))
@example(doc={**VALID_ACK, "by": []})
@example(doc={**VALID_ACK, "at": 2**64 - 1})
@example(doc={**VALID_ACK, "v": [1]})
def test_fuzz_ack_fields_decode_or_raise_ack_decode_error(doc: dict[str, Any]) -> None:
    ack = refused(lambda v: decode_ack(v, key=b"p0001", now=NOW), dumps(doc), error=AckDecodeError)
    if ack is None:
        return
    assert is_valid_id(ack.alert_id) and ack.patient == "p0001" and is_valid_id(ack.station)
    assert ack.by.strip() and math.isfinite(ack.at) and ack.at <= NOW + 300


@FUZZ
@given(doc=any_field(VALID_ACK))
@example(doc={**VALID_ACK, "at": 2**53 + 1})  # accepted without a clock, read back as 2**53
@example(doc={**VALID_ACK, "at": 1e300})
def test_fuzz_ack_without_a_clock_reads_back_as_it_was_sent(doc: dict[str, Any]) -> None:
    """The worker decodes without a clock: whatever it accepts must encode back to the same ack."""
    ack = refused(decode_ack, dumps(doc), error=AckDecodeError)
    if ack is None:
        return
    assert decode_ack(bytes(ack)) == ack


# --- rpm.readings (stream/records.py: the fast column-wise path and the per-record fallback) ----------

VALID_GROUP = {"device": "hr-1", "source": "sim", "metric": ["heart_rate", "glucose"], "t": [NOW - 2, NOW - 1],
               "value": [70.0, 99], "flags": [0, 2]}
GOOD_RECORD = orjson.dumps({"v": 1, "patient": "p0002", "groups": [VALID_GROUP]})


def _one_element(column: str) -> st.SearchStrategy[dict[str, Any]]:
    """``VALID_GROUP`` with one element of a column replaced by any JSON value."""
    return st.tuples(st.integers(0, 1), json_values).map(
        lambda iv: {**VALID_GROUP, column: [iv[1] if i == iv[0] else x for i, x in enumerate(VALID_GROUP[column])]})


groups = (any_field(VALID_GROUP)
          | st.sampled_from(["metric", "t", "value", "flags"]).flatmap(_one_element))
records = (groups.map(lambda g: {"v": 1, "patient": "p0001", "groups": [g]})
           | groups.map(lambda g: {"v": 1, "groups": [{**g, "patient": "p0001"}]})
           | any_field({**VALID_GROUP, "patient": "p0001"}).map(lambda g: {"v": 1, "groups": [g]})
           | any_field({"v": 1, "patient": "p0001", "groups": [VALID_GROUP]}))


def _check_group(patient: str, metric: list[str], t: Any, value: Any, flags: Any) -> None:
    assert is_valid_id(patient) and len(metric) == len(t) == len(value) == len(flags) > 0
    assert np.isfinite(t).all() and np.isfinite(value).all()
    for m, v in zip(metric, value.tolist(), strict=True):
        lo, hi = METRIC_RANGES[m]
        assert lo <= v <= hi
    assert ((flags >= 0) & (flags & ~ALL_FLAGS == 0)).all()


@FUZZ
@given(doc=records)
@example(doc={"v": 1, "patient": "p0001", "groups": [{**VALID_GROUP, "source": []}]})
@example(doc={"v": 1, "patient": "p0001", "groups": [{**VALID_GROUP, "metric": [["heart_rate"], "glucose"]}]})
@example(doc={"v": 1, "patient": "p0001", "groups": [{**VALID_GROUP, "flags": [2**64 - 1, 0]}]})
@example(doc={"v": 1, "patient": "p0001", "groups": [{**VALID_GROUP, "t": [2**70, NOW]}]})
@example(doc={"v": 1, "patient": [], "groups": [VALID_GROUP]})
def test_fuzz_readings_record_fields_decode_or_raise_record_error(doc: dict[str, Any]) -> None:
    value = dumps(doc)
    reference = refused(decode_record, value, error=RecordError)
    for g in reference or []:
        _check_group(g.patient, g.metric, g.t, g.value, g.flags)
    # The batch decoder: the fast path alone, and beside a good record (whose columns it must keep)
    for batch in ([value], [GOOD_RECORD, value], [value, GOOD_RECORD]):
        decoded = decode_records(batch)
        assert (reference is None) == any(raw == value for raw, _ in decoded.rejected)
        assert decoded.samples == sum(len(g.t) for g in reference or []) + 2 * batch.count(GOOD_RECORD)
        for g in decoded.groups:
            _check_group(g.patient, g.metric, g.t, g.value, g.flags)


# --- MQTT commands to the patient's agent and the patient's acks (edge_agent/commands.py) ---------------

VALID_MESSAGE = {"v": 1, "type": "message", "id": "n-1", "alert_ids": ["3f2a00aa"], "severity": "critical",
                 "text": "Take 15 g of carbohydrate.", "at": NOW}
VALID_PATIENT_ACK = {"v": 1, "id": "n-1", "alert_ids": ["3f2a00aa"], "at": NOW}


@FUZZ
@given(doc=any_field(VALID_MESSAGE))
@example(doc={**VALID_MESSAGE, "severity": []})  # TypeError: unhashable type: 'list' before the fix
@example(doc={**VALID_MESSAGE, "severity": {"critical": 1}})
@example(doc={**VALID_MESSAGE, "alert_ids": [["3f2a00aa"]]})
@example(doc={**VALID_MESSAGE, "at": 2**53 + 1})  # read back as 2**53 before the range check
@example(doc={**VALID_MESSAGE, "at": 4_102_444_800})  # 2100-01-01: the first time refused
def test_fuzz_patient_message_fields_decode_or_raise_command_decode_error(doc: dict[str, Any]) -> None:
    message = refused(PatientMessage.from_bytes, dumps(doc), error=CommandDecodeError)
    if message is None:
        return
    assert message.severity in ("info", "warning", "critical") and all(is_valid_id(a) for a in message.alert_ids)
    assert PatientMessage.from_bytes(bytes(message)) == message


@FUZZ
@given(doc=any_field(VALID_PATIENT_ACK))
@example(doc={**VALID_PATIENT_ACK, "alert_ids": [{}]})
@example(doc={**VALID_PATIENT_ACK, "at": 2**64 - 1})
@example(doc={**VALID_PATIENT_ACK, "at": 2**53 + 1})
def test_fuzz_patient_ack_fields_decode_or_raise_command_decode_error(doc: dict[str, Any]) -> None:
    ack = refused(PatientAck.from_bytes, dumps(doc), error=CommandDecodeError)
    if ack is None:
        return
    assert all(is_valid_id(a) for a in ack.alert_ids) and math.isfinite(ack.at)
    assert PatientAck.from_bytes(bytes(ack)) == ack


# --- rpm.alerts: the notifier's decoder (notify/router.py) and the nurse station's feed ------------------

VALID_EVENT = {"alert_id": "3f2a00aa", "patient": "p0001", "rule": "glucose_low", "metric": "glucose",
               "severity": "critical", "state": "raised", "time": NOW, "since": NOW - 60, "value": 48.0,
               "message": "glucose_low for p0001", "by": None}
ALERT_REGRESSIONS = [{**VALID_EVENT, "severity": []}, {**VALID_EVENT, "state": {}},
                     {**VALID_EVENT, "metric": ["glucose"]}, {**VALID_EVENT, "severity": ["critical"], "state": []}]


@FUZZ
@given(doc=any_field(VALID_EVENT))
@example(doc=ALERT_REGRESSIONS[0])  # TypeError: unhashable type: 'list' stopped the notifier's consumer
@example(doc=ALERT_REGRESSIONS[1])
def test_fuzz_alert_event_fields_decode_or_raise_value_error(doc: dict[str, Any]) -> None:
    try:
        parsed = orjson.loads(dumps(doc))
    except orjson.JSONDecodeError:
        return  # NaN/Infinity: the notifier counts it as "not JSON"
    update = refused(AlertUpdate.from_doc, parsed)
    if update is None:
        return
    assert update.severity in ("info", "warning", "critical") and math.isfinite(update.since)
    assert update.state in ("raised", "cleared", "acknowledged", "escalated")


@FUZZ
@given(docs=st.lists(any_field(VALID_EVENT), min_size=1, max_size=3))
@example(docs=ALERT_REGRESSIONS)  # TypeError: unhashable type: 'list' stopped the station's alert feed
def test_fuzz_the_nurse_station_feed_applies_or_ignores_alert_records(docs: list[dict[str, Any]]) -> None:
    board = AlertBoard(ward="all", roster=default_roster({}), clock=lambda: NOW)
    feed = AlertFeed(board, bootstrap="127.0.0.1:9")  # never started: _apply is what the consumer calls
    for doc in [*docs, VALID_EVENT, *docs]:
        feed._apply(topics.ALERTS, b"p0001", dumps(doc), int(NOW * 1000))
    assert VALID_EVENT["alert_id"] in board.alerts, "a good record after bad ones is applied"
    for view in board.alerts.values():
        client = view.to_client()
        assert client["severity"] in ("info", "warning", "critical") and math.isfinite(client["raised_at"])
    orjson.dumps(board.snapshot())


VALID_TECHNICAL = TechnicalAlert(rule="tech.workers_missing", scope="", severity="critical", state="raised",
                                 time=NOW, since=NOW - 60, message="No worker is processing readings",
                                 remedy="Restart the worker service", component="worker", wards=("*",)).to_dict()


@FUZZ
@given(docs=st.lists(any_field(VALID_TECHNICAL), min_size=1, max_size=3))
@example(docs=[{**VALID_TECHNICAL, "wards": [[]]}, {**VALID_TECHNICAL, "kind": {}}, {**VALID_TECHNICAL, "state": []}])
@example(docs=[{**VALID_TECHNICAL, "patient": "p0001", "state": "acknowledged"}])
def test_fuzz_technical_alert_records_are_applied_or_ignored_and_never_pass_as_clinical(docs: list[dict[str, Any]]
                                                                                        ) -> None:
    board = AlertBoard(ward="all", roster=default_roster({}), clock=lambda: NOW)
    feed = AlertFeed(board, bootstrap="127.0.0.1:9")
    for doc in [*docs, VALID_TECHNICAL, *docs]:
        feed._apply(topics.ALERTS, None, dumps(doc), int(NOW * 1000))
    assert VALID_TECHNICAL["alert_id"] in board.alerts, "a good record after bad ones is applied"
    for view in board.alerts.values():
        client = view.to_client()
        if client["kind"] == "technical":
            assert client["metric"] == "technical" and client["state"] in ("raised", "cleared") and not client["ack"]
            assert client["rule"].startswith("tech.") and client["wards"]
        else:
            assert client["metric"] in ("heart_rate", "glucose", "rr_interval") and client["patient"]
    orjson.dumps(board.snapshot())


@FUZZ
@given(tail=st.text(max_size=30) | st.from_regex(r"\d{1,30}", fullmatch=True) | st.just("9" * 5000))
@example(tail="²")  # str.isdigit, but int() refuses it: ValueError ended the SSE stream
@example(tail="9" * 5000)  # beyond int()'s 4300 digits: ValueError
@example(tail="١")  # an Arabic-Indic one: digits, but not an id this server wrote
def test_fuzz_sse_resume_ids_resume_or_start_over(tail: str) -> None:
    board = AlertBoard(ward="all", roster=default_roster({}), clock=lambda: NOW)
    board.apply_alert(VALID_EVENT)
    assert board.seq_of(tail) is None and board.seq_of(f"{tail}-1") in (None, 1)
    seq = board.seq_of(f"{board.boot}-{tail}")
    assert seq is None or (tail.isascii() and int(tail) == seq <= board.seq)


# --- InfluxDB answers (sparklines, the notifier's restore, reports) -------------------------------------

influx_like = st.recursive(
    json_values,
    lambda children: st.fixed_dictionaries({"results": st.lists(
        st.fixed_dictionaries({}, optional={"series": st.lists(st.fixed_dictionaries({}, optional={
            "name": children, "columns": st.lists(st.sampled_from(["time", "value", "group"]) | children, max_size=3),
            "values": st.lists(st.lists(children, max_size=3) | children, max_size=3), "tags": children,
        }), max_size=2) | children, "error": children}) | children, max_size=2) | children}),
    max_leaves=12,
)


@FUZZ
@given(doc=influx_like | st.lists(influx_like, min_size=3, max_size=3).map(
    lambda docs: {"results": [d["results"][0] if isinstance(d, dict) and isinstance(d.get("results"), list)
                              and d["results"] else {} for d in docs]}))
@example(doc={"results": [{"series": [{"tags": {"patient": "p1", "metric": "glucose"}, "values": [[1, None]]}]},
                          {}, {"error": "measurement not found"}]})
@example(doc={"results": [{"series": [{"tags": {"patient": "p1", "metric": "glucose"}, "values": [[1, 2]]}]},
                          {"series": [{"tags": {"patient": "p1", "metric": "glucose"}, "values": [[1, 2], "x"]}]},
                          {"series": [{"tags": {"patient": "p1"}, "values": [[1, True, []]]}]}]})
def test_fuzz_ward_overview_from_any_influx_answer(doc: Any) -> None:
    tiles = refused(parse_overview, doc, NOW)
    if tiles is None:
        return
    for patient, tile in tiles.items():
        assert is_valid_id(patient)
        for metric in ("heart_rate", "glucose"):
            if metric in tile:
                assert math.isfinite(tile[metric]["value"]) and tile[metric]["age_s"] >= 0
    orjson.dumps(tiles)


@FUZZ
@given(doc=influx_like)
@example(doc={"results": [{"series": [{"values": [[1, 2, 3]]}]}]})
@example(doc={"results": "x"})
@example(doc=[])
def test_fuzz_sparkline_points_from_any_influx_answer(doc: Any) -> None:
    points = refused(sparkline_points, doc)
    if points is None:
        return
    assert all(math.isfinite(t) and math.isfinite(v) for t, v in points)


@FUZZ
@given(doc=influx_like)
@example(doc={"results": [{"series": [{"columns": [["time"]], "values": [[1]]}]}]})
@example(doc={"results": [{"series": [{"columns": ["time"]}]}]})
@example(doc={"results": ["x"]})
def test_fuzz_notifier_restore_rows_from_any_influx_answer(doc: Any) -> None:
    rows = refused(influx_rows, doc)
    if rows is None:
        return
    assert all(isinstance(r, dict) and all(isinstance(k, str) for k in r) for r in rows)


class _Influx(http.server.BaseHTTPRequestHandler):
    """A fake InfluxDB ``/query`` that answers ``server.body``."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body: bytes = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fake_influx() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Influx)
    server.body = b"{}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=influx_like)
@example(doc=[])  # AttributeError: 'list' object has no attribute 'get'
@example(doc={"results": [{"series": [{"columns": ["time"], "values": [[1, 2]]}]}]})  # ValueError from zip
@example(doc={"results": [{"series": [{"values": [[1]]}]}]})  # KeyError: 'columns'
def test_fuzz_report_reader_over_http_reads_rows_or_raises_service_error(
        fake_influx: http.server.ThreadingHTTPServer, doc: Any) -> None:
    fake_influx.body = dumps(doc)  # type: ignore[attr-defined]
    reader = InfluxReader(url=f"http://127.0.0.1:{fake_influx.server_address[1]}", db="rpm")
    rows = refused(reader.rows, "SELECT 1", error=ServiceError)
    if rows is None:
        return
    assert all(isinstance(r, dict) for r in rows)


# --- `rpm routes test --alert JSON` (notify/cli.py) ------------------------------------------------------

VALID_ALERT_ARG = {"patient": "p0001", "rule": "glucose_low", "severity": "critical", "since": NOW - 60,
                   "state": "raised", "metric": "glucose"}


@FUZZ
@given(doc=any_field(VALID_ALERT_ARG))
@example(doc={**VALID_ALERT_ARG, "since": []})  # TypeError from float() before the fix
@example(doc={**VALID_ALERT_ARG, "since": "yesterday"})  # ValueError (no ConfigError) from float()
@example(doc={**VALID_ALERT_ARG, "severity": ["critical"]})  # TypeError: unhashable type: 'list'
def test_fuzz_routes_test_alert_argument_parses_or_raises_config_error(doc: dict[str, Any]) -> None:
    from tests.notify.helpers import routes

    update = refused(_alert_from_arg, dumps(doc).decode(), NOW, error=ConfigError)
    if update is None:
        return
    assert is_valid_id(update.alert_id) and math.isfinite(update.since)
    explain(routes(), update, at=NOW, ward_of=lambda _p: "north")


# --- the detectors' state from the worker's changelog topic (detectors/engine.py import_state) ----------


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _replaced(doc[head], rest, value)}
    return [_replaced(x, rest, value) if i == head else x for i, x in enumerate(doc)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rules=all_rulesets(), samples=device_streams(), data=st.data())
def test_fuzz_detector_state_from_the_changelog_imports_or_raises_state_error(rules: Any, samples: Any,
                                                                                data: st.DataObject) -> None:
    engine = Engine(rules)
    run6(engine, samples)
    states = json_roundtrip(engine.export_all())
    if not states:
        return
    patient = data.draw(st.sampled_from(sorted(states)))
    path = data.draw(st.sampled_from(list(_paths(states[patient]))))
    state = _replaced(states[patient], path, data.draw(json_values))
    try:
        state = orjson.loads(dumps(state))  # through JSON as the changelog stores it
    except orjson.JSONDecodeError:
        return  # NaN/Infinity: the worker treats it as unreadable state too
    fresh = Engine(rules)
    with contextlib.suppress(StateError):
        fresh.import_state(patient, state)
    run6(fresh, samples[-3:])  # whatever was imported, the engine goes on
    json_roundtrip(fresh.export_all())


def test_a_history_that_is_not_a_mapping_is_a_state_error() -> None:
    """``"history": []`` in a rate/forecast/rhythm rule's state raised AttributeError (the worker's
    state loader handles StateError only, so the partition would not have started)."""
    history = History(4)
    with pytest.raises(StateError, match="history"):
        history.import_patient(0, [])  # type: ignore[arg-type]
