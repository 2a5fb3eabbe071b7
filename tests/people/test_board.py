"""The nurse station's alert state (``AlertBoard``): built from events, idempotent, never losing a change."""

from __future__ import annotations

from rpm_core.roster import default_roster, parse_roster
from stream.acks import Ack
from stream.nurse_station import AlertBoard, render_sparkline
from tests.people.support import event

OPEN = default_roster({})


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
    assert not client["active"] and client["state"] == "acknowledged"
    assert client["ack"] == {"by": "Ana", "at": 1764100700.0, "station": "desk", "confirmed": False}
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
    assert b.active() == []
    b.apply_alert(event(severity="critical", time=first["time"] + 120))
    assert [v.severity for v in b.active()] == ["critical"]


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
    assert snap["seq"] == b.seq and len(snap["active"]) == 4 and len(snap["history"]) == 1


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
