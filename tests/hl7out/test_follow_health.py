"""What ``rpm hl7 follow`` tells ``rpm watchdog``: a nurse call that stops getting alerts is noticed.

Unit tests of :class:`hl7out.follow.FollowHealth` (a clock passed in), the idle probe of the
receiver over real TCP, and the follower itself on real Tansu against a receiver that refuses every
connection, and one that goes away and comes back while no alert is sent.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import orjson
import pytest

from hl7out import follow as follow_module
from hl7out.cli import follower_instance
from hl7out.follow import DEADLETTER_HOLD_S, NOT_DELIVERING_AFTER_S, UNREACHABLE_AFTER_S, FollowHealth, follow
from hl7out.messages import AlertChange, Header, encode_alert
from hl7out.sender import Endpoint, Outgoing, Policy, Receipt, Sender
from rpm_app.services import Stack
from rpm_core.host import free_port
from rpm_core.signing import KeyRing
from rpm_core.technical import HeartbeatSignatureError, decode_heartbeat, read_heartbeat, sign_heartbeat
from rpm_core.wire import is_valid_id
from tests.hl7out.listener import Script, listening
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


def test_a_receiver_unreachable_while_nothing_is_sent_makes_the_follower_stuck_until_a_probe_reaches_it() -> None:
    """A nurse call that went away on a quiet night is told before the next alert needs it."""
    h, clock = health()
    refused = "cannot connect to nurse-call.example:6662: [Errno 111] Connection refused"
    h.probed(refused)
    clock.now += UNREACHABLE_AFTER_S - 1
    h.probed(refused)
    assert h.heartbeat().healthy  # one failed connection is not yet a receiver gone
    clock.now += 1
    beat = h.heartbeat()
    assert not beat.healthy
    assert f"it cannot reach {ENDPOINT} for 30 s, so the next alert would not get through" in (beat.problem or "")
    assert "Connection refused" in (beat.problem or "")
    h.probed(None)
    assert h.heartbeat().healthy and h.heartbeat().problem is None
    h.probed(refused)
    clock.now += UNREACHABLE_AFTER_S
    assert not h.heartbeat().healthy
    h.done(Receipt(MESSAGE, "delivered", 1, "AA"))  # it took an alert since: it is reachable
    assert h.heartbeat().healthy


def test_while_alerts_wait_the_follower_is_judged_by_their_delivery_not_by_the_last_probe() -> None:
    h, clock = health()
    h.probed("cannot connect to nurse-call.example:6662: timed out")
    clock.now += UNREACHABLE_AFTER_S
    h.sending()
    beat = h.heartbeat()
    assert beat.healthy and beat.problem is None  # retrying an alert for 30 s: not yet stuck
    clock.now += NOT_DELIVERING_AFTER_S
    assert "while alerts wait" in (h.heartbeat().problem or "")
    assert "cannot reach" not in (h.heartbeat().problem or "")


class Counting:
    """A TCP listener that counts connections and can drop them all (a receiver going away)."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.writers.append(writer)

        self.server = await asyncio.start_server(accept, "127.0.0.1", port)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()
        self.writers.clear()


def _sender(endpoint: Endpoint) -> Sender:
    async def deadletter(_message: Outgoing, _reason: str) -> None:
        return None

    return Sender(endpoint=endpoint, policy=Policy(timeout_s=5.0, retries=0), on_attempt=lambda _a: None,
                  deadletter=deadletter)


async def test_a_probe_opens_one_connection_keeps_it_and_opens_another_only_once_it_was_closed() -> None:
    receiver = Counting()
    port = await receiver.start()
    sender = _sender(Endpoint("127.0.0.1", port))
    try:
        assert await sender.probe(5.0) is None
        assert await sender.probe(5.0) is None
        assert receiver.connections == 1  # the kept connection counts: no connection per probe
        conn = sender._conn
        assert conn is not None
        sock = conn._writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):  # a vanished host is noticed in about a minute, not two hours
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 20
        await receiver.stop()
        async with asyncio.timeout(30):  # the receiver's close reaches the kept connection
            assert await conn._reader.read(1) == b""
        assert conn.closed
        why = await sender.probe(5.0)
        assert why is not None and f"cannot connect to 127.0.0.1:{port}" in why
        await receiver.start(port)
        assert await sender.probe(5.0) is None
        assert receiver.connections == 2
    finally:
        await sender.close()
        await receiver.stop()


async def test_the_connection_a_probe_opened_carries_the_next_alert() -> None:
    script = Script()
    with listening(script) as (host, port):
        sender = _sender(Endpoint(host, port))
        try:
            assert await sender.probe(5.0) is None
            kept = sender._conn
            change = AlertChange("a1", "p1", "glucose_low", "critical", "glucose", "raised", 1_780_000_000.0,
                                 "Glucose low", 50.0)
            cid, text = encode_alert(change, header=Header(), now_s=1_780_000_000.0)
            receipt = await sender.send(Outgoing(cid, text, "p1", "alert", "glucose_low", "critical", "a1"))
            assert receipt.outcome == "delivered" and script.answers == ["AA"]
            assert kept is not None and sender._conn is kept  # sent on the probe's connection, not a new one
        finally:
            await sender.close()


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


@pytest.mark.services
async def test_a_follower_with_nothing_to_send_notices_its_receiver_go_away_and_come_back(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real Tansu, no alert at all: the follower probes its receiver; once the receiver is gone for
    30 s (by the follower's clock) its heartbeat says it is stuck, naming the receiver; when the
    receiver is back, the next probe makes it healthy again."""
    monkeypatch.setattr(follow_module, "PROBE_INTERVAL_S", 0.2)
    clock = Clock()
    probes: asyncio.Queue[str | None] = asyncio.Queue()

    class Watched(FollowHealth):
        def probed(self, error: str | None) -> None:
            super().probed(error)
            probes.put_nowait(error)

    async def next_probe(want_failed: bool) -> str | None:
        async with asyncio.timeout(120):  # a loaded 2-core box; probes come every 0.2 s
            while True:
                got = await probes.get()
                if (got is not None) == want_failed:
                    return got

    receiver = Counting()
    port = await receiver.start()
    endpoint = Endpoint("127.0.0.1", port)
    h = Watched(instance="host:rpm-hl7-probe", endpoint=str(endpoint), clock=clock)
    sender = _sender(endpoint)

    async def after_send(_receipt: Receipt) -> None:
        return None

    stop = asyncio.Event()
    task = asyncio.create_task(follow(bootstrap=stack.settings.kafka_bootstrap(), sender=sender, header=Header(),
                                      stop=stop, after_send=after_send, group=f"rpm-hl7-probe-{free_port()}",
                                      keys=stack.settings.key_ring(), health=h))
    try:
        assert await next_probe(want_failed=False) is None
        assert h.heartbeat().healthy
        await receiver.stop()  # the nurse-call gateway goes away, on a quiet ward
        why = await next_probe(want_failed=True)
        assert why is not None and f"127.0.0.1:{port}" in why
        clock.now += UNREACHABLE_AFTER_S
        beat = h.heartbeat()
        assert not beat.healthy and f"it cannot reach {endpoint}" in (beat.problem or "")
        assert h.stats.sent == 0  # told with no alert waiting
        await receiver.start(port)
        await next_probe(want_failed=False)
        assert h.heartbeat().healthy
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sender.close()
        if receiver.server is not None and receiver.server.is_serving():
            await receiver.stop()
