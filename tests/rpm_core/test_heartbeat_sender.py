"""The one way every component sends its heartbeats (rpm_core.technical.HeartbeatSender)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from rpm_core.signing import KeyRing
from rpm_core.technical import (
    HEARTBEATS_TOPIC,
    Heartbeat,
    HeartbeatSender,
    HeartbeatSignatureError,
    read_heartbeat,
)

_LOG = logging.getLogger("test.heartbeats")


def _beat(n: int = 0, state: str = "running") -> Heartbeat:
    return Heartbeat(component="station", instance="desk:8080", time=1000.0 + n, state=state,  # type: ignore[arg-type]
                     messages=n)


async def test_a_heartbeat_is_sent_signed_with_the_components_keys() -> None:
    keys = KeyRing.generate("k1")
    sent: list[tuple[bytes, bytes, object]] = []

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        sent.append((key, value, headers))

    assert await HeartbeatSender(send, keys=keys, what="this station", logger=_LOG).send(_beat(3))
    [(key, value, headers)] = sent
    assert key == b"station:desk:8080"  # one instance's heartbeats stay in order on any partition count
    assert read_heartbeat(keys, value, headers) == _beat(3)
    with pytest.raises(HeartbeatSignatureError):  # a station's heartbeat must carry the signature
        read_heartbeat(keys, value, None)


async def test_without_keys_the_heartbeat_goes_unsigned() -> None:
    sent: list[object] = []

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        sent.append(headers)

    assert await HeartbeatSender(send, keys=None, what="this bridge", logger=_LOG).send(_beat())
    assert sent == [None]


async def test_a_failing_send_never_reaches_the_component_and_is_said_once_per_streak(
        caplog: pytest.LogCaptureFixture) -> None:
    """Kafka refusing, or not answering within the deadline: False, logged once until it works again."""
    outcomes: list[str] = ["refuse", "hang", "refuse", "ok", "refuse", "ok"]

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        what = outcomes.pop(0)
        if what == "refuse":
            raise ConnectionError("broker refused")
        if what == "hang":
            await asyncio.Event().wait()  # never answers: the deadline ends it

    sender = HeartbeatSender(send, keys=None, what="this notifier", logger=_LOG)
    with caplog.at_level(logging.INFO, logger=_LOG.name):
        results = [await sender.send(_beat(i), within_s=0.05) for i in range(6)]
    assert results == [False, False, False, True, False, True]
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", f"heartbeat to {HEARTBEATS_TOPIC} not sent (ConnectionError: broker refused): the watchdog "
                    "will report this notifier as silent"),
        ("INFO", f"heartbeats reach {HEARTBEATS_TOPIC} again (3 not sent)"),
        ("WARNING", f"heartbeat to {HEARTBEATS_TOPIC} not sent (ConnectionError: broker refused): the watchdog "
                    "will report this notifier as silent"),
        ("INFO", f"heartbeats reach {HEARTBEATS_TOPIC} again (1 not sent)"),
    ]
    assert sender.missed == 0


async def test_forever_sends_the_current_heartbeat_until_stopped_and_then_returns() -> None:
    stop = asyncio.Event()
    made: list[int] = []
    sent: list[bytes] = []

    def make() -> Heartbeat:
        made.append(len(made))
        return _beat(made[-1])

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        sent.append(value)
        stop.set()  # stop once the first heartbeat is out: forever must return, not wait out its interval

    async with asyncio.timeout(60):  # a generous bound for a loaded box; it returns at once
        await HeartbeatSender(send, keys=None, what="this bridge", logger=_LOG).forever(make, stop)
    assert made == [0] and sent == [_beat(0).encode()]


async def test_forever_goes_on_after_failures() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("not yet")
        stop.set()

    sender = HeartbeatSender(send, keys=None, what="this bridge", logger=_LOG)
    task = asyncio.create_task(sender.forever(_beat, stop))
    async with asyncio.timeout(60):  # two sends, one interval (5 s) apart
        await task
    assert len(calls) == 2 and sender.missed == 0


async def test_the_last_heartbeat_says_stopping_and_says_so_when_it_cannot(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[bytes] = []

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        sent.append(value)

    assert await HeartbeatSender(send, keys=None, what="this bridge", logger=_LOG).last(_beat(state="stopping"))
    assert read_heartbeat(None, sent[0]).state == "stopping"

    async def refuse(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        raise ConnectionError("gone")

    with caplog.at_level(logging.WARNING, logger=_LOG.name):
        assert not await HeartbeatSender(refuse, keys=None, what="this bridge", logger=_LOG).last(
            _beat(state="stopping"))
    assert "the watchdog may report this bridge as silent" in caplog.records[-1].getMessage()
