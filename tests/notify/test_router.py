"""The routing engine with a fake clock: chains, acks, grouping, inhibition, quiet hours, restarts."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from detectors.events import alert_id
from notify.audit import sent_records
from notify.model import TimeWindow
from notify.router import AlertUpdate, Router, SentRecord
from tests.notify.helpers import ROUTES, T0, driver, event, routes

A1 = alert_id("p0001", "glucose_low", T0)


def test_an_unacknowledged_critical_alert_walks_its_chain_with_the_configured_delays() -> None:
    d = driver()
    d.observe(event())
    d.run_until(T0 + 20 * 60)
    assert d.steps() == [(10, "step", 0, "nurses"), (310, "step", 1, "oncall"), (910, "step", 2, "physician")]
    assert [(e.step, e.channel) for e in d.escalated] == [(1, "oncall.webhook"), (2, "physician.mail")]
    assert all(e.alert.alert_id == A1 for e in d.escalated)


@pytest.mark.parametrize(("ack_after", "steps_sent"), [(5, 0), (60, 1), (400, 2), (1000, 3)])
def test_an_acknowledgement_at_any_step_stops_the_chain(ack_after: float, steps_sent: int) -> None:
    d = driver()
    d.observe(event())
    d.run_until(T0 + ack_after)
    d.ack(A1)
    d.run_until(T0 + 6 * 3600)
    assert [s for s in d.steps() if s[1] == "step"] == [
        (10, "step", 0, "nurses"), (310, "step", 1, "oncall"), (910, "step", 2, "physician")][:steps_sent]
    assert [s for s in d.steps() if s[1] != "step"] == []  # no repeats either
    (ack,) = [r for r in d.records if r.outcome == "acknowledged"]
    assert (ack.alert_id, ack.recipient, ack.channel, ack.step) == (A1, "Nurse Ana", "north-desk", steps_sent - 1)
    assert d.router.next_deadline() is None


def test_an_acknowledged_event_on_rpm_alerts_stops_it_too_and_a_redelivered_ack_changes_nothing() -> None:
    d = driver()
    d.observe(event())
    d.run_until(T0 + 60)
    d.observe(event(state="acknowledged", by="Nurse Ana"))
    d.ack(A1)
    d.run_until(T0 + 3600 * 3)
    assert len(d.steps()) == 1
    assert [r.outcome for r in d.records] == ["acknowledged"]


def test_a_cleared_alert_stops_the_chain_and_says_so() -> None:
    d = driver()
    d.observe(event())
    d.run_until(T0 + 400)
    d.observe(event(state="cleared"))
    d.run_until(T0 + 3 * 3600)
    assert [s[2] for s in d.steps()] == [0, 1]
    assert [(r.outcome, r.step) for r in d.records] == [("resolved", 1)]


def test_a_step_that_reaches_nobody_is_skipped_to_the_next_one_at_once() -> None:
    d = driver()
    d.fail = {"oncall"}
    d.observe(event())
    d.run_until(T0 + 20 * 60)
    assert d.steps() == [(10, "step", 0, "nurses"), (310, "step", 1, "oncall"), (310, "step", 2, "physician")]
    (skip,) = [r for r in d.records if r.outcome == "skipped"]
    assert skip.step == 1 and skip.kind == "escalation" and "escalating to step 2" in skip.detail


def test_a_burst_of_50_alerts_is_one_message_per_receiver_per_repeat_interval() -> None:
    d = driver()
    for k in range(50):
        d.observe(event(rule=f"rule_{k:02d}", severity="warning", since=T0 + k), at=T0 + k * 0.1)
    d.run_until(T0 + 3 * 3600 + 30)
    kinds = [(s[0], s[1]) for s in d.steps()]
    # step 0 after group_wait, then the same group again every repeat_interval (1 h)
    assert kinds == [(10, "step"), (3610, "repeat"), (7210, "repeat"), (10810, "repeat")]
    assert all(len(x.notification.alerts) == 50 for x in d.dispatches)
    # the nurse station sees rpm.alerts live: only the first message carries its receipt
    assert [len(x.channels) for x in d.dispatches] == [2, 1, 1, 1]


def test_alerts_that_join_a_notified_group_go_out_as_one_update_per_group_interval() -> None:
    d = driver()
    d.observe(event(rule="a", severity="warning"))
    d.run_until(T0 + 20)
    d.observe(event(rule="b", severity="warning", since=T0 + 1), at=T0 + 21)
    d.observe(event(rule="c", severity="warning", since=T0 + 2), at=T0 + 25)
    d.run_until(T0 + 200)
    assert [(s[0], s[1]) for s in d.steps()] == [(10, "step"), (70, "update")]
    assert {a.rule for a in d.dispatches[1].notification.alerts} == {"a", "b", "c"}


def test_a_critical_alert_inhibits_the_patients_warnings_until_it_clears() -> None:
    d = driver()
    d.observe(event(rule="glucose_low", severity="critical"))
    d.observe(event(rule="glucose_drop", severity="warning", since=T0 + 1), at=T0 + 1)
    d.run_until(T0 + 60)
    assert [(s[2], s[3]) for s in d.steps()] == [(0, "nurses")]
    assert [a.rule for a in d.dispatches[0].notification.alerts] == ["glucose_low"]
    (held,) = [r for r in d.records if r.outcome == "skipped"]
    assert held.rule == "glucose_drop" and "inhibited by critical" in held.detail
    d.observe(event(rule="glucose_low", severity="critical", state="cleared"), at=T0 + 100)
    d.run_until(T0 + 200)
    assert [(s[0], s[3]) for s in d.steps()][-1] == (110, "nurses")  # the warning, now on its own
    assert [a.rule for a in d.dispatches[-1].notification.alerts] == ["glucose_drop"]


def test_a_raise_to_a_higher_severity_reopens_an_acknowledged_alert_on_its_new_route() -> None:
    d = driver()
    d.observe(event(severity="warning"))
    d.run_until(T0 + 30)
    d.ack(A1)
    d.observe(event(severity="critical"), at=T0 + 100)
    d.run_until(T0 + 100 + 6 * 60)
    assert [(s[0], s[2], s[3]) for s in d.steps()] == [(10, 0, "nurses"), (110, 0, "nurses"), (410, 1, "oncall")]
    assert d.dispatches[1].notification.route == "critical"


def test_an_ack_older_than_the_raise_it_would_answer_does_not_count() -> None:
    d = driver()
    d.observe(event(severity="warning"))
    d.observe(event(severity="critical"), at=T0 + 100)
    d.take(d.router.acknowledge(A1, by="Ana", at=T0 + 101, source="north-desk", ack_time=T0 + 50))
    assert not d.router.is_acknowledged(A1)


def test_an_ack_read_before_its_alert_is_applied_when_the_alert_arrives() -> None:
    d = driver()
    d.take(d.router.acknowledge(A1, by="patient (edge agent)", at=T0 + 3, source="edge-agent"))
    d.observe(event(), at=T0 + 1)
    d.run_until(T0 + 3600)
    assert d.steps() == []
    assert d.router.is_acknowledged(A1)


def test_routing_tree_first_match_continue_wards_and_time_windows() -> None:
    text = ROUTES.replace("""    - name: critical
      match: {severity: critical}
      escalation: critical
