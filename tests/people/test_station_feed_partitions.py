"""A nurse station reads every partition of ``rpm.alerts``, including those that appear while it runs.

Workers scaled out with more partitions of ``rpm.alerts`` and ``rpm.alert-acks`` (on Kafka by adding
partitions; on Tansu, which has no CreatePartitions and keeps topics in memory only, by the topics
being created again, after a restart or by hand): a station that kept reading the partitions it found
at start would never show the alerts of patients on the new ones, and would still report itself
healthy. A private Tansu (the shared one's topics are other tests' too): the topics start with one
partition, the station shows an alert on it, the topics are created again with three, and an alert
on a new partition reaches the station's board.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from rpm_app.services import start_tansu
from rpm_core.roster import ALL_WARD, default_roster
from rpm_core.topics import ALERT_ACKS, ALERTS
from station import nurse_station
from station.nurse_station import AlertBoard, AlertFeed
from tests.chaos.test_technical_alarms import until
from tests.people.support import event

pytestmark = pytest.mark.services


def shown(board: AlertBoard, patient: str) -> bool:
    return any(a.patient == patient for a in board.alerts.values())


async def _send(bootstrap: str, topic: str, partition: int, key: bytes, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


async def test_alerts_on_partitions_added_while_the_station_runs_reach_its_screens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The station starts before the topics exist (it waits for them: they appear within the second
    after), then the topics are created again with more partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    monkeypatch.setattr(nurse_station, "PARTITIONS_RECHECK_S", 0.5)
    kafka = start_tansu(tmp_path / "tansu")
    bootstrap = f"{kafka.host}:{kafka.port}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    board = AlertBoard(ward=ALL_WARD, roster=default_roster({}))
    feed = AlertFeed(board, bootstrap=bootstrap)
    task = asyncio.create_task(feed.run())
    try:
        await until(lambda: "waiting for Kafka topics" in caplog.text, within=90,
                    what="the station waiting for its topics", procs=(kafka,))
        await admin.create_topics([NewTopic(ALERTS, 1, 1), NewTopic(ALERT_ACKS, 1, 1)])
        first = event("p0001", "tachycardia", since=1_780_000_000.0)
        await _send(bootstrap, ALERTS, 0, b"p0001", orjson.dumps(first))
        await until(lambda: shown(board, "p0001"), within=90, what="the first alert on the board", procs=(kafka,))

        await admin.delete_topics([ALERTS, ALERT_ACKS])
        await admin.create_topics([NewTopic(ALERTS, 3, 1), NewTopic(ALERT_ACKS, 3, 1)])
        late = event("p0002", "bradycardia", since=1_780_000_100.0, value=38.0)
        await _send(bootstrap, ALERTS, 2, b"p0002", orjson.dumps(late))
        await until(lambda: shown(board, "p0002"), within=90,  # never, for a station that kept its first partitions
                    what="the alert on a partition added since on the board", procs=(kafka,))
        assert feed.connected
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await admin.close()
        kafka.stop()
