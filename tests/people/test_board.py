"""The nurse station's alert state (``AlertBoard``): built from events, idempotent, never losing a change."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpm_core.acks import Ack
from rpm_core.roster import default_roster, parse_roster
from station.nurse_station import AlertBoard, render_sparkline
from tests.people.support import event

OPEN = default_roster({})
REPO_RULES = Path(__file__).resolve().parents[2] / "alert_rules.yaml"


def board(roster=OPEN, ward: str = "all") -> AlertBoard:  # type: ignore[no-untyped-def]
    return AlertBoard(ward=ward, roster=roster, clock=lambda: 1764200000.0)


def ack(e: dict, by: str = "Ana", at: float = 1764100700.0) -> Ack:  # type: ignore[type-arg]
    return Ack(alert_id=e["alert_id"], patient=e["patient"], by=by, at=at, station="desk")


def test_a_raised_alert_is_active_and_each_change_bumps_the_sequence() -> None:
    b = board()
    raised = event()
    assert b.apply_alert(raised)
    assert [v.alert_id for v in b.active()] == [raised["alert_id"]] and b.seq == 1
    view = b.alerts[raised["alert_id"]]
    assert view.to_client()["state"] == "raised" and view.to_client()["value"] == 135.0
    assert not b.apply_alert(raised), "a redelivered event changes nothing"
    assert b.seq == 1


def test_active_alerts_sort_by_severity_then_newest_first() -> None:
    b = board()
    old_warning = event("p1", since=1000.0, time=2000.0)
    new_warning = event("p2", since=1000.0, time=3000.0)
    critical = event("p3", "glucose_low", severity="critical", metric="glucose", since=1000.0, time=1500.0)
    info = event("p4", "glucose_high", severity="info", metric="glucose", since=1000.0, time=9000.0)
    for e in (old_warning, new_warning, critical, info):
        b.apply_alert(e)
    assert [v.patient for v in b.active()] == ["p3", "p2", "p1", "p4"]


def test_life_cycle_raise_worsen_escalate_acknowledge_clear() -> None:
    b = board()
    first = event(severity="warning")
    b.apply_alert(first)
    b.apply_alert(event(severity="critical", time=first["time"] + 60, value=155.0))
    view = b.alerts[first["alert_id"]]
    assert view.severity == "critical" and view.value == 155.0 and view.active
    b.apply_alert(event(severity="critical", state="escalated", time=first["time"] + 400, value=None))
    assert view.to_client()["escalated"] and view.to_client()["state"] == "escalated"
    assert view.value == 155.0, "escalation has no value; the last one stays"

    assert b.apply_ack(ack(first))
    client = view.to_client()
    assert client["open"] and not client["alarming"] and client["state"] == "acknowledged"
    assert b.active() == [view], "acknowledged is not resolved: it stays on the list"
    assert client["ack"] == {"by": "Ana", "at": 1764100700.0, "station": "desk", "note": "", "confirmed": False,
                             "realarm_at": 1764100700.0 + 900, "recheck_at": None}
    assert not b.apply_ack(ack(first)), "the same ack twice is one ack"

    b.apply_alert(event(severity="critical", state="acknowledged", time=1764100701.0, value=None, by="Ana"))
    assert view.to_client()["ack"]["confirmed"]
    b.apply_alert(event(severity="critical", state="cleared", time=first["time"] + 900, value=100.0))
    assert view.to_client()["state"] == "cleared" and view.cleared_at == first["time"] + 900
    assert b.history()[0] is view and b.active() == []
    assert not b.apply_alert(event(severity="critical", time=first["time"] + 1000)), "cleared is final"


def test_raised_again_after_an_acknowledgement_is_active_again() -> None:
    b = board()
    first = event(severity="warning")
    b.apply_alert(first)
    b.apply_ack(ack(first))
    assert [v.alarming for v in b.active()] == [False]
    b.apply_alert(event(severity="critical", time=first["time"] + 120))
    assert [(v.severity, v.alarming) for v in b.active()] == [("critical", True)]


def test_an_ack_read_before_its_alert_is_applied_when_the_alert_arrives() -> None:
    b = board()
    raised = event()
    assert not b.apply_ack(ack(raised, at=1764100700.0))
    b.apply_alert(raised, wall=1764100650.0)
    assert b.alerts[raised["alert_id"]].acknowledged
    later = event("p2")
    b.apply_ack(ack(later, at=1764100700.0))
    b.apply_alert(later, wall=1764100900.0)
    assert not b.alerts[later["alert_id"]].acknowledged, "an ack older than the raise is not for this raise"


def test_only_the_wards_patients_are_shown() -> None:
    from rpm_core.roster import hash_password

    roster = parse_roster(f"""version: 1