""", """    - name: north-day
      match: {ward: north}
      during: [day]
      receiver: oncall
      continue: true
    - name: critical
      match: {severity: critical}
      escalation: critical
    - name: never
      match: {severity: critical}
      receiver: physician
""") + """time_windows:
  day: {start: "08:00", end: "20:00", timezone: UTC}
"""
    r = routes(text)
    wards = {"p0001": "north", "p0002": "south"}
    from notify.router import match_routes

    def taken(patient: str, hour: int) -> list[str]:
        router = Router(r, ward_of=wards.get)
        at = dt.datetime(2025, 11, 25, hour, tzinfo=dt.UTC).timestamp()
        router.observe(AlertUpdate.from_doc(event(patient)), at)
        return [x.id for x in match_routes(r.route, router.open_alerts()[0], at)]

    assert taken("p0001", 10) == ["north-day", "critical"]
    assert taken("p0001", 22) == ["critical"]
    assert taken("p0002", 10) == ["critical"]


def test_quiet_hours_hold_non_critical_notifications_until_the_window_ends() -> None:
    text = ROUTES.replace("route:\n  receiver: nurses\n", "route:\n  receiver: nurses\n  quiet_hours: [night]\n") + \
        'time_windows:\n  night: {start: "22:00", end: "07:00", timezone: Europe/Berlin}\n'
    d = driver(text)
    berlin = ZoneInfo("Europe/Berlin")
    at = dt.datetime(2025, 11, 25, 23, 30, tzinfo=berlin).timestamp()
    d.observe(event(severity="warning", since=at), at=at)
    d.observe(event(rule="glucose_fall", severity="critical", patient="p0002", since=at), at=at)
    d.run_until(at + 12 * 3600)
    firsts = {(x.notification.patient, x.notification.step): x.notification.at for x in d.dispatches
              if x.notification.kind == "step"}
    assert firsts[("p0002", 0)] == at + 10  # critical: never held
    assert dt.datetime.fromtimestamp(firsts[("p0001", 0)], berlin).strftime("%H:%M") == "07:00"
    (held,) = [r for r in d.records if r.outcome == "deferred"]
    assert held.patient == "p0001" and "quiet hours" in held.detail


def test_a_replay_with_the_audit_restored_neither_repeats_nor_forgets_steps() -> None:
    first = driver()
    first.observe(event())
    first.run_until(T0 + 400)  # steps 0 and 1 went out
    audit = [SentRecord(group=x.notification.group, run=x.notification.run, step=x.notification.step,
                        kind=x.notification.kind, fired_at=x.notification.at, outcome="delivered")
             for x in first.dispatches]
    first.run_until(T0 + 1000)

    restarted = driver()
    restarted.observe(event())  # the replay of rpm.alerts: same record time, same run
    restarted.router.restore(audit)
    restarted.now = T0 + 400
    restarted.run_until(T0 + 1000)
    assert restarted.steps() == [s for s in first.steps() if s[0] > 400] == [(910, "step", 2, "physician")]


def test_audit_rows_read_back_from_influxdb_become_sent_records() -> None:
    rows = [
        {"group": "critical|p0001", "run": T0, "step": 1, "kind": "step", "fired_at": T0 + 310, "alert_ids": "a,b",
         "outcome": "failed"},
        {"group": "critical|p0001", "run": T0, "step": 1, "kind": "escalation", "fired_at": T0 + 330,
         "alert_ids": "a", "outcome": "skipped"},
        {"group": "", "run": 0.0, "step": 0, "kind": "", "fired_at": T0, "alert_ids": "a", "outcome": "skipped"},
        {"group": "x", "run": 0.0, "step": 0, "kind": "step", "fired_at": T0, "outcome": "acknowledged"},
        {"group": "x", "run": "bad", "step": 0, "kind": "step", "fired_at": T0, "outcome": "delivered"},
    ]
    got = sent_records(rows)
    assert [(r.kind, r.step, r.alert_ids) for r in got] == [("step", 1, ("a", "b")), ("escalation", 1, ("a",))]
    d = driver()
    d.fail = {"oncall"}
    d.observe(event())
    d.router.restore([*got, SentRecord(group="critical|p0001", run=T0, step=0, kind="step", fired_at=T0 + 10,
                                       outcome="delivered")])
    d.now = T0 + 331
    d.run_until(T0 + 340)
    assert d.steps() == [(331, "step", 2, "physician")]  # step 1 was given up before the restart


def test_caregivers_get_a_notice_on_critical_alerts_and_a_daily_summary() -> None:
    family = '  family: {channels: [{type: webhook, name: fam, url: "https://f.example/", secret_env: HOOK_SECRET}]}\n'
    text = ROUTES.replace("escalations:", family + "escalations:") + """digests:
  family:
    receiver: family
    match: {patient: [p0001]}
    daily_at: "08:00"
    on_critical: true
