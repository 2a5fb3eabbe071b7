"""``rpm hl7 follow``: rpm.alerts (Tansu) → ORU^R40 to a real MLLP listener, live, resuming after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from hl7out.follow import change_from_event
from rpm_app.services import Stack
from tests.hl7out.listener import Script, listening
from tests.people.support import event, produce
from tests.support.influx import rows
from tests.support.procs import eventually, rpm_env, running, spawn


def test_events_that_are_not_a_patients_alert_change_are_skipped() -> None:
    good = event("p0001", "glucose_low", state="raised", severity="critical", metric="glucose", value=50.0)
    change = change_from_event(orjson.dumps(good))
    assert change is not None and (change.patient, change.state, change.value) == ("p0001", "raised", 50.0)
    ward_wide = {**good, "patient": None, "kind": "technical", "rule": "tech.ward_silent"}
    for bad in (b"", b"[]", b"{not json", orjson.dumps(ward_wide), orjson.dumps({**good, "state": "exploded"}),
                orjson.dumps({**good, "patient": "p 1"})):
        assert change_from_event(bad) is None, bad
    device = {**good, "kind": "technical", "rule": "tech.device.battery_low", "value": None}
    tech = change_from_event(orjson.dumps(device))
    assert tech is not None and tech.kind == "technical" and tech.value is None


@pytest.mark.services
def test_follow_forwards_live_alerts_and_resumes_where_it_stopped(stack: Stack, tmp_path: Path) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    url, db = stack.settings.influx_url or "", stack.settings.influx_db
    first = [event("p0001", "glucose_low", state=s, severity="critical", metric="glucose", value=v, by=b)
             for s, v, b in (("raised", 50.0, None), ("acknowledged", None, "Ana Lima"), ("cleared", 90.0, None))]
    noise = [b"{not json", orjson.dumps({**first[0], "patient": None, "kind": "technical", "rule": "tech.x"})]
    keys = stack.settings.key_ring()
    assert keys is not None, "the stack signs, as production should"
    forged = orjson.dumps(event("p0001", "glucose_low", state="raised", severity="critical", since=1764000000.0))
    asyncio.run(produce(bootstrap, "rpm.alerts", [(b"p0001", orjson.dumps(e)) for e in first]
                        + [(b"p0001", n) for n in noise], keys=keys))
    asyncio.run(produce(bootstrap, "rpm.alerts", [(b"p0001", forged)]))  # unsigned: never sent to the hospital
    script = Script()
    env = rpm_env(stack, mqtt_user=None)
    with listening(script) as (host, port):
        argv = ["hl7", "follow", "--to", f"mllp://{host}:{port}", "--from-beginning"]
        follower = spawn("hl7-follow", argv, env, tmp_path)
        with running(follower):
            eventually(lambda: len(script.accepted), lambda n: n >= 3, timeout=120, what="three ORU^R40 accepted",
                       watch=(follower,))
        phases = [next(o.obx.obx_5.value for o in m.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION[0]
                       .ORU_R01_OBSERVATION if "EVENT_PHASE" in o.obx.obx_3.value) for m in script.accepted]
        assert phases == ["start", "update", "end"]
        assert "3 alert messages sent" in follower.log_path.read_text() and "2 records skipped" in (
            follower.log_path.read_text())

        later = event("p0002", "tachycardia", state="raised", since=1764200000.0)
        asyncio.run(produce(bootstrap, "rpm.alerts", [(b"p0002", orjson.dumps(later))], keys=keys))
        again = spawn("hl7-follow-2", argv, env, tmp_path)
        with running(again):
            eventually(lambda: len(script.accepted), lambda n: n >= 4, timeout=120, what="the new alert",
                       watch=(again,))
    ids = [m.msh.msh_10.value for m in script.accepted]
    assert len(ids) == 4 == len(set(ids)), "the restarted follower went on after the committed offsets"
    assert script.accepted[-1].ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.pid.pid_3.value.startswith("p0002^")
    delivered = rows(url, db, "SELECT * FROM \"notifications\" WHERE \"channel\" = 'hl7' AND \"outcome\" = 'delivered'")
    assert len(delivered) == 4 and {r["kind"] for r in delivered} == {"hl7-alert"}
    refused = rows(url, db, "SELECT * FROM notifications WHERE channel = 'hl7' AND outcome = 'deadlettered'")
    assert len(refused) == 1 and "not signed" in refused[0]["detail"]


def test_an_alert_that_cannot_be_encoded_is_dead_lettered_and_the_follower_goes_on() -> None:
    """It raised out of the follower before: the offset was never committed, so the follower stopped on
    this record at every restart and no later alert reached the hospital."""
    from hl7out.follow import FollowHealth, _forward
    from hl7out.messages import Header
    from hl7out.sender import Endpoint, Outgoing, Policy, Receipt, Sender

    dead: list[tuple[Outgoing, str]] = []
    receipts: list[Receipt] = []

    async def deadletter(message: Outgoing, reason: str) -> None:
        dead.append((message, reason))

    async def after_send(receipt: Receipt) -> None:
        receipts.append(receipt)

    sender = Sender(endpoint=Endpoint.parse("mllp://127.0.0.1:9"), policy=Policy(), on_attempt=lambda _a: None,
                    deadletter=deadletter)
    health = FollowHealth(instance="h:rpm-hl7", endpoint=str(sender.endpoint))
    stats = health.stats
    bad = orjson.dumps(event("p0001", "r" * 1000, state="raised"))  # a rule name hl7apy refuses
    asyncio.run(_forward(bad, sender, Header(), health, after_send))
    assert stats.deadlettered == 1 and [r.outcome for r in receipts] == ["deadlettered"]
    [(message, reason)] = dead
    assert message.text.encode() == bad and "cannot be encoded" in reason
