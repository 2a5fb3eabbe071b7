"""Naive Faust worker: one record at a time, a scalar threshold per reading, influxdb-client Points.

The worker a developer writes first with Faust and influxdb-client: one agent iterating the
readings topic record by record (``async for record in stream``); for every sample a Python
threshold check, one ``influxdb_client.Point`` for the ``vitals`` measurement and, on a threshold
hit, one for ``alerts``. Points are buffered and written to InfluxDB 1.x's ``/write`` endpoint as
line protocol (``Point.to_line_protocol()``) every :data:`BATCH_POINTS` points or every
:data:`FLUSH_INTERVAL_S` (a timer). (influxdb-client's own ``WriteApi`` posts to ``/api/v2/write``,
which InfluxDB only serves from 1.8 on; the serializer is the same.)

Faust settings follow the project's Tansu notes (:mod:`stream.faust_tuning`: session timeout 6 s,
heartbeat 1 s; :mod:`stream.faust_adapter`: a 50 ms fetch wait) — without them a Tansu group join
stalls for minutes — but none of the pipeline's batching: no ``take()``, no vectorized detectors, no coalesced records.

Faust acknowledges a record when the agent asks for the next one, so records whose points still
sit in the buffer are already acknowledged: a crash loses up to one buffer. That is the naive
design, kept as is.

Run: ``python -m benchmarks.peers.naive.app worker -l warn`` with

| variable | meaning | default |
| --- | --- | --- |
| ``NAIVE_KAFKA`` | ``kafka://host:port`` | ``kafka://127.0.0.1:9092`` |
| ``NAIVE_TOPIC`` | readings topic | ``naive.readings`` |
| ``NAIVE_PARTITIONS`` | its partition count | ``4`` |
| ``NAIVE_INFLUX_URL`` / ``NAIVE_INFLUX_DB`` | InfluxDB 1.x and database | ``http://127.0.0.1:8086`` / ``naive`` |
| ``NAIVE_WEB_PORT`` / ``NAIVE_DATADIR`` | Faust web port and data directory | ``6066`` / ``./naive-faust-data`` |
| ``NAIVE_READY_FILE`` | written once partitions of the topic are assigned | unset |
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import faust
from influxdb_client import Point

from stream.faust_adapter import install_fetch_wait
from stream.faust_tuning import faust_settings

_LOGGER = logging.getLogger("naive.app")

APP_ID: Final = "naive-faust"
BATCH_POINTS: Final = 5_000
FLUSH_INTERVAL_S: Final = 1.0
RETRY_S: Final = 1.0

KAFKA: Final = os.environ.get("NAIVE_KAFKA", "kafka://127.0.0.1:9092")
TOPIC: Final = os.environ.get("NAIVE_TOPIC", "naive.readings")
PARTITIONS: Final = int(os.environ.get("NAIVE_PARTITIONS", "4"))
INFLUX_URL: Final = os.environ.get("NAIVE_INFLUX_URL", "http://127.0.0.1:8086").rstrip("/")
INFLUX_DB: Final = os.environ.get("NAIVE_INFLUX_DB", "naive")
WEB_PORT: Final = int(os.environ.get("NAIVE_WEB_PORT", "6066"))
DATADIR: Final = os.environ.get("NAIVE_DATADIR", "naive-faust-data")
READY_FILE: Final = os.environ.get("NAIVE_READY_FILE", "")

# Scalar thresholds: (metric, low, high, rule below, rule above). Flagged samples never alert.
THRESHOLDS: Final[dict[str, tuple[float, float, str, str]]] = {
    "heart_rate": (40.0, 120.0, "bradycardia", "tachycardia"),
    "glucose": (54.0, 250.0, "glucose_low", "glucose_high"),
}

install_fetch_wait()
app = faust.App(APP_ID, autodiscover=False, **{
    **faust_settings(broker=KAFKA, partitions=PARTITIONS, datadir=DATADIR, web_port=WEB_PORT),
    "value_serializer": "json",
})
readings = app.topic(TOPIC, key_type=bytes, partitions=PARTITIONS)


class InfluxWriter:
    """Buffers Points and posts them as line protocol to InfluxDB 1.x ``/write``."""

    def __init__(self, url: str, db: str) -> None:
        self.url = f"{url}/write"
        self.params = {"db": db, "precision": "ns"}
        self.buffer: list[Point] = []
        self.last_flush = time.monotonic()
        self.session: aiohttp.ClientSession | None = None
        self.written = 0

    def add(self, point: Point) -> None:
        self.buffer.append(point)

    async def flush(self) -> None:
        """Write what is buffered (retrying until InfluxDB takes it)."""
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        points, self.buffer = self.buffer, []
        body = "\n".join(p.to_line_protocol() for p in points).encode()
        if self.session is None:
            self.session = aiohttp.ClientSession()
        while True:
            try:
                async with self.session.post(self.url, params=self.params, data=body) as resp:
                    if resp.status == 204:
                        self.written += len(points)
                        return
                    text = await resp.text()
                    if 400 <= resp.status < 500:
                        _LOGGER.error("InfluxDB refused %d points: %s %s", len(points), resp.status, text[:200])
                        return
                    _LOGGER.warning("InfluxDB write failed (%s): %s; retrying", resp.status, text[:200])
            except (aiohttp.ClientError, OSError) as exc:
                _LOGGER.warning("InfluxDB write failed: %s; retrying", exc)
            await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        await self.flush()
        if self.session is not None:
            await self.session.close()


writer = InfluxWriter(INFLUX_URL, INFLUX_DB)


def check_threshold(metric: str, value: float) -> str | None:
    """The rule a reading breaks, if any."""
    limits = THRESHOLDS.get(metric)
    if limits is None:
        return None
    low, high, below, above = limits
    if value < low:
        return below
    if value > high:
        return above
    return None


def handle(doc: dict[str, Any]) -> None:
    """Turn one MQTT readings message into Points."""
    patient = doc["patient"]
    device = doc["device"]
    for sample in doc["samples"]:
        metric, t, value = sample[0], sample[1], float(sample[2])
        flags = sample[3] if len(sample) > 3 else 0
        ns = round(t * 1_000_000_000)
        writer.add(Point("vitals").tag("patient", patient).tag("metric", metric).tag("device", device)
                   .field("value", value).time(ns))
        if flags:
            continue
        rule = check_threshold(metric, value)
        if rule is not None:
            writer.add(Point("alerts").tag("patient", patient).tag("rule", rule).field("value", value)
                       .field("device", device).time(ns))


@app.agent(readings)
async def process(stream: faust.StreamT[Any]) -> None:
    """One record at a time."""
    async for record in stream:
        try:
            handle(record)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            _LOGGER.warning("skipping malformed record: %r", exc)
            continue
        if len(writer.buffer) >= BATCH_POINTS:
            await writer.flush()


@app.timer(interval=FLUSH_INTERVAL_S / 4)
async def flush_timer() -> None:
    """Write what is buffered at least every second when traffic is light."""
    if writer.buffer and time.monotonic() - writer.last_flush >= FLUSH_INTERVAL_S:
        await writer.flush()


@app.on_partitions_assigned.connect
def on_assigned(_sender: Any, assigned: set[Any], **_kwargs: Any) -> None:
    """Tell whoever started us that the group is joined (ready file)."""
    if READY_FILE and any(tp.topic == TOPIC for tp in assigned):
        Path(READY_FILE).write_text("ready\n")


@app.on_before_shutdown.connect
async def on_before_shutdown(_sender: Any, **_kwargs: Any) -> None:
    """Write the last buffer."""
    await writer.close()


if __name__ == "__main__":
    app.main()