"""
    d = driver(text)
    d.run_until(T0)  # the service starts
    d.observe(event(), at=T0 + 1)
    d.observe(event(patient="p0002"), at=T0 + 2)
    d.run_until(T0 + 86400)
    family = [x.notification for x in d.dispatches if x.notification.receiver == "family"]
    assert [(n.kind, n.patient) for n in family] == [("caregiver", "p0001"), ("digest", "p0001")]
    daily = family[1]
    assert dt.datetime.fromtimestamp(daily.at, dt.UTC).strftime("%H:%M") == "08:00"
    assert [a.rule for a in daily.alerts] == ["glucose_low"]


@pytest.mark.parametrize(("start", "end", "local", "inside"), [
    ("22:00", "07:00", "2025-11-25T23:30", True),
    ("22:00", "07:00", "2025-11-26T06:59", True),
    ("22:00", "07:00", "2025-11-26T07:00", False),
    ("08:00", "17:00", "2025-11-25T12:00", True),
    ("08:00", "17:00", "2025-11-29T12:00", False),  # a Saturday
    ("22:00", "07:00", "2025-03-30T02:30", True),  # the night the clocks go forward
])
def test_time_windows_in_their_own_zone(start: str, end: str, local: str, inside: bool) -> None:
    tz = ZoneInfo("Europe/Berlin")
    h1, m1 = map(int, start.split(":"))
    h2, m2 = map(int, end.split(":"))
    days = frozenset(range(5)) if start == "08:00" else frozenset(range(7))
    window = TimeWindow(name="w", start_min=h1 * 60 + m1, end_min=h2 * 60 + m2, days=days, tz=tz)
    t = dt.datetime.fromisoformat(local).replace(tzinfo=tz).timestamp()
    assert window.contains(t) is inside
    if inside and start == "22:00":
        assert dt.datetime.fromtimestamp(window.end_after(t), tz).strftime("%H:%M") == "07:00"


def test_a_re_alarm_after_an_acknowledgement_starts_the_chain_again_and_a_replayed_raise_does_not() -> None:
    """The worker raises an acknowledged alert again when it is still open after its re-alarm
    interval (acknowledged is not resolved): the chain starts again from step 0."""
    d = driver()
    d.observe(event())
    d.run_until(T0 + 60)
    d.ack(A1)
    d.observe(event(), at=T0 + 30)  # the original raise, redelivered: older than the ack, nothing new
    d.run_until(T0 + 900)
    assert [s[2] for s in d.steps()] == [0]
    d.observe(event(), at=T0 + 960)  # the re-alarm
    d.run_until(T0 + 960 + 6 * 60)
    assert [(s[0], s[2]) for s in d.steps()] == [(10, 0), (970, 0), (1270, 1)]


def test_an_ack_in_another_patients_name_does_not_stop_the_chain() -> None:
    """rpm.alert-acks names a patient and an alert: the patient's device picks the alert ids it acknowledges
    (the notifier signs them), so an ack in p0002's name stopped p0001's paging before."""
    d = driver()
    d.observe(event(severity="critical"))
    d.take(d.router.acknowledge(A1, by="patient (edge agent)", at=T0 + 20, source="edge-agent", patient="p0002"))
    assert not d.router.is_acknowledged(A1)
    d.take(d.router.acknowledge(A1, by="patient (edge agent)", at=T0 + 21, source="edge-agent", patient="p0001"))
    assert d.router.is_acknowledged(A1)


def test_an_ack_in_another_patients_name_read_before_the_alert_does_not_count_either() -> None:
    d = driver()
    d.take(d.router.acknowledge(A1, by="patient (edge agent)", at=T0 + 3, source="edge-agent", patient="p0002"))
    d.observe(event(), at=T0 + 1)
    assert not d.router.is_acknowledged(A1)
