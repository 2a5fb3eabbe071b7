"""Two samples of one device, metric and time with different values in one batch (issue: duplicate
samples). The detectors judge the first; InfluxDB keeps the last point of a series and time. The
worker keeps the first in both and dead-letters the other with its reason, so the chart shows the
value the alerts were computed from and the contradiction is not silent.

Real parts: the engine with the default rules, and the real InfluxDB 1.6 (``influx`` fixture).
"""

from __future__ import annotations

import orjson

from detectors.engine import Engine
from rpm_core.rules import load_rules
from rpm_core.sink import make_sink
from rpm_core.wire import encode_readings_record
from stream.deadletter_tools import DeadLetter, read_entry
from stream.pipeline import Pipeline
from stream.records import decode_record
from tests.conftest import REPO
from tests.support.influx import rows

T0 = 1_780_000_000.0


class Collected:
    def __init__(self) -> None:
        self.alerts: list[dict[str, object]] = []
        self.letters: list[dict[str, object]] = []

    async def alert(self, _key: bytes | None, value: bytes) -> None:
        self.alerts.append(orjson.loads(value))

    async def deadletter(self, _key: bytes | None, value: bytes) -> None:
        self.letters.append(orjson.loads(value))


def pipeline(influx_url: str, db: str) -> tuple[Pipeline, Collected]:
    rules = load_rules(REPO / "alert_rules.yaml")
    pipe = Pipeline(engine_factory=lambda: Engine(rules), sink=make_sink(url=influx_url, db=db),
                    clock=lambda: T0 + 60)
    out = Collected()
    pipe.bind(send_alert=out.alert, send_deadletter=out.deadletter)
    return pipe, out


def glucose(values: list[float], t: list[float], device: str = "cgm-1") -> dict[str, object]:
    return {"device": device, "source": "ble", "metric": ["glucose"] * len(values), "t": t, "value": values,
            "flags": [0] * len(values)}


def values_of(letter: dict[str, object]) -> list[float]:
    """The sample values of the readings record a dead letter holds."""
    entry = read_entry(orjson.dumps(letter), partition=0, offset=0)
    assert isinstance(entry, DeadLetter) and entry.intact
    return [v for group in decode_record(entry.payload) for v in group.value.tolist()]


def stored(influx_url: str, db: str) -> list[float]:
    return [r["value"] for r in rows(influx_url, db, 'SELECT "value" FROM "vitals" WHERE "patient" = \'p1\'')]


async def test_two_messages_in_a_batch_that_disagree_keep_the_first_in_the_chart_and_the_alert(
        influx_url: str, influx_db: str) -> None:
    """An urgent low at T0, then (another message of the same CGM, same batch) 150 mg/dL at T0."""
    pipe, out = pipeline(influx_url, influx_db)
    record = encode_readings_record("p1", [glucose([45.0], [T0]), glucose([150.0, 151.0], [T0, T0 + 300])])
    try:
        await pipe.handle([record], checkpoint=False)
    finally:
        await pipe.sink.close()
    raised = [a for a in out.alerts if a["rule"] == "glucose_low" and a["state"] == "raised"]
    assert [a["value"] for a in raised] == [45.0]
    assert stored(influx_url, influx_db) == [45.0, 151.0]  # not 150: the alert was computed from 45
    assert len(out.letters) == 1
    letter = out.letters[0]
    assert "conflicting duplicate" in str(letter["reason"]) and letter["stage"] == "duplicate"
    assert pipe.stats.deadlettered == 1
    from stream.deadletter_tools import NotReplayable, read_entry, replay_record

    entry = read_entry(orjson.dumps(letter), partition=0, offset=0)
    assert isinstance(replay_record(entry, partitions=4), NotReplayable), "a blanket replay must not undo the choice"


