"""The nurse station's heartbeat, in process: what it tells ``rpm watchdog`` when its screens or its
audit cannot do their job, and the watchdog's alert from it (the frozen station, with real
processes, is in tests/chaos/test_technical_alarms.py)."""

from __future__ import annotations

from rpm_core.audit import QUEUE_MAX, AuditEvent, AuditTrail
from rpm_core.roster import default_roster
from rpm_core.technical import decode_heartbeat
from rpm_core.topics import partition_for
from station.nurse_station import AlertBoard, AlertFeed, Sparklines, StationState, station_heartbeat
from stream.watchdog import Watchdog, WatchdogConfig


async def test_the_heartbeat_says_when_the_screens_get_no_alerts_and_when_actions_are_not_recorded() -> None:
    roster = default_roster({})
    board = AlertBoard(ward="all", roster=roster)
    trail = AuditTrail(bootstrap="unused", keys=None, via="nurse-station")
    state = StationState(board=board, roster=roster, sender=None, sparklines=Sparklines(url=None, db="rpm"),
                         ward_name="All patients", trail=trail)
    feed = AlertFeed(board, bootstrap="unused")  # not connected: what a station cut off from Kafka has

    blind = decode_heartbeat(station_heartbeat(state, feed, instance="desk-host:8080").encode())
    assert (blind.component, blind.instance, blind.ward, blind.healthy) == ("station", "desk-host:8080", "all", False)
    assert blind.problem == "its alert feed cannot read rpm.alerts from Kafka, so its screens show no new alert"

    feed.connected = True
    assert station_heartbeat(state, feed, instance="desk-host:8080").problem is None
    for k in range(QUEUE_MAX + 2):  # Kafka away so long that the trail's queue filled: two actions lost
        trail.record(AuditEvent(action="ack", actor=f"nurse-{k}"))
    beat = decode_heartbeat(station_heartbeat(state, feed, instance="desk-host:8080").encode())
    assert beat.healthy and "2 audit entries of people's actions were lost" in (beat.problem or "")

    watchdog = Watchdog(config=WatchdogConfig(), partition_of=partition_for, started_at=0.0)
    watchdog.observe(beat, 100.0)
    raised = [a for t in (100.0, 111.0) for a in watchdog.evaluate(t) if a.rule.startswith("tech.station")]
    assert [(a.rule, a.state, a.severity, a.scope) for a in raised] == [
        ("tech.station_warning", "raised", "warning", "desk-host:8080")]
    assert "were lost" in raised[0].message
    stopping = station_heartbeat(state, feed, instance="desk-host:8080", status="stopping")
    assert decode_heartbeat(stopping.encode()).state == "stopping"


def test_forged_watchdog_heartbeats_do_not_keep_the_station_believing_it_is_supervised() -> None:
    """Someone who stopped rpm watchdog could write its heartbeats to rpm.heartbeats to keep every
    station quiet while nothing is watched; with signing keys only the watchdog's signed ones count."""
    from rpm_core.signing import KeyRing
    from rpm_core.technical import Heartbeat, sign_heartbeat
    from station.nurse_station import Supervision

    keys = KeyRing.generate("k1")
    board = AlertBoard(ward="all", roster=default_roster({}))
    now = [1000.0]
    supervision = Supervision(board, bootstrap="unused", timeout_s=45, clock=lambda: now[0], keys=keys)
    for _ in range(10):  # every 5 s for 50 s: an impostor's heartbeats, unsigned or signed with its own key
        now[0] += 5
        beat = Heartbeat(component="watchdog", instance="rpm-watchdog", time=now[0])
        supervision.note_beat(beat.encode(), None)
        supervision.note_beat(*sign_heartbeat(KeyRing.generate("k1"), beat))
        supervision.judge()
    assert supervision.forged == 20
    [lost] = [a for a in board.alerts.values() if a.rule == Supervision.RULE]
    assert lost.state == "raised" and "No word from rpm watchdog" in lost.message
    supervision.note_beat(*sign_heartbeat(keys, Heartbeat(component="watchdog", instance="rpm-watchdog",
                                                           time=now[0])))
    supervision.judge()
    assert [a.state for a in board.alerts.values() if a.rule == Supervision.RULE] == ["cleared"]
