"""The worker's Faust agents: readings in micro-batches through the detectors, and a ticker.

``stream.take()`` hands the agent up to ``MAX_BATCH_RECORDS`` records at a time (each carrying
many readings), and acknowledges them only after the loop body ran, so every record is written
to InfluxDB before its offset can be committed.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import faust

from stream import topics
from stream.pipeline import Pipeline

_LOGGER = logging.getLogger(__name__)

MAX_BATCH_RECORDS: Final = 2_000
# How long take() waits to fill a batch; bounds the latency the batching adds.
TAKE_WITHIN_S: Final = 0.05
TICK_INTERVAL_S: Final = 1.0


def register_agents(app: faust.App, pipeline: Pipeline, *, partitions: int) -> None:
    """Declare the topics and attach the agents that drive ``pipeline``."""
    readings = app.topic(topics.READINGS, key_type=bytes, value_type=bytes, partitions=partitions)
    alerts = app.topic(topics.ALERTS, key_type=bytes, value_type=bytes, partitions=partitions)
    deadletter = app.topic(topics.DEADLETTER, key_type=bytes, value_type=bytes, partitions=1)

    async def send_alert(key: bytes | None, value: bytes) -> None:
        await alerts.send(key=key, value=value)

    async def send_deadletter(key: bytes | None, value: bytes) -> None:
        await deadletter.send(key=key, value=value)

    pipeline.bind(send_alert=send_alert, send_deadletter=send_deadletter)

    async def detect(stream: Any) -> None:
        async for values in stream.take(MAX_BATCH_RECORDS, within=TAKE_WITHIN_S):
            await pipeline.handle(list(values))

    async def tick() -> None:
        await pipeline.tick()

    app.agent(readings, name="rpm.detect")(detect)
    app.timer(TICK_INTERVAL_S)(tick)
