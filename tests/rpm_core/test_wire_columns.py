"""The readings message's cheap checks decide as the one-sample-at-a-time definitions do (issue 20,
goal 4).

``parse_readings_message`` checks a message's samples a column at a time (``_columns``) and its
top-level keys by counting colons (``_unique_top_keys``); when either is not sure it falls back to
the definitions (``_check_sample`` per sample, the key regular expression). These tests compare the
outcome, reason of refusal included, with the definitions alone on messages mixing good and bad
samples and keys.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from rpm_core import wire
from rpm_core.wire import ReadingsMessage, WireError, loads_unique, parse_readings_message, readings_topic

NOW = 1_780_000_000.0
TOPIC = readings_topic("p1")

metrics = st.sampled_from(["heart_rate", "rr_interval", "glucose", "heart", "", "HEART_RATE"])
oddities = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.just([]), st.just({"a": 1}),
                     st.just(2**63), st.just(-(2**63)), st.just(18446744073709551615))
times = st.one_of(st.floats(NOW - 1e6, NOW + 600, allow_nan=False), st.integers(int(NOW) - 1000, int(NOW) + 400),
                  st.sampled_from([wire.MIN_SAMPLE_EPOCH_S, wire.MIN_SAMPLE_EPOCH_S - 1e-6, NOW + 300.0,
                                   NOW + 300.0001, 0, 1.5e308]), oddities)
values = st.one_of(st.floats(-10, 1200, allow_nan=False), st.integers(-5, 1200),
                   st.sampled_from([0.15, 4.0, 1.0, 1, 15, 350, 350.0000001, 10, 1000, 1e308]), oddities)
flags = st.one_of(st.integers(-2, 40), st.sampled_from([1.0, 8.0]), oddities)


@st.composite
def samples(draw: Any) -> Any:
    kind = draw(st.sampled_from(["3", "4", "3", "4", "odd"]))
    if kind == "odd":
        return draw(st.one_of(st.lists(st.integers(0, 3), max_size=5), st.text(min_size=2, max_size=5),
                              st.dictionaries(st.sampled_from("abcd"), st.integers(-9, 9), min_size=3, max_size=4),
                              st.integers(-9, 9)))
    sample = [draw(st.one_of(metrics, oddities) if draw(st.integers(0, 9)) == 0 else metrics),
              draw(times), draw(values)]
    if kind == "4":
        sample.append(draw(flags))
    return sample


def regex_unique(payload: bytes, _doc: object) -> bool:
    """The duplicate-key check as it was defined: the top-level keys' regular expression."""
    found = wire._TOP_KEY_RE.findall(payload)
    return len(found) == len(set(found))


def by_definition(payload: bytes) -> ReadingsMessage | str:
    """The outcome with every cheap check off: the definitions alone."""
    with patch.object(wire, "_columns", lambda _samples, _now: None), \
            patch.object(wire, "_unique_top_keys", regex_unique):
        return outcome(payload)


def outcome(payload: bytes) -> ReadingsMessage | str:
    try:
        return parse_readings_message(payload, topic=TOPIC, now=NOW)
    except WireError as exc:
        return exc.reason
    except Exception as exc:  # a defect of the validation: the bridge dead-letters it (same either way)
        return f"raised {type(exc).__name__}"


@settings(max_examples=250, deadline=None)
@given(raw=st.lists(samples(), min_size=1, max_size=12))
def test_the_column_check_accepts_and_refuses_as_the_sample_check(raw: list[Any]) -> None:
    payload = orjson.dumps({"v": 1, "patient": "p1", "device": "hr-C0:FF:EE", "source": "sim", "samples": raw})
    got = outcome(payload)
    assert got == by_definition(payload)
    if isinstance(got, ReadingsMessage):
        assert all(type(x) is float for x in got.t + got.value)
        assert got.samples == tuple(wire._check_sample(s, i, NOW) for i, s in enumerate(raw))


def test_good_samples_take_the_column_check_and_keep_their_types() -> None:
    raw = [["heart_rate", NOW - 2, 70], ["rr_interval", int(NOW) - 1, 0.8], ["glucose", NOW, 99.5]]
    assert wire._columns(raw, NOW) == (("heart_rate", "rr_interval", "glucose"), (NOW - 2, float(int(NOW) - 1), NOW),
                                       (70.0, 0.8, 99.5), (0, 0, 0))
    # each refused by the column check, then by _check_sample with its reason
    for bad, reason in ([["rr_interval", NOW, True]], "value must be a finite number"), \
                       ([["heart_rate", NOW, 70, True]], "flags must be an integer mask"), \
                       ([["heart_rate", NOW, 70, 24]], "both above and below"), \
                       ([["heart_rate", NOW, 70], ["heart_rate", NOW, 70, 0]], None), \
                       ([["heart_rate", NOW, 14.9]], "outside plausible range"):
        assert wire._columns(bad, NOW) is None
        got = outcome(orjson.dumps({"v": 1, "patient": "p1", "device": "d", "source": "sim", "samples": bad}))
        assert isinstance(got, ReadingsMessage) if reason is None else reason in str(got)


keys = st.sampled_from(["v", "patient", "device", "source", "samples", "id"])


@settings(max_examples=300, deadline=None)
@given(extra=st.lists(st.tuples(keys, st.sampled_from(['"p1"', '"a:b"', "1", "[]", '"x"']),
                                st.sampled_from([":", " :", ": ", "\t:"])), max_size=3),
       device=st.sampled_from(["hr-C0:FF:EE:00:00:01", "dev", "samples", "a:b:c", 'v\\u003a']),
       msg_id=st.sampled_from([None, "id:1", "m1", "device"]),
       nested=st.booleans())
def test_the_colon_count_finds_a_key_named_twice_as_the_regular_expression(
        extra: list[tuple[str, str, str]], device: str, msg_id: str | None, nested: bool) -> None:
    doc: dict[str, Any] = {"v": 1, "patient": "p1", "device": device, "source": "sim",
                           "samples": [{"v": 1}] if nested else [["heart_rate", NOW, 70.0]]}
    if msg_id is not None:
        doc["id"] = msg_id
    payload = orjson.dumps(doc).replace(b"\\\\", b"\\")  # let 'v\u003a' through as an escape
    for key, value, colon in extra:
        payload = payload.replace(b"{", f'{{"{key}"{colon}{value},'.encode(), 1)
    parsed = orjson.loads(payload)
    assert wire._unique_top_keys(payload, parsed) == regex_unique(payload, parsed)
    if wire._unique_top_keys(payload, parsed) and b"\\" not in payload:
        loads_unique(payload)  # truly no key twice, at any depth
    assert outcome(payload) == by_definition(payload)


def test_a_key_named_twice_through_an_escape_is_refused() -> None:
    # orjson reads the last "patient" (p1, the topic's); another parser may read the first (pB)
    doubled = (b'{"v":1,"patient":"pB","pati\\u0065nt":"p1","device":"d","source":"sim",'
               b'"samples":[["heart_rate",1780000000,70]]}')
    assert outcome(doubled) == "duplicate keys: a key may appear only once"
    # an escape elsewhere is fine
    once = b'{"v":1,"patient":"p1","device":"d","source":"s\\u0069m","samples":[["heart_rate",1780000000,70]]}'
    assert isinstance(outcome(once), ReadingsMessage)
