"""Helpers for the people-facing tests: alert events as the worker publishes them, Kafka I/O."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson

from detectors.events import AlertEvent, alert_id
from rpm_core.signing import KeyRing

T = TypeVar("T")


def event(patient: str = "p0001", rule: str = "tachycardia", *, state: str = "raised", severity: str = "warning",
          since: float = 1764100000.0, time: float | None = None, value: float | None = 135.0,
          by: str | None = None, metric: str = "heart_rate") -> dict[str, Any]:
    """An ``rpm.alerts`` record value, built by the detectors' own ``AlertEvent``."""
    return AlertEvent(
        alert_id=alert_id(patient, rule, since), patient=patient, rule=rule, severity=severity,  # type: ignore[arg-type]
        metric=metric, state=state, time=since + 600 if time is None else time,  # type: ignore[arg-type]
        value=float("nan") if value is None else value, message=f"{rule} for {patient}", since=since, by=by,
    ).to_dict()


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], *,
                  keys: KeyRing | None = None) -> None:
    """Produce records and wait until Kafka has them (signed with ``keys``, as our producers sign)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            headers = keys.sign(topic, key, value) if keys is not None else None
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def produce_events(bootstrap: str, events: list[dict[str, Any]], *, keys: KeyRing | None = None) -> None:
    """Publish alert events to ``rpm.alerts`` keyed by patient, as the worker does (signed with ``keys``)."""
    await produce(bootstrap, "rpm.alerts", [(e["patient"].encode(), orjson.dumps(e)) for e in events], keys=keys)


async def read_topic(bootstrap: str, topic: str, *, want: int = 1, deadline_s: float = 30.0
                     ) -> list[tuple[bytes | None, bytes]]:
    """At least ``want`` records of ``topic`` from the beginning (key, value)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"test-{uuid.uuid4().hex[:8]}", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        async with asyncio.timeout(deadline_s):
            while len(out) < want:
                batch = await consumer.getmany(timeout_ms=500)
                out += [(r.key, r.value) for recs in batch.values() for r in recs]
    finally:
        await consumer.stop()
    return out


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion in a thread of its own (Playwright's sync API owns this thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def write_lines(url: str, db: str, lines: list[str], *, precision: str = "ms") -> None:
    """Write line protocol to InfluxDB (``/write``), in chunks."""
    import urllib.request

    from rpm_core.settings import split_influx_url

    url, auth = split_influx_url(url)  # credentials in the URL (tests' admin or writer) as a header
    for start in range(0, len(lines), 5000):
        body = "\n".join(lines[start:start + 5000]).encode()
        req = urllib.request.Request(f"{url}/write?db={db}&precision={precision}", data=body,  # noqa: S310 (http)
                                     method="POST", headers=auth.headers())
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            assert resp.status == 204


def alert_row(patient: str, rule: str, severity: str, state: str, t_s: float, *, alert: str = "a1",
              metric: str = "heart_rate", value: float | None = None, by: str | None = None,
              message: str = "message") -> str:
    """An ``alerts`` line exactly as the worker writes it (``rpm_core.lineprotocol.alert_line``)."""
    from rpm_core.lineprotocol import AlertPoint, alert_line

    return alert_line(AlertPoint(alert_id=alert, patient=patient, rule=rule, severity=severity, metric=metric,
                                 state=state, time_s=t_s, value=float("nan") if value is None else value,
                                 message=message, by=by))


async def until(condition: Callable[[], bool], *, deadline_s: float = 30.0) -> None:
    """Wait until ``condition()`` holds (polling: the conditions are other tasks' state)."""
    async with asyncio.timeout(deadline_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
