"""Kafka topic names (a contract, see DESIGN.md) and their creation."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Final, Literal

from aiokafka.partitioner import murmur2

from rpm_core.audit import TOPIC as AUDIT_TOPIC
from rpm_core.kafka_security import check_tls, kafka_client_kwargs
from rpm_core.technical import HEARTBEATS_TOPIC

_LOGGER = logging.getLogger(__name__)

READINGS: Final = "rpm.readings"
ALERTS: Final = "rpm.alerts"
ALERT_ACKS: Final = "rpm.alert-acks"
DEADLETTER: Final = "rpm.deadletter"
HEARTBEATS: Final = HEARTBEATS_TOPIC  # components' heartbeats for rpm watchdog (rpm_core.technical)
AUDIT: Final = AUDIT_TOPIC  # the audit trail (rpm_core.audit): one partition, one total order

# Patients are spread over partitions by key; each partition lives on one worker, so the
# partition count is the ceiling on how many workers can share the load.
DEFAULT_READINGS_PARTITIONS: Final = 8


async def ensure_topics(bootstrap: str, *, partitions: int = DEFAULT_READINGS_PARTITIONS) -> None:
    """Create the pipeline's topics if they do not exist (idempotent).

    The first Kafka call of every service: over TLS it first checks the brokers' certificate
    (:func:`~rpm_core.kafka_security.check_tls`), so a wrong CA is a clear error at start-up.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    await asyncio.to_thread(check_tls, bootstrap)
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(bootstrap))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {READINGS: partitions, ALERTS: partitions, ALERT_ACKS: partitions, DEADLETTER: 1, HEARTBEATS: 1,
                  AUDIT: 1}
        new = [NewTopic(n, p, 1) for n, p in wanted.items() if n not in existing]
        if new:
            await admin.create_topics(new)
            _LOGGER.info("created topics %s", ", ".join(t.name for t in new))
    finally:
        await admin.close()


async def partitions_now(consumer: Any, *names: str) -> dict[str, set[int]]:
    """The partitions each topic of ``names`` has, as Kafka's metadata says now (empty: no such topic).

    aiokafka's ``consumer.topics()`` fetches fresh metadata but leaves the cached copy that
    ``partitions_for_topic`` reads as it was, refreshed only every ``metadata_max_age_ms`` (5 min):
    a check every minute saw the partitions of minutes before, and a station started before the
    workers created its topics went on waiting that long after they existed. So the fresh metadata
    is read here (through the client: aiokafka has no public call that returns it)."""
    cluster = await consumer._client.fetch_all_metadata()
    return {name: set(cluster.partitions_for_topic(name) or ()) for name in names}


async def assign_every_partition(consumer: Any, topic: str, *, new_at: Literal["end", "beginning"] = "end") -> bool:
    """Assign ``consumer`` every partition ``topic`` has now (partition 0 if it does not exist yet),
    keeping the positions of those it already had; new ones start at their end or beginning.
    Whether the assignment grew.

    A topic of ours with one partition (``rpm.heartbeats``) may have been created by the broker at
    the first touch, before any of our services created it, with the broker's default count (Kafka's
    ``num.partitions``; Tansu: 4): a reader of partition 0 alone then missed most of the records
    spread over the others, and the watchdog reported live components as silent.
    """
    from aiokafka.structs import TopicPartition

    wanted = {TopicPartition(topic, p) for p in ((await partitions_now(consumer, topic))[topic] or {0})}
    had = set(consumer.assignment())
    if wanted <= had:
        return False
    positions = {tp: await consumer.position(tp) for tp in had}
    consumer.assign(sorted(wanted | had))
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    new = sorted(wanted - had)
    await (consumer.seek_to_end(*new) if new_at == "end" else consumer.seek_to_beginning(*new))
    if had:
        _LOGGER.warning("%s has %d partitions now: reading the new ones too", topic,
                        len({tp for tp in wanted | had if tp.topic == topic}))
    return True


@functools.lru_cache(maxsize=1 << 17)
def partition_for(patient: str, partitions: int) -> int:
    """The ``rpm.readings`` partition of ``patient``: Kafka's default partitioner on the id's bytes.

    The same function as the Java client's and aiokafka's ``DefaultPartitioner`` (murmur2, sign
    bit cleared, modulo the partition count): the bridge places readings with it, the workers'
    state table (``use_partitioner``) places the patient's state with it, and a worker computes
    which roster patients it owns with it. Cached: the bridge asks for every message, and murmur2
    is pure Python.
    """
    return int(murmur2(patient.encode()) & 0x7FFFFFFF) % partitions
