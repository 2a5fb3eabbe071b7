"""``rpm.heartbeats`` created by the broker with several partitions: every heartbeat is still read.

A topic is created at its first touch by a broker that auto-creates (Kafka with
``auto.create.topics.enable``, Tansu), with the broker's default partition count, when a station or
an HL7 follower (which create no topics) touched it before the watchdog did. Heartbeats were sent
without a key and read from partition 0 alone: the watchdog missed most of them and reported live
components as silent (seen as a flaky chaos test). Real Tansu; the watchdog's own service in process.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from rpm_app.services import Stack
from rpm_core import topics
from rpm_core.technical import Heartbeat, HeartbeatSender, heartbeat_key
from rpm_core.topics import partition_for
from stream.watchdog import Watchdog, WatchdogConfig, WatchdogService
from tests.chaos.test_technical_alarms import until

PARTITIONS = 4
_LOG = logging.getLogger("test.heartbeat_partitions")


@pytest.mark.services
async def test_the_watchdog_reads_the_heartbeats_of_every_partition_and_each_instance_keeps_its_order(
        stack: Stack) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    bootstrap = stack.settings.kafka_bootstrap()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics.HEARTBEATS, PARTITIONS, 1)])  # as a broker's auto-create does
    finally:
        await admin.close()
    stations = [f"desk-{n}:8080" for n in range(12)]
    used = {partition_for(heartbeat_key(Heartbeat(component="station", instance=s, time=0.0)).decode(), PARTITIONS)
            for s in stations}
    assert used - {0}, "some of these instances' heartbeats land beyond partition 0"

    keys = stack.settings.key_ring()
    service = WatchdogService(bootstrap=bootstrap, instance="rpm-watchdog-test", keys=keys, watchdog=Watchdog(
        config=WatchdogConfig(), partition_of=partition_for))
    stop = asyncio.Event()
    watching = asyncio.create_task(service.run(stop))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        await producer.send_and_wait(topics.HEARTBEATS, value, key=key, headers=headers)

    sender = HeartbeatSender(send, keys=keys, what="a test station", logger=_LOG)

    def every_station_watched() -> bool:
        return {f"station:{s}" for s in stations} <= set(service.health()["watched"])

    try:
        async def beat() -> bool:
            for s in stations:
                assert await sender.send(Heartbeat(component="station", instance=s, time=time.time()))
            return every_station_watched()

        await until(beat, within=120, what="the watchdog to watch every station", procs=())
        for s in stations:  # each says it stops right after a last "running": read in order, none is missed
            assert await sender.send(Heartbeat(component="station", instance=s, time=time.time()))
            assert await sender.last(Heartbeat(component="station", instance=s, time=time.time(),
                                               state="stopping"))
        await until(lambda: not any(w.startswith("station:") for w in service.health()["watched"]), within=120,
                    what="the watchdog to stop watching every station, which said it stops", procs=())
        assert not [rule for rule, _scope in service.watchdog.active if rule.startswith("tech.station")]
    finally:
        stop.set()
        await asyncio.wait_for(watching, timeout=60)
        await producer.stop()


async def test_the_minute_partition_check_never_stalls_or_ends_the_watchdog(caplog: pytest.LogCaptureFixture) -> None:
    """Kafka's metadata refusing, or not answering: logged, bounded, and the watchdog goes on."""
    from aiokafka.errors import KafkaConnectionError

    class RefusingClient:  # aiokafka's client, which the check asks for fresh metadata
        async def fetch_all_metadata(self) -> None:
            raise KafkaConnectionError("no broker")

    class SilentClient:
        async def fetch_all_metadata(self) -> None:
            await asyncio.Event().wait()  # never answers

    class Refusing:
        _client = RefusingClient()

    class Silent:
        _client = SilentClient()

    service = WatchdogService(bootstrap="unused:9092", instance="w", watchdog=Watchdog(
        config=WatchdogConfig(), partition_of=partition_for))
    with caplog.at_level(logging.WARNING, logger="stream.watchdog"):
        await service._recheck_partitions(Refusing())
        async with asyncio.timeout(60):  # bounded by RECHECK_WITHIN_S (5 s); 60 for a loaded box
            await service._recheck_partitions(Silent())
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"watchdog cannot check the partitions of {topics.HEARTBEATS} ({kind}); it tries again in a "
                    "minute" for kind in ("KafkaConnectionError", "TimeoutError")]