wards:
  north: {{patients: [p0001]}}
  south: {{patients: [p0002]}}
stations:
  desk: {{ward: north, password_hash: "{hash_password('x', n=16, r=1, p=1)}"}}
""")
    b = board(roster, "north")
    assert b.apply_alert(event("p0001"))
    assert not b.apply_alert(event("p0002"))
    assert not b.apply_ack(ack(event("p0002")))
    assert [v.patient for v in b.active()] == ["p0001"]


def test_malformed_events_are_counted_not_applied() -> None:
    b = board()
    for bad in (None, [], {"alert_id": "x"}, {**event(), "state": "exploded"}, {**event(), "time": "soon"},
                {**event(), "patient": "p 1"}, {**event(), "value": float("inf")}):
        assert not b.apply_alert(bad)
    assert b.rejected == 7 and b.seq == 0


def test_catch_up_returns_exactly_what_changed_after_an_event_id() -> None:
    b = board()
    events = [event(f"p{i}") for i in range(5)]
    for e in events[:3]:
        b.apply_alert(e)
    last_seen = b.event_id(b.seq)
    for e in events[3:]:
        b.apply_alert(e)
    b.apply_ack(ack(events[0]))
    seq = b.seq_of(last_seen)
    assert seq == 3
    assert [v.patient for v in b.changes_since(seq)] == ["p3", "p4", "p0"]
    assert b.seq_of("otherboot-3") is None, "an id from an earlier run of the server means: full snapshot"
    assert b.seq_of(b.event_id(99)) is None, "an id from the future too"
    assert b.seq_of(None) is None and b.seq_of("garbage") is None
    snap = b.snapshot()
    assert snap["seq"] == b.seq and len(snap["active"]) == 5 and len(snap["history"]) == 0
    assert [a["alarming"] for a in snap["active"]] == [True] * 4 + [False], "acknowledged below the alarming"


def test_prune_forgets_old_closed_alerts_only() -> None:
    b = board()
    closed, open_ = event("p1", since=1000.0, time=2000.0), event("p2", since=1000.0, time=2000.0)
    b.apply_alert(closed)
    b.apply_alert(event("p1", state="cleared", since=1000.0, time=3000.0))
    b.apply_alert(open_)
    assert b.prune(now=3000.0 + 25 * 3600) == 1
    assert list(b.alerts) == [open_["alert_id"]]


def test_sparkline_svg_is_drawn_from_numbers_only() -> None:
    svg = render_sparkline([(0.0, 70.0), (60.0, 90.0), (120.0, 80.0)], metric="heart_rate")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<polyline" in svg and "<script" not in svg
    assert "no data" in render_sparkline([], metric="glucose")


# -- alarm lifecycle: acknowledged is not resolved -------------------------------------------------

T = 1764000000.0

def policy():  # type: ignore[no-untyped-def]
    from rpm_core.alarm_policy import parse_alarm_policy

    return parse_alarm_policy({"realarm_after": {"critical": "15m", "warning": "30m", "info": None},
                               "silence_max": {"critical": "15m", "warning": "30m"},
                               "rules": {"glucose_low": {"silence_max": {"critical": "10m"}}}})


def test_an_acknowledged_alert_still_open_after_its_interval_alarms_again_and_goes_to_the_top() -> None:
    b = AlertBoard(ward="all", roster=OPEN, clock=lambda: 0.0, policy=policy())
    low = event("p1", "glucose_low", severity="critical", metric="glucose", value=46.0, since=T + 1000.0,
                time=T + 1100.0)
    other = event("p2", "glucose_low", severity="critical", metric="glucose", value=50.0, since=T + 1000.0,
                  time=T + 1200.0)
    b.apply_alert(low, wall=T + 1100.0)
    b.apply_alert(other, wall=T + 1200.0)
    b.apply_ack(ack(low, at=T + 1300.0))
    assert [(v.patient, v.alarming) for v in b.active()] == [("p2", True), ("p1", False)]
    assert b.tick(now=T + 1300.0 + 899) == [], "not yet"
    changes = b.tick(now=T + 1300.0 + 900)
    assert [(c.action, c.view.patient) for c in changes] == [("realarm", "p1")]
    view = b.alerts[low["alert_id"]]
    assert view.alarming and view.realarm_count == 1 and view.to_client(b.policy)["state"] == "raised"
    assert [v.patient for v in b.active()] == ["p1", "p2"], "back to the top (latest alarm first)"
    assert b.tick(now=T + 1300.0 + 2000) == [], "alarms once per acknowledgement, then waits for a nurse"
    assert b.apply_ack(ack(low, by="Ben", at=T + 2400.0)), "a re-alarmed alert can be acknowledged again"
    assert not view.alarming and view.ack_by == "Ben"
    b.apply_alert(event("p1", "glucose_low", state="cleared", severity="critical", metric="glucose", since=T + 1000.0,
                        time=T + 2500.0, value=80.0))
    assert b.tick(now=T + 9999.0) == [] and b.history() == [view], "cleared: to the history, never alarms again"


def test_an_info_alert_never_realarms_and_a_technical_alert_cannot_be_acknowledged() -> None:
    b = AlertBoard(ward="all", roster=OPEN, clock=lambda: 0.0, policy=policy())
    info = event("p1", "glucose_high", severity="info", metric="glucose", value=200.0)
    b.apply_alert(info)
    b.apply_ack(ack(info, at=T + 1.0))
    assert b.tick(now=1e9) == []
    tech = technical()
    assert b.apply_alert(tech)
    assert not b.apply_ack(Ack(alert_id=tech["alert_id"], patient="p1", by="Ana", at=T + 2.0, station="desk"))
    assert b.alerts[tech["alert_id"]].alarming


def test_silence_is_refused_beyond_the_floor_and_ends_by_itself() -> None:
    from station.nurse_station import SilenceRefused

    b = AlertBoard(ward="all", roster=OPEN, clock=lambda: 5000.0, policy=policy())
    low = event("p1", "glucose_low", severity="critical", metric="glucose", value=46.0)
    brady = event("p2", "bradycardia", severity="critical", value=38.0)
    b.apply_alert(low)
    b.apply_alert(brady)
    for minutes in (10.5, 15, 60):
        with pytest.raises(SilenceRefused, match="at most 10 min"):
            b.silence(low["alert_id"], minutes, by="Ana", station="desk")
    for minutes in (float("inf"), float("nan"), -1):
        with pytest.raises(SilenceRefused, match="a number"):
            b.silence(low["alert_id"], minutes, by="Ana", station="desk")
    view = b.silence(brady["alert_id"], 15, by="Ana", station="desk")
    assert view.silenced(5000.0 + 899) and view.alarming, "silenced is still visible and still alarming"
    assert b.silence(low["alert_id"], 10, by="Ana", station="desk").silenced_until == 5600.0
    assert [(c.action, c.view.patient) for c in b.tick(now=5600.0)] == [("silence_ended", "p1")]
    assert b.alerts[low["alert_id"]].silenced_until is None


# -- technical alerts (contract in the project's notes: kind "technical") -----------------------------

def technical(patient: str | None = None, *, state: str = "raised", wards: list[str] | None = None,
              rule: str = "tech.workers_missing", at: float = 1764100000.0) -> dict:  # type: ignore[type-arg]
    """A technical alert as the watchdog produces it (``rpm_core.technical``)."""
    from rpm_core.technical import TechnicalAlert

    return TechnicalAlert(rule=rule, scope=patient or "", severity="critical", state=state,  # type: ignore[arg-type]
                          time=at, since=1764100000.0,
                          message="No worker is processing partitions 0-3: readings are not checked",
                          remedy="Restart the worker service (rpm worker)", component="worker",
                          wards=tuple(wards or ["*"]), patient=patient).to_dict()


def test_technical_alerts_reach_the_wards_they_name_and_clear_and_raise_again() -> None:
    from rpm_core.roster import hash_password

    roster = parse_roster(f"""version: 1