async def test_one_message_that_contradicts_itself_is_settled_the_same_way(influx_url: str, influx_db: str) -> None:
    pipe, out = pipeline(influx_url, influx_db)
    record = encode_readings_record("p1", [glucose([150.0, 45.0, 46.0], [T0, T0, T0])])
    try:
        await pipe.handle([record], checkpoint=False)
    finally:
        await pipe.sink.close()
    assert not [a for a in out.alerts if a["rule"] == "glucose_low"]  # 150 judged: no low
    assert stored(influx_url, influx_db) == [150.0]
    [letter] = out.letters  # one dead letter for the group, holding both dropped samples
    assert "conflicting duplicate: 2 samples (glucose)" in str(letter["reason"])
    assert values_of(letter) == [45.0, 46.0]


async def test_a_message_of_many_samples_at_one_time_is_not_amplified(influx_url: str, influx_db: str) -> None:
    """Adversarial: 2,000 samples of one CGM at one time, every value different. One sample is
    judged and stored; the 1,999 others go to the dead letter in one record no larger than the
    message (one record per sample would have been 1,999 sends and several times the bytes)."""
    pipe, out = pipeline(influx_url, influx_db)
    n = 2_000
    record = encode_readings_record("p1", [glucose([100.0 + k / 10 for k in range(n)], [T0] * n)])
    try:
        await pipe.handle([record], checkpoint=False)
    finally:
        await pipe.sink.close()
    assert stored(influx_url, influx_db) == [100.0]
    [letter] = out.letters
    entry = read_entry(orjson.dumps(letter), partition=0, offset=0)
    assert isinstance(entry, DeadLetter) and entry.intact and entry.size <= len(record)
    assert pipe.stats.deadlettered == 1
    assert values_of(letter) == [100.0 + k / 10 for k in range(1, n)]


async def test_an_exact_repeat_is_no_conflict(influx_url: str, influx_db: str) -> None:
    pipe, out = pipeline(influx_url, influx_db)
    try:
        await pipe.handle([encode_readings_record("p1", [glucose([99.0, 99.0], [T0, T0])])], checkpoint=False)
    finally:
        await pipe.sink.close()
    assert stored(influx_url, influx_db) == [99.0]
    assert out.letters == []


async def test_the_same_time_on_two_devices_is_no_conflict(influx_url: str, influx_db: str) -> None:
    pipe, out = pipeline(influx_url, influx_db)
    record = encode_readings_record("p1", [glucose([99.0], [T0]), glucose([120.0], [T0], device="cgm-2")])
    try:
        await pipe.handle([record], checkpoint=False)
    finally:
        await pipe.sink.close()
    assert sorted(stored(influx_url, influx_db)) == [99.0, 120.0]
    assert out.letters == []


def fields(influx_url: str, db: str) -> list[dict[str, object]]:
    return rows(influx_url, db, 'SELECT "value", "beyond", "source" FROM "vitals" WHERE "patient" = \'p1\'')


async def test_a_dropped_lo_leaves_no_beyond_mark_on_the_kept_value(influx_url: str, influx_db: str) -> None:
    """The kept 150 mg/dL, then a "LO" of the same CGM and time (dropped): InfluxDB merges the fields
    of points of one series and time, so a dropped line written before the kept one's rewrite would
    leave ``beyond="below"`` on the 150 (a chart marking a normal value as beneath the meter)."""
    pipe, out = pipeline(influx_url, influx_db)
    lo = {**glucose([20.0], [T0]), "flags": [16]}  # SampleFlag.BELOW_RANGE
    try:
        await pipe.handle([encode_readings_record("p1", [glucose([150.0], [T0]), lo])], checkpoint=False)
    finally:
        await pipe.sink.close()
    assert [(r["value"], r["beyond"]) for r in fields(influx_url, influx_db)] == [(150.0, None)]
    assert len(out.letters) == 1


async def test_a_dropped_sample_of_another_source_is_not_stored(influx_url: str, influx_db: str) -> None:
    """The same CGM and time through another source (another series in InfluxDB: ``source`` is a tag):
    the dropped value must not be stored beside the kept one."""
    pipe, out = pipeline(influx_url, influx_db)
    other = {**glucose([150.0], [T0]), "source": "cloud"}
    try:
        await pipe.handle([encode_readings_record("p1", [glucose([45.0], [T0]), other])], checkpoint=False)
    finally:
        await pipe.sink.close()
    assert stored(influx_url, influx_db) == [45.0]
    assert len(out.letters) == 1
