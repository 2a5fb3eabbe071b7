"""The watchdog's decisions, without I/O: heartbeats in, technical alerts out, on a clock of our own.

Each test is a way rpm can stop monitoring someone; each checks that a technical alert is raised
in time (within a minute with the defaults), names the wards concerned, and clears when the cause
is gone, and that normal life (a rebalance, a graceful stop) raises nothing.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from rpm_app.cli import build_parser
from rpm_core.technical import (
    EVERY_WARD,
    Heartbeat,
    TechnicalAlert,
    TechnicalAlertError,
    decode_heartbeat,
    decode_technical,
)
from rpm_core.topics import partition_for
from stream.watchdog import Watchdog, WatchdogConfig

PARTS = 4
WARDS = {f"p{k}": ("north" if k % 2 else "south") for k in range(40)}
T0 = 1_780_000_000.0


def make(**config: Any) -> Watchdog:
    return Watchdog(config=WatchdogConfig(**config), partition_of=partition_for, ward_of=WARDS, partitions=PARTS,
                    started_at=T0)


def worker(name: str, parts: tuple[int, ...], t: float, **kw: Any) -> Heartbeat:
    return Heartbeat(component="worker", instance=name, time=t, partitions=parts, partition_count=PARTS, **kw)


def bridge(name: str, t: float, **kw: Any) -> Heartbeat:
    return Heartbeat(component="bridge", instance=name, time=t, **kw)


def run(w: Watchdog, start: float, end: float, beats: Any = None, step: float = 1.0) -> list[TechnicalAlert]:
    """Advance the clock from ``start`` to ``end``, feeding ``beats(t)`` every 5 s and evaluating each step."""
    out: list[TechnicalAlert] = []
    t = start
    while t <= end:
        if beats is not None and round(t - start) % 5 == 0:
            for beat in beats(t):
                w.observe(beat, t)
        out += w.evaluate(t)
        t += step
    return out


def healthy(t: float) -> list[Heartbeat]:
    return [worker("w1", (0, 1), t), worker("w2", (2, 3), t), bridge("b1", t)]


def test_a_healthy_pipeline_raises_nothing() -> None:
    w = make()
    assert run(w, T0, T0 + 300, healthy) == []


def test_killing_every_worker_raises_workers_missing_within_a_minute_and_it_clears_after_recovery() -> None:
    w = make()
    run(w, T0, T0 + 60, healthy)
    kill = T0 + 61
    out = run(w, kill, kill + 60, lambda t: [bridge("b1", t)])
    [raised] = [a for a in out if a.state == "raised"]
    assert raised.rule == "tech.workers_missing" and raised.severity == "critical"
    assert raised.time - kill <= 60
    assert "No stream worker is running" in raised.message and raised.remedy
    assert set(raised.wards) == {"north", "south"}
    back = kill + 61
    out = run(w, back, back + 20, healthy)
    assert [(a.rule, a.state) for a in out] == [("tech.workers_missing", "cleared")]
    assert out[0].alert_id == raised.alert_id


def test_a_partition_nobody_owns_names_only_its_wards() -> None:
    w = make()
    out = run(w, T0 + 31, T0 + 120, lambda t: [worker("w1", (0, 1, 2), t), bridge("b1", t)])
    [raised] = out
    patients_3 = {p for p in WARDS if partition_for(p, PARTS) == 3}
    assert set(raised.wards) == {WARDS[p] for p in patients_3}
    assert "partition(s) 3 of 4" in raised.message


def test_a_rebalance_shorter_than_the_confirmation_raises_nothing() -> None:
    w = make()
    run(w, T0, T0 + 60, healthy)
    # w2 leaves: for 6 s nobody owns 2 and 3, then w1 takes everything
    out = run(w, T0 + 61, T0 + 66, lambda t: [worker("w1", (0, 1), t), bridge("b1", t)])
    w.observe(Heartbeat(component="worker", instance="w2", time=T0 + 61, state="stopping"), T0 + 61)
    out += run(w, T0 + 67, T0 + 200, lambda t: [worker("w1", (0, 1, 2, 3), t), bridge("b1", t)])
    assert out == []


def test_a_frozen_bridge_is_silent_and_a_stuck_one_says_why() -> None:
    w = make()
    run(w, T0, T0 + 60, healthy)
    freeze = T0 + 61
    out = run(w, freeze, freeze + 60, lambda t: healthy(t)[:2])
    [silent] = out
    assert silent.rule == "tech.bridge_silent" and silent.scope == "b1" and silent.time - freeze <= 60
    assert silent.wards == (EVERY_WARD,)
    out = run(w, freeze + 61, freeze + 70, healthy)
    assert [(a.rule, a.state) for a in out] == [("tech.bridge_silent", "cleared")]
    stuck = run(w, freeze + 71, freeze + 120, lambda t: [*healthy(t)[:2], bridge(
        "b1", t, healthy=False, problem="a message has waited 61 s unacknowledged")])
    assert [(a.rule, a.state) for a in stuck] == [("tech.bridge_stuck", "raised")]
    assert "61 s unacknowledged" in stuck[0].message


def test_a_bridge_that_says_it_stops_is_not_missed_but_no_bridge_at_all_is() -> None:
    w = make()
    run(w, T0, T0 + 60, healthy)
    w.observe(Heartbeat(component="bridge", instance="b1", time=T0 + 61, state="stopping"), T0 + 61)
    out = run(w, T0 + 61, T0 + 120, lambda t: healthy(t)[:2])
    assert [(a.rule, a.scope) for a in out] == [("tech.bridges_missing", "")]


def test_a_worker_that_cannot_write_to_influxdb_is_named_with_the_fix() -> None:
    w = make()
    problem = "InfluxDB has no database 'rpm'; create it (influx -execute 'CREATE DATABASE \"rpm\"')"
    out = run(w, T0 + 31, T0 + 90, lambda t: [worker("w1", (0, 1), t), bridge("b1", t),
                                             worker("w2", (2, 3), t, healthy=False, problem=problem)])
    [raised] = out
    assert raised.rule == "tech.worker_stuck" and raised.component == "influxdb" and "CREATE DATABASE" in raised.message


def test_a_ward_whose_readings_stop_is_alerted_for_that_ward_only() -> None:
    w = make(ward_silent_after_s=120)
    last = {"north": T0, "south": T0}

    def beats(t: float) -> list[Heartbeat]:
        last["south"] = t  # south keeps sending, north went quiet at T0
        return [worker("w1", (0, 1, 2, 3), t, ward_last_reading=dict(last)), bridge("b1", t)]

    out = run(w, T0, T0 + 200, beats)
    [raised] = out
    assert raised.rule == "tech.ward_silent" and raised.wards == ("north",) and raised.time - T0 <= 120 + 60


def test_a_surge_of_dead_letters_is_a_warning() -> None:
    w = make(deadletter_per_min=50)
    count = 0

    def beats(t: float) -> list[Heartbeat]:
        nonlocal count
        count += 20
        return [worker("w1", (0, 1, 2, 3), t), bridge("b1", t, deadlettered=count)]

    [raised] = run(w, T0 + 31, T0 + 90, beats)
    assert raised.rule == "tech.deadletter_surge" and raised.severity == "warning"


def test_device_alarms_of_a_patient_are_raised_at_once_for_the_patients_ward_and_cleared() -> None:
    w = make()
    run(w, T0, T0 + 40, healthy)
    doc = {"kind": "alarm", "alarm": "battery_low", "device": "cgm-1", "active": True, "severity": "warning",
           "message": "CGM battery at 8 %", "remedy": "Charge or replace the sensor's transmitter"}
    w.observe_device_alarm("p3", doc)
    [raised] = w.evaluate(T0 + 41)
    assert (raised.rule, raised.scope, raised.patient, raised.wards) == ("tech.device.battery_low", "p3/cgm-1", "p3",
                                                                          ("north",))
    w.observe_device_alarm("p3", {**doc, "active": False})
    assert [(a.rule, a.state) for a in w.evaluate(T0 + 42)] == [("tech.device.battery_low", "cleared")]


def test_an_alert_of_an_earlier_run_is_cleared_once_its_cause_is_gone() -> None:
    w = make()
    old = TechnicalAlert(rule="tech.workers_missing", scope="", severity="critical", state="raised", time=T0 - 100,
                         since=T0 - 110, message="m", remedy="r", component="worker", wards=(EVERY_WARD,))
    w.adopt(old)
    assert run(w, T0, T0 + 20, healthy) == [], "not before the components had their grace period to report"
    out = run(w, T0 + 21, T0 + 40, healthy)
    assert [(a.alert_id, a.state) for a in out] == [(old.alert_id, "cleared")]


@pytest.mark.parametrize(("rule", "component"), [("tech.bridge_silent", "bridge"), ("tech.station_silent", "station"),
                                                 ("tech.notifier_silent", "notifier")])
def test_a_silent_component_of_an_earlier_run_stays_raised_until_it_reports(rule: str, component: str) -> None:
    """The watchdog restarted while a component was silent: this run never heard of it, and cleared
    the alert as gone, telling the nurses "resolved" of a notifier still dead."""
    w = make()
    old = TechnicalAlert(rule=rule, scope="x-1", severity="critical", state="raised", time=T0 - 100, since=T0 - 110,
                         message="m", remedy="r", component=component, wards=("north",))
    w.adopt(old)
    assert run(w, T0, T0 + 300, healthy) == []  # neither cleared nor raised again: it is still raised
    assert w.active[(rule, "x-1")] == old and f"{component}:x-1" in w.watched()
    out = run(w, T0 + 301, T0 + 310, lambda t: [*healthy(t), Heartbeat(component=component, instance="x-1", time=t)])
    assert [(a.alert_id, a.state) for a in out] == [(old.alert_id, "cleared")]


# -- the codecs ---------------------------------------------------------------------------------------


def test_technical_alerts_round_trip_and_refuse_what_is_not_one() -> None:
    alert = TechnicalAlert(rule="tech.bridge_silent", scope="rpm-bridge:h-0", severity="critical", state="raised",
                           time=T0, since=T0 - 5, message="m", remedy="r", component="bridge", wards=("*",))
    assert decode_technical(orjson.loads(alert.encode())) == alert
    good = orjson.loads(alert.encode())
    for bad in ({**good, "alert_id": "0" * 16}, {**good, "rule": "bridge_silent"}, {**good, "wards": []},
                {**good, "wards": ["a b"]}, {**good, "severity": ["critical"]}, {**good, "state": "acknowledged"},
                {**good, "time": float("nan")}, {**good, "message": ""}, {**good, "component": {}},
                {**good, "patient": 5}, {**good, "kind": "clinical"}):
        with pytest.raises(TechnicalAlertError):
            decode_technical(bad)


@pytest.mark.parametrize("value", [
    None, b"", b"[]", b'{"v": 2}', b'{"v": 1, "component": "worker"}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "partitions": [-1]}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "partitions": {"a": 1}}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "ward_last_reading": {"a b": 1}}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "healthy": "yes"}',
    b'{"v": 1, "component": ["worker"], "instance": "w", "time": 1}',
    b'{"v": 1, "component": "worker", "instance": "w\\u0000", "time": 1}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "deadlettered": true}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "interval_s": 0}',
    # the patients started afresh: ids only, distinct, at most 50, never more than the count says
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "state_reset": ["p1"]}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "state_reset": ["p1", "p1"], "state_reset_count": 2}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "state_reset": ["a b"], "state_reset_count": 1}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "state_reset": "p1", "state_reset_count": 1}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "state_reset": [], "state_reset_count": -1}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "state_reset_count": 1.5}',
    b'{"v": 1, "component": "worker", "instance": "w", "time": 1, "state_reset_count": 51, "state_reset": ['
    + b", ".join(b'"p%d"' % k for k in range(51)) + b"]}",
])
def test_malformed_heartbeats_are_refused_with_a_reason(value: bytes | None) -> None:
    with pytest.raises(TechnicalAlertError):
        decode_heartbeat(value)


def test_heartbeats_round_trip() -> None:
    beat = worker("w1", (0, 3), T0, ward_last_reading={"north": T0 - 1}, deadlettered=3, messages=10)
    assert decode_heartbeat(beat.encode()) == beat
    assert b"state_reset" not in beat.encode()  # what a watchdog of the version before reads
    reset = worker("w1", (0, 3), T0, state_reset=tuple(f"p{k}" for k in range(50)), state_reset_count=70)
    assert decode_heartbeat(reset.encode()) == reset


def test_patients_whose_stored_state_was_unreadable_are_named_to_their_wards_at_once_and_then_cleared() -> None:
    w = make()
    run(w, T0, T0 + 60, healthy)
    reset_at = T0 + 61

    def beats(t: float) -> list[Heartbeat]:
        return [worker("w1", (0, 1), t, state_reset=("p3",), state_reset_count=1), worker("w2", (2, 3), t),
                bridge("b1", t)]

    out = run(w, reset_at, reset_at + 10, beats)
    [raised] = out
    assert raised.time == reset_at  # a fact, not a condition to confirm
    assert (raised.rule, raised.scope, raised.severity, raised.wards) == ("tech.state_unreadable", "w1", "warning",
                                                                           ("north",))
    assert "p3" in raised.message and "started them afresh" in raised.message and raised.remedy
    assert run(w, reset_at + 11, reset_at + 100, beats) == []  # raised once while it holds
    out = run(w, reset_at + 101, reset_at + 120, healthy)  # the worker's hold ended
    assert [(a.rule, a.state, a.alert_id) for a in out] == [("tech.state_unreadable", "cleared", raised.alert_id)]


def test_more_unreadable_patients_than_a_heartbeat_names_concern_every_ward() -> None:
    w = make()
    run(w, T0, T0 + 60, healthy)
    named = tuple(f"p{k}" for k in range(0, 100, 2))  # south only, but 20 more are not named

    def beats(t: float) -> list[Heartbeat]:
        return [worker("w1", (0, 1, 2, 3), t, state_reset=named, state_reset_count=70), bridge("b1", t)]

    [raised] = run(w, T0 + 61, T0 + 62, beats)
    assert set(raised.wards) == {EVERY_WARD, "south"} and "70 patient(s)" in raised.message and "…" in raised.message


@pytest.mark.parametrize("alarm", ["battery low!", "", "bätt", "a/b", "x" * 60])
def test_a_device_alarm_whose_name_is_not_an_identifier_still_reaches_the_ward(alarm: str) -> None:
    """The name becomes the rule, which the nurse station and the notifier require to be an identifier
    (decode_technical): such an alarm was raised on rpm.alerts and refused by everyone who reads it."""
    from rpm_core.technical import decode_technical

    w = make()
    run(w, T0, T0 + 40, healthy)
    w.observe_device_alarm("p3", {"kind": "alarm", "alarm": alarm, "device": "cgm-1", "active": True,
                                  "message": "the transmitter says so"})
    [raised] = w.evaluate(T0 + 41)
    assert decode_technical(orjson.loads(raised.encode())).rule == raised.rule
    assert raised.message == "the transmitter says so" and raised.wards == ("north",)
    w.observe_device_alarm("p3", {"kind": "alarm", "alarm": alarm, "device": "cgm-1", "active": False})
    assert [a.state for a in w.evaluate(T0 + 42)] == ["cleared"]


def test_a_status_topic_that_is_not_utf8_does_not_raise_in_pahos_thread() -> None:
    """paho's msg.topic raises UnicodeDecodeError on it, and an exception in on_message ends paho's network
    thread: no device alarm would have been read after it (the bridge's finding, in the watchdog)."""
    import paho.mqtt.client as paho

    from rpm_core.settings import MqttSettings
    from stream.watchdog import start_status_listener

    seen: list[tuple[str, bytes]] = []
    client = start_status_listener(MqttSettings(host="127.0.0.1", port=9), "w-test", lambda t, p: seen.append((t, p)))
    try:
        msg = paho.MQTTMessage(mid=1, topic=b"rpm/v1/p/\xff\xfe/status")
        msg.payload = b"{}"
        client.on_message(client, None, msg)
        assert seen == [("rpm/v1/p/\ufffd\ufffd/status", b"{}")]
    finally:
        client.loop_stop()


def test_a_device_alarm_of_a_patient_on_no_ward_is_told_to_the_operators_not_to_every_ward() -> None:
    """Issue: an unrostered patient's device alarm went to every ward ("*"), health data to nurses
    who have no business with that patient. Now no ward gets the alarm; one technical alert names
    the patients on no ward (not their alarms) until the roster lists them or the alarms end."""
    w = make()
    run(w, T0, T0 + 40, healthy)
    doc = {"kind": "alarm", "alarm": "sensor_failed", "device": "cgm-9", "active": True, "severity": "critical",
           "message": "CGM sensor failed: glucose not measured", "remedy": "Replace the sensor"}
    w.observe_device_alarm("stranger", doc)
    w.observe_device_alarm("p3", {**doc, "device": "cgm-3"})  # on ward north: told there as before
    raised = w.evaluate(T0 + 41)
    by_rule = {a.rule: a for a in raised}
    assert set(by_rule) == {"tech.device.sensor_failed", "tech.patient_unassigned"}
    assert by_rule["tech.device.sensor_failed"].patient == "p3"
    assert by_rule["tech.device.sensor_failed"].wards == ("north",)
    told = by_rule["tech.patient_unassigned"]
    assert told.wards == (EVERY_WARD,) and told.patient is None and told.severity == "warning"
    assert "stranger" in told.message and "sensor" not in told.message.lower() and "glucose" not in told.message
    assert decode_technical(orjson.loads(told.encode())).rule == "tech.patient_unassigned"
    w.observe_device_alarm("stranger", {**doc, "active": False})
    assert [(a.rule, a.state) for a in w.evaluate(T0 + 42)] == [("tech.patient_unassigned", "cleared")]


def test_a_patient_newly_on_no_ward_is_told_although_the_alert_is_already_raised() -> None:
    """The alert named only the patients on no ward when it was raised: one who became unassigned
    later was named by no alert until it cleared (also after a watchdog restart, which adopts it).
    Now a grown list is told again, whole (cleared and raised), and an unchanged one is not."""
    w = make()
    run(w, T0, T0 + 40, healthy)

    def stray(*names: str) -> Any:
        return lambda t: [worker("w1", (0, 1), t, unassigned=names, unassigned_count=len(names)),
                          worker("w2", (2, 3), t), bridge("b1", t)]

    [first] = run(w, T0 + 41, T0 + 50, stray("stray"))
    assert "stray" in first.message and "drifter" not in first.message
    assert run(w, T0 + 51, T0 + 60, stray("stray")) == [], "the same patients: not told again"
    again = run(w, T0 + 61, T0 + 70, stray("stray", "drifter"))
    assert [(a.rule, a.state) for a in again] == [("tech.patient_unassigned", "cleared"),
                                                 ("tech.patient_unassigned", "raised")]
    assert "stray" in again[1].message and "drifter" in again[1].message and "2 patient(s)" in again[1].message
    assert run(w, T0 + 71, T0 + 80, stray("drifter")) == [], "one fewer: still named by the alert"

    restarted = make()  # a new watchdog adopts the raised alert, read back from rpm.alerts
    restarted.adopt(decode_technical(orjson.loads(again[1].encode())))
    run(restarted, T0 + 100, T0 + 140, stray("stray", "drifter"))
    assert [a.state for a in run(restarted, T0 + 141, T0 + 150, stray("stray", "drifter"))] == []
    grown = run(restarted, T0 + 151, T0 + 160, stray("stray", "drifter", "p100"))
    assert [a.state for a in grown] == ["cleared", "raised"] and "p100" in grown[1].message


def test_without_a_roster_a_device_alarm_still_goes_to_the_only_ward() -> None:
    w = Watchdog(config=WatchdogConfig(), partition_of=partition_for, ward_of={}, partitions=PARTS, started_at=T0)
    run(w, T0, T0 + 40, healthy)
    w.observe_device_alarm("anyone", {"kind": "alarm", "alarm": "battery_low", "device": "hr-1", "active": True})
    [raised] = w.evaluate(T0 + 41)
    assert (raised.rule, raised.patient, raised.wards) == ("tech.device.battery_low", "anyone", (EVERY_WARD,))


def test_readings_of_patients_on_no_ward_are_told_to_the_operators_and_cleared_when_they_stop() -> None:
    """A worker names the patients on no ward whose readings it received lately: their clinical
    alerts reach no nurse station, so the watchdog tells every ward's technical list and the operators."""
    w = make()
    run(w, T0, T0 + 40, healthy)

    def stray(t: float) -> list[Heartbeat]:
        return [worker("w1", (0, 1), t, unassigned=("stray", "p99"), unassigned_count=60),
                worker("w2", (2, 3), t), bridge("b1", t)]

    [raised] = run(w, T0 + 41, T0 + 50, stray)
    assert (raised.rule, raised.wards, raised.patient) == ("tech.patient_unassigned", (EVERY_WARD,), None)
    assert "60 patient(s)" in raised.message and "stray" in raised.message and "p99" in raised.message
    assert [(a.rule, a.state) for a in run(w, T0 + 51, T0 + 60, healthy)] == [("tech.patient_unassigned", "cleared")]


def test_heartbeats_carry_the_patients_on_no_ward_and_refuse_more_names_than_counted() -> None:
    beat = worker("w1", (0,), T0, unassigned=("stray",), unassigned_count=3)
    assert decode_heartbeat(beat.encode()) == beat
    assert b"unassigned" not in worker("w1", (0,), T0).encode(), "a watchdog of an earlier version reads it"
    doc = orjson.loads(beat.encode())
    with pytest.raises(TechnicalAlertError, match="unassigned"):
        decode_heartbeat(orjson.dumps({**doc, "unassigned": ["a", "b"], "unassigned_count": 1}))


def station(name: str, t: float, ward: str | None = "north", **kw: Any) -> Heartbeat:
    return Heartbeat(component="station", instance=name, time=t, ward=ward, **kw)


def test_a_frozen_nurse_station_is_told_to_its_ward_and_the_operators_within_a_minute_and_cleared() -> None:
    w = make()
    run(w, T0, T0 + 60, lambda t: [*healthy(t), station("desk-n", t), station("desk-s", t, ward="south")])
    freeze = T0 + 61
    out = run(w, freeze, freeze + 60, lambda t: [*healthy(t), station("desk-s", t, ward="south")])
    [silent] = out
    assert (silent.rule, silent.scope, silent.severity, silent.state) == (
        "tech.station_silent", "desk-n", "critical", "raised")
    assert silent.time - freeze <= 60 and silent.wards == ("north",) and silent.component == "station"
    assert "Nurse station desk-n of ward north has not reported" in silent.message and "restart" in silent.remedy
    assert decode_technical(orjson.loads(silent.encode())) == silent  # every reader of rpm.alerts takes it
    out = run(w, freeze + 61, freeze + 70, lambda t: [*healthy(t), station("desk-n", t),
                                                      station("desk-s", t, ward="south")])
    assert [(a.rule, a.state, a.alert_id) for a in out] == [("tech.station_silent", "cleared", silent.alert_id)]


def test_a_nurse_station_stopped_on_purpose_is_not_missed() -> None:
    w = make()
    run(w, T0, T0 + 60, lambda t: [*healthy(t), station("desk-n", t)])
    w.observe(station("desk-n", T0 + 61, state="stopping"), T0 + 61)
    assert run(w, T0 + 61, T0 + 200, healthy) == []


def test_a_station_that_cannot_read_alerts_is_critical_and_one_whose_audit_fails_is_a_warning() -> None:
    w = make()
    blind = "its alert feed cannot read rpm.alerts from Kafka, so its screens show no new alert"
    out = run(w, T0 + 31, T0 + 90, lambda t: [*healthy(t), station("desk-n", t, healthy=False, problem=blind)])
    [stuck] = out
    assert (stuck.rule, stuck.severity, stuck.wards) == ("tech.station_stuck", "critical", ("north",))
    assert blind in stuck.message
    unrecorded = "3 audit entries of people's actions wait to be stored in rpm.audit for 20 s (Kafka: no answer)"
    out = run(w, T0 + 91, T0 + 150, lambda t: [*healthy(t), station("desk-n", t, problem=unrecorded)])
    assert [(a.rule, a.state) for a in out] == [("tech.station_stuck", "cleared"), ("tech.station_warning", "raised")]
    warning = out[1]
    assert warning.severity == "warning" and unrecorded in warning.message and "not all recorded" in warning.message
    assert "by hand" in warning.remedy
    out = run(w, T0 + 151, T0 + 160, lambda t: [*healthy(t), station("desk-n", t)])
    assert [(a.rule, a.state) for a in out] == [("tech.station_warning", "cleared")]


def test_a_station_of_no_roster_ward_concerns_every_ward() -> None:
    w = make()
    run(w, T0, T0 + 60, lambda t: [*healthy(t), station("desk", t, ward="all")])
    [silent] = run(w, T0 + 61, T0 + 120, healthy)
    assert silent.wards == (EVERY_WARD,) and "of ward" not in silent.message


def test_station_heartbeats_round_trip_and_refuse_a_ward_that_is_not_an_id() -> None:
    beat = station("host:8080", T0, healthy=False, problem="x", messages=7)
    assert decode_heartbeat(beat.encode()) == beat
    assert b'"ward"' not in worker("w1", (0,), T0).encode()  # only stations send it
    for bad in (b'"a b"', b"1", b"[]", b'""'):
        with pytest.raises(TechnicalAlertError, match="ward"):
            decode_heartbeat(b'{"v": 1, "component": "station", "instance": "s", "time": 1, "ward": ' + bad + b"}")
    with pytest.raises(TechnicalAlertError, match="component"):
        decode_heartbeat(b'{"v": 1, "component": "kiosk", "instance": "s", "time": 1}')


def notifier(name: str, t: float, **kw: Any) -> Heartbeat:
    return Heartbeat(component="notifier", instance=name, time=t, **kw)


def test_a_frozen_notifier_is_told_to_every_ward_within_a_minute_since_it_cannot_page_about_itself() -> None:
    w = make()
    run(w, T0, T0 + 60, lambda t: [*healthy(t), notifier("rpm-notifier", t)])
    freeze = T0 + 61
    [silent] = run(w, freeze, freeze + 60, healthy)
    assert (silent.rule, silent.scope, silent.severity, silent.wards) == (
        "tech.notifier_silent", "rpm-notifier", "critical", (EVERY_WARD,))
    assert silent.time - freeze <= 60 and "nobody is paged" in silent.message
    assert decode_technical(orjson.loads(silent.encode())) == silent
    out = run(w, freeze + 61, freeze + 70, lambda t: [*healthy(t), notifier("rpm-notifier", t)])
    assert [(a.rule, a.state) for a in out] == [("tech.notifier_silent", "cleared")]


def test_a_notifier_stopped_on_purpose_is_not_missed_unless_none_is_left() -> None:
    w = make()
    assert run(w, T0, T0 + 120, healthy) == []  # rpm without a notifier (the demo): nothing to tell
    both = run(w, T0 + 121, T0 + 180, lambda t: [*healthy(t), notifier("n1", t), notifier("n2", t)])
    assert both == []
    w.observe(notifier("n1", T0 + 181, state="stopping"), T0 + 181)
    assert run(w, T0 + 181, T0 + 240, lambda t: [*healthy(t), notifier("n2", t)]) == []  # n2 still pages
    w.observe(notifier("n2", T0 + 241, state="stopping"), T0 + 241)
    [missing] = run(w, T0 + 241, T0 + 300, healthy)
    assert (missing.rule, missing.severity, missing.wards) == ("tech.notifiers_missing", "critical", (EVERY_WARD,))
    assert missing.time - (T0 + 241) <= 60 and "nobody is paged" in missing.message
    out = run(w, T0 + 301, T0 + 310, lambda t: [*healthy(t), notifier("n1", t)])
    assert [(a.rule, a.state) for a in out] == [("tech.notifiers_missing", "cleared")]
    restarted = make()  # a watchdog restarted meanwhile keeps telling it until a notifier runs
    restarted.adopt(missing)
    assert run(restarted, T0, T0 + 300, healthy) == []
    assert [(a.rule, a.state) for a in run(restarted, T0 + 301, T0 + 310, lambda t: [*healthy(t), notifier(
        "n1", t)])] == [("tech.notifiers_missing", "cleared")]


def test_a_notifier_that_routes_nothing_is_critical_and_one_whose_pages_fail_is_a_warning() -> None:
    w = make()
    idle = "it has routed no alert for 65 s (no partition of rpm.alerts assigned to it), so nobody is paged"
    [stuck] = run(w, T0 + 31, T0 + 90, lambda t: [*healthy(t), notifier("n1", t, healthy=False, problem=idle)])
    assert (stuck.rule, stuck.severity) == ("tech.notifier_stuck", "critical") and idle in stuck.message
    unpaged = "1 notification(s) in the last 15 min reached none of their channels (the last: step 1, ...)"
    out = run(w, T0 + 91, T0 + 150, lambda t: [*healthy(t), notifier("n1", t, problem=unpaged)])
    assert [(a.rule, a.state, a.severity) for a in out] == [
        ("tech.notifier_stuck", "cleared", "critical"), ("tech.notifier_warning", "raised", "warning")]
    assert unpaged in out[1].message and "were not paged" in out[1].message


def hl7(name: str, t: float, **kw: Any) -> Heartbeat:
    return Heartbeat(component="hl7", instance=name, time=t, **kw)


def test_a_frozen_hl7_follower_is_told_to_every_ward_within_a_minute_and_one_stopped_is_not_missed() -> None:
    """The nurse call (or the EMR) an HL7 follower feeds gets no alert once it dies or freezes."""
    w = make()
    name = "desk-7:rpm-hl7-nursecall"
    run(w, T0, T0 + 60, lambda t: [*healthy(t), hl7(name, t)])
    freeze = T0 + 61
    [silent] = run(w, freeze, freeze + 60, healthy)
    assert (silent.rule, silent.scope, silent.severity, silent.wards, silent.component) == (
        "tech.hl7_silent", name, "critical", (EVERY_WARD,), "hl7")
    assert silent.time - freeze <= 60 and "no longer reach the nurse call" in silent.message
    assert "rpm-hl7@" in silent.remedy
    assert decode_technical(orjson.loads(silent.encode())) == silent
    restarted = make()  # a watchdog restarted meanwhile keeps telling it until the follower reports
    restarted.adopt(silent)
    assert run(restarted, freeze + 61, freeze + 120, healthy) == []
    out = run(restarted, freeze + 121, freeze + 130, lambda t: [*healthy(t), hl7(name, t)])
    assert [(a.rule, a.state) for a in out] == [("tech.hl7_silent", "cleared")]
    restarted.observe(hl7(name, freeze + 131, state="stopping"), freeze + 131)
    assert run(restarted, freeze + 131, freeze + 240, healthy) == []


def test_an_hl7_follower_that_delivers_nothing_is_critical_and_one_whose_messages_are_dead_lettered_a_warning() -> None:
    w = make()
    stuck_text = ("it has delivered no alert to mllp://nurse-call.example:6662 for 75 s while alerts wait (the "
                  "receiver does not answer, or does not accept them)")
    [stuck] = run(w, T0, T0 + 60, lambda t: [*healthy(t), hl7("h1", t, healthy=False, problem=stuck_text)])
    assert (stuck.rule, stuck.severity, stuck.wards) == ("tech.hl7_stuck", "critical", (EVERY_WARD,))
    assert stuck_text in stuck.message and "still show and page every alert" in stuck.message
    assert "rpm deadletter list --stage hl7" in stuck.remedy
    dead = "2 alert message(s) in the last 15 min were dead-lettered, not delivered to mllp://x:1 (the last: ...)"
    out = run(w, T0 + 61, T0 + 120, lambda t: [*healthy(t), hl7("h1", t, problem=dead)])
    assert [(a.rule, a.state, a.severity) for a in out] == [
        ("tech.hl7_stuck", "cleared", "critical"), ("tech.hl7_warning", "raised", "warning")]
    assert dead in out[1].message and "did not reach the nurse call" in out[1].message


def test_with_keys_a_heartbeat_of_a_component_that_signs_must_carry_a_valid_signature() -> None:
    """rpm.heartbeats is writable by several principals: a forged heartbeat could keep a dead worker,
    notifier, station or the watchdog itself looking alive. The bridge holds no key: read unsigned."""
    from rpm_core.signing import KeyRing
    from rpm_core.technical import HeartbeatSignatureError, read_heartbeat, sign_heartbeat

    keys, other = KeyRing.generate("k1"), KeyRing.generate("k1")
    for beat in (worker("w1", (0, 1), T0), station("desk", T0), notifier("n1", T0),
                 Heartbeat(component="watchdog", instance="rpm-watchdog", time=T0)):
        value, headers = sign_heartbeat(keys, beat)
        assert read_heartbeat(keys, value, headers) == beat
        for forged in (None, [], sign_heartbeat(other, beat)[1], keys.sign("rpm.alerts", None, value)):
            with pytest.raises(HeartbeatSignatureError, match=f"heartbeat of {beat.component}"):
                read_heartbeat(keys, value, forged)
        altered = value.replace(b'"healthy":true', b'"healthy":false')
        assert altered != value
        with pytest.raises(HeartbeatSignatureError):
            read_heartbeat(keys, altered, headers)
        assert read_heartbeat(None, value, None) == beat  # without keys (a deployment that signs nothing)
    unsigned_bridge = bridge("b1", T0).encode()
    assert read_heartbeat(keys, unsigned_bridge, None) == bridge("b1", T0)
    assert sign_heartbeat(None, bridge("b1", T0)) == (unsigned_bridge, None)


def test_a_watchdog_that_cannot_read_device_alarms_says_so_to_every_ward_and_clears_when_it_can() -> None:
    w = make()
    w.device_alarms_problem = "Mosquitto refused it: Not authorized"
    out = run(w, T0, T0 + 60, healthy)
    [unwatched] = out
    assert (unwatched.rule, unwatched.severity, unwatched.component, unwatched.wards) == (
        "tech.device_alarms_unwatched", "warning", "watchdog", (EVERY_WARD,))
    assert unwatched.time - T0 <= 60 and "Not authorized" in unwatched.message and "rpm-watchdog" in unwatched.remedy
    w.device_alarms_problem = None
    assert [(a.rule, a.state) for a in run(w, T0 + 61, T0 + 70, healthy)] == [
        ("tech.device_alarms_unwatched", "cleared")]


def test_a_dark_ward_screen_is_told_to_its_ward_and_a_second_one_is_named_too() -> None:
    w = make()
    one = ("north wall (a1b2c3d4e5f6)",)
    out = run(w, T0, T0 + 60, lambda t: [*healthy(t), station("desk-n", t, dark_screens=one)])
    [dark] = out
    assert (dark.rule, dark.scope, dark.severity, dark.wards) == ("tech.ward_screen_dark", "desk-n", "warning",
                                                                  ("north",))
    assert "north wall (a1b2c3d4e5f6)" in dark.message
    # the remedy's command is one rpm takes: it names the station's state directory, where the kiosks are
    [command] = re.findall(r"\(rpm (nurse-station kiosk [^,)]*)", dark.remedy)
    args = build_parser("nurse-station").parse_args(command.split())
    assert (args.kiosk_command, args.state_dir, args.id) == ("revoke", "DIR", "ID")
    assert run(w, T0 + 61, T0 + 120, lambda t: [*healthy(t), station("desk-n", t, dark_screens=one)]) == []
    two = ("north wall (a1b2c3d4e5f6)", "0a0b0c0d0e0f")
    out = run(w, T0 + 121, T0 + 140, lambda t: [*healthy(t), station("desk-n", t, dark_screens=two)])
    assert [(a.rule, a.state) for a in out] == [("tech.ward_screen_dark", "cleared"),
                                                ("tech.ward_screen_dark", "raised")]
    assert "0a0b0c0d0e0f" in out[1].message
    out = run(w, T0 + 141, T0 + 150, lambda t: [*healthy(t), station("desk-n", t)])
    assert [(a.rule, a.state) for a in out] == [("tech.ward_screen_dark", "cleared")]
    beat = station("desk-n", T0, dark_screens=two)
    assert decode_heartbeat(beat.encode()) == beat
    for bad in (b'"x"', b'[""]', b'["a\\u0000"]', b'[' + b",".join([b'"k"'] * 51) + b']', b'["' + b"k" * 101 + b'"]'):
        with pytest.raises(TechnicalAlertError, match="dark_screens"):
            decode_heartbeat(b'{"v": 1, "component": "station", "instance": "s", "time": 1, "dark_screens": '
                             + bad + b"}")
