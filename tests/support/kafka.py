"""Reading and writing Kafka topics in tests."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from rpm_core.signing import KeyRing


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]],
                  keys: KeyRing | None = None) -> None:
    """Produce records and wait until Kafka acknowledged them; signed with ``keys`` when given (a
    test standing in for a legitimate producer signs; one standing in for a forger does not)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in records:
            headers = keys.sign(topic, key, value) if keys is not None else None
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, *, idle_ms: int = 1500, deadline_s: float = 60) -> list[bytes]:
    """Every record of ``topic`` from the beginning, until it stays idle for ``idle_ms``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"test-{uuid.uuid4().hex[:8]}", enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                batch = await consumer.getmany(timeout_ms=idle_ms)
                if not batch:
                    return values
                values += [r.value for recs in batch.values() for r in recs]
    finally:
        await consumer.stop()