wards:
  north: {{patients: [p0001]}}
  south: {{patients: [p0002]}}
stations:
  desk: {{ward: north, password_hash: "{hash_password('x', n=16, r=1, p=1)}"}}
""")
    b = board(roster, "north")
    assert b.apply_alert(technical())
    assert b.apply_alert(technical(wards=["north"], rule="tech.ward_down"))
    assert not b.apply_alert(technical(wards=["south"], rule="tech.ward_silent"))
    assert b.apply_alert(technical("p0001", wards=["south"], rule="tech.device.battery_low")), "its patient is ours"
    assert not b.apply_alert(technical("p0002", wards=["south"], rule="tech.device.battery_low"))
    view = b.alerts[technical()["alert_id"]]
    client = view.to_client()
    assert client["kind"] == "technical" and client["patient"] is None and client["alarming"]
    assert client["remedy"].startswith("Restart") and client["component"] == "worker" and client["wards"] == ["*"]
    b.apply_alert(technical(state="cleared", at=1764100100.0))
    assert not view.open and view in b.history()
    assert b.apply_alert(technical(at=1764100200.0)) and view.open, "a cause that comes back raises it again"
    b.apply_alert(technical(state="cleared", at=1764100300.0))
    assert not b.apply_alert(technical(at=1764100250.0)) and not view.open, "an older raise does not reopen it"


def test_malformed_technical_alerts_are_rejected_and_clinical_ones_keep_their_checks() -> None:
    b = board()
    good = technical()
    bad = [{**good, "state": "acknowledged"}, {**good, "state": "escalated"}, {**good, "metric": "glucose"},
           {**good, "rule": "workers_missing"}, {**good, "wards": []}, {**good, "wards": "*"},
           {**good, "wards": ["north ward"]}, {**good, "value": 3.0}, {**good, "component": ["worker"]},
           {**good, "component": "toaster"}, {**good, "patient": "p 1"}, {**good, "kind": "other"},
           {**good, "kind": ["technical"]}, {**good, "wards": ["*"] * 1001}, {**good, "by": "Ana"},
           {**good, "alert_id": "made-up"}, {**good, "severity": "info"}]
    clinical = [{**event(), "patient": None}, {**event(), "metric": "technical"}, {**event(), "kind": "INOP"}]
    for doc in bad + clinical:
        assert not b.apply_alert(doc), doc
    assert b.rejected == len(bad) + len(clinical) and b.seq == 0
    assert b.apply_alert({**event(), "kind": "clinical"})
    long = {**good, "remedy": "x" * 5000}
    assert b.apply_alert(long) and len(b.alerts[good["alert_id"]].remedy) == 1000, "cut to the codec's length"


def test_an_ack_in_one_patients_name_does_not_acknowledge_another_patients_alert() -> None:
    """A patient's own device acknowledges through the notifier in its patient's name; the alert id it
    names must be that patient's (least privilege), also when the ack is read before the alert."""
    b = board()
    theirs, ours = event("p0002"), event("p0001")
    b.apply_alert(theirs)
    forged = Ack(alert_id=theirs["alert_id"], patient="p0001", by="Ana", at=1764100700.0, station="desk")
    assert not b.apply_ack(forged)
    assert not b.alerts[theirs["alert_id"]].acknowledged
    early = Ack(alert_id=ours["alert_id"], patient="p0002", by="Ana", at=1764100700.0, station="desk")
    b.apply_ack(early)  # before its alert: kept pending, then refused when the alert shows whose it is
    b.apply_alert(ours, wall=1764100650.0)
    assert not b.alerts[ours["alert_id"]].acknowledged
    assert b.apply_ack(ack(theirs)), "the patient's own ack still works"
