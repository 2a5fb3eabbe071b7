"""The worker's Faust agents: readings in micro-batches through the detectors, acks, and a ticker.

``stream.take()`` hands the agent up to ``MAX_BATCH_RECORDS`` records at a time (each carrying
many readings) and acknowledges them only after the loop body ran, so every record is written
to InfluxDB, and the detector state it produced checkpointed, before its offset can be committed.

Detector state lives in the Faust table ``rpm-detector-state`` (key: patient id, value: the
engine's JSON export; changelog topic ``rpm-worker-rpm-detector-state-changelog``). Faust refuses
ordinary table writes inside ``take()`` batches: a write asks the *current event* for its
partition, and a batch has no single current event ("Cannot modify table key from outside of
stream iteration"). The table is therefore declared with ``use_partitioner=True``: the changelog
partition is chosen by the producer's partitioner from the key, the same murmur2 partitioner
that put the patient's readings on their partition, and the changelog has as many partitions as
``rpm.readings``. So a patient's state lands on the changelog partition that mirrors its readings
partition, Faust's assignor gives both to the same worker, and after a rebalance the table holds
exactly the states of the patients this worker now owns. ``Pipeline.reload`` then rebuilds the
engine from the table once Faust finished recovering it, before any new record is processed.
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
STATE_TABLE: Final = "rpm-detector-state"


class TableStore:
    """The pipeline's :class:`~stream.pipeline.StateStore` on a Faust table (bytes keys and values)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, patient: str) -> bytes | None:
        """The stored state of ``patient``."""
        value = self._table.get(patient.encode())
        return bytes(value) if value is not None else None

    def put(self, patient: str, state: bytes) -> None:
        """Store (and send to the changelog) the state of ``patient``."""
        self._table[patient.encode()] = state

    def patients(self) -> list[str]:
        """Patients with stored state on this worker's partitions."""
        return [bytes(k).decode() for k in self._table.keys()]


def register_agents(app: faust.App, pipeline: Pipeline, *, partitions: int) -> None:
    """Declare the topics and the state table, and attach the agents that drive ``pipeline``."""
    readings = app.topic(topics.READINGS, key_type=bytes, value_type=bytes, partitions=partitions)
    acks = app.topic(topics.ALERT_ACKS, key_type=bytes, value_type=bytes, partitions=partitions)
    alerts = app.topic(topics.ALERTS, key_type=bytes, value_type=bytes, partitions=partitions)
    deadletter = app.topic(topics.DEADLETTER, key_type=bytes, value_type=bytes, partitions=1)
    # key/value types bytes with the app's raw serializers (see faust_tuning.faust_settings)
    table = app.Table(STATE_TABLE, partitions=partitions, key_type=bytes, value_type=bytes, use_partitioner=True)
    pipeline.use_store(TableStore(table))

    async def send_alert(key: bytes | None, value: bytes) -> None:
        await alerts.send(key=key, value=value)

    async def send_deadletter(key: bytes | None, value: bytes) -> None:
        await deadletter.send(key=key, value=value)

    pipeline.bind(send_alert=send_alert, send_deadletter=send_deadletter)

    async def reload() -> None:
        pipeline.reload()

    table.on_recover(reload)

    async def detect(stream: Any) -> None:
        async for values in stream.take(MAX_BATCH_RECORDS, within=TAKE_WITHIN_S):
            await pipeline.handle(list(values))

    async def acknowledge(stream: Any) -> None:
        from stream.acks import decode_ack

        async for value in stream:
            try:
                ack = decode_ack(value)
            except ValueError as exc:
                await pipeline.deadletter("worker", f"bad acknowledgement: {exc}", topics.ALERT_ACKS, value)
                continue
            await pipeline.acknowledge(patient=ack.patient, alert_id=ack.alert_id, by=ack.by, at=ack.at)

    async def tick() -> None:
        await pipeline.tick()

    app.agent(readings, name="rpm.detect")(detect)
    app.agent(acks, name="rpm.acknowledge")(acknowledge)
    app.timer(TICK_INTERVAL_S)(tick)
