"""What ``rpm hl7 follow`` tells ``rpm watchdog``: a nurse call that stops getting alerts is noticed.

Unit tests of :class:`hl7out.follow.FollowHealth` (a clock passed in), and the follower itself on
real Tansu against a receiver that refuses every connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from hl7out.cli import follower_instance
from hl7out.follow import DEADLETTER_HOLD_S, NOT_DELIVERING_AFTER_S, FollowHealth, follow
from hl7out.messages import Header
from hl7out.sender import Endpoint, Outgoing, Policy, Receipt, Sender
from rpm_app.services import Stack
from rpm_core.host import free_port
from rpm_core.signing import KeyRing
from rpm_core.technical import HeartbeatSignatureError, decode_heartbeat, read_heartbeat, sign_heartbeat
from rpm_core.wire import is_valid_id
from tests.people.support import event, produce

ENDPOINT = "mllp://nurse-call.example:6662"
MESSAGE = Outgoing("c1", "MSH|...", "p0042", "alert", "glucose_low", "critical", "a1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


def health() -> tuple[FollowHealth, Clock]:
    clock = Clock()
    return FollowHealth(instance="host:rpm-hl7-nursecall", endpoint=ENDPOINT, clock=clock), clock


def test_alerts_that_wait_a_minute_with_none_delivered_make_the_follower_stuck_until_one_is_delivered() -> None:
    h, clock = health()
    assert h.heartbeat().healthy and h.heartbeat().problem is None
    h.sending()
    clock.now += NOT_DELIVERING_AFTER_S - 1
    assert h.heartbeat().healthy  # a slow receiver, not yet a stuck one
    h.done(Receipt(MESSAGE, "deadlettered", 6, "gave up after 6 attempts: no ACK within 10 s"))
    h.sending()  # the next alert: the wait goes on from the first, since none was delivered
    clock.now += 1
    beat = h.heartbeat()
    assert not beat.healthy and beat.component == "hl7"
    assert f"delivered no alert to {ENDPOINT} for 60 s while alerts wait" in (beat.problem or "")
    h.done(Receipt(MESSAGE, "delivered", 1, "AA"))
    assert h.heartbeat().healthy
    h.sending()
    clock.now += NOT_DELIVERING_AFTER_S
    assert not h.heartbeat().healthy
    h.idle()  # nothing left to send (the receiver may still be down: the dead letters say so)
    assert h.heartbeat().healthy


def test_dead_lettered_messages_are_a_warning_for_a_quarter_of_an_hour_without_the_receivers_words() -> None:
    """The warning is told to every ward: the receiver's AR text may name a patient, so it is left out."""
    h, clock = health()
    h.done(Receipt(MESSAGE, "deadlettered", 1, "AR: unknown patient p0042 (Jane Doe)"))
    clock.now += 10
    h.done(Receipt(MESSAGE, "deadlettered", 0, "alert refused: not signed"))
    beat = h.heartbeat()
    assert beat.healthy and beat.problem is not None
    assert "2 alert message(s) in the last 15 min were dead-lettered, not delivered to " + ENDPOINT in beat.problem
    assert "not encodable, or not signed by rpm" in beat.problem
    h.done(Receipt(MESSAGE, "deadlettered", 1, "AR: unknown patient p0042 (Jane Doe)"))
    beat = h.heartbeat()
    assert "(the last: rejected by the receiver (AR))" in (beat.problem or "")
    assert "p0042" not in (beat.problem or "") and "Jane" not in (beat.problem or "")
    clock.now += DEADLETTER_HOLD_S + 1
    assert h.heartbeat().problem is None


def test_the_heartbeat_counts_what_was_sent_and_dead_lettered_and_is_signed_with_the_keys() -> None:
    h, _clock = health()
    h.stats.sent, h.stats.skipped, h.stats.deadlettered = 5, 2, 1
    beat = decode_heartbeat(h.heartbeat().encode())
    assert (beat.component, beat.instance, beat.messages, beat.deadlettered) == (
        "hl7", "host:rpm-hl7-nursecall", 7, 1)
    assert decode_heartbeat(h.heartbeat("stopping").encode()).state == "stopping"
    keys = KeyRing.generate("k1")
    value, headers = sign_heartbeat(keys, h.heartbeat())
    assert read_heartbeat(keys, value, headers).component == "hl7"
    with pytest.raises(HeartbeatSignatureError):  # a forged follower heartbeat cannot hide a dead one
        read_heartbeat(keys, value, None)


@pytest.mark.parametrize(("host", "group"), [
    ("desk-7.ward.example", "rpm-hl7-nursecall"),
    ("höst with spaces", "rpm-hl7"),
    ("h" * 80, "rpm-hl7-" + "x" * 80),
])
def test_the_followers_name_is_always_an_id_a_heartbeat_can_carry(host: str, group: str) -> None:
    name = follower_instance(host, group)
    assert is_valid_id(name) and name.endswith(group[-20:])


@pytest.mark.services
async def test_a_follower_whose_receiver_refuses_every_connection_says_it_is_stuck(stack: Stack,
                                                                                   tmp_path: Path) -> None:
    """The follower on real Tansu, its receiver's port closed: the alert it takes is waiting, and the
    heartbeat a minute on (by the follower's clock) says it is stuck, naming the receiver."""
    bootstrap = stack.settings.kafka_bootstrap()
    keys = stack.settings.key_ring()
    clock = Clock()
    taken = asyncio.Event()

    class Watched(FollowHealth):
        def sending(self) -> None:
            super().sending()
            taken.set()

    endpoint = Endpoint("127.0.0.1", free_port())  # nothing listens there
    h = Watched(instance="host:rpm-hl7-test", endpoint=str(endpoint), clock=clock)

    async def deadletter(_message: Outgoing, _reason: str) -> None:
        return None

    async def after_send(_receipt: Receipt) -> None:
        return None

    sender = Sender(endpoint=endpoint, policy=Policy(timeout_s=1.0, retries=1000, backoff_max_s=0.2),
                    on_attempt=lambda _a: None, deadletter=deadletter)
    stop = asyncio.Event()
    group = f"rpm-hl7-health-{free_port()}"
    task = asyncio.create_task(follow(bootstrap=bootstrap, sender=sender, header=Header(), stop=stop,
                                      after_send=after_send, from_beginning=True, group=group, keys=keys,
                                      health=h))
    try:
        alert = event("p0007", "glucose_low", state="raised", severity="critical", metric="glucose", value=48.0,
                      since=1_780_000_000.0)
        await produce(bootstrap, "rpm.alerts", [(b"p0007", orjson.dumps(alert))], keys=keys)
        async with asyncio.timeout(120):  # a loaded 2-core box; it is taken within seconds
            await taken.wait()
        clock.now += NOT_DELIVERING_AFTER_S
        beat = h.heartbeat()
        assert not beat.healthy and f"delivered no alert to {endpoint}" in (beat.problem or "")
        assert h.stats.delivered == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sender.close()
