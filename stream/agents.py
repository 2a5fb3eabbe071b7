"""The worker bound to Faust: topics, the state table, agents and hooks that drive
:class:`stream.protocol.WorkerMachine` (the protocol itself, unit-tested, lives there).

Readings in micro-batches through the detectors, acks, and a ticker.

``stream.noack_take()`` hands the agent up to ``MAX_BATCH_RECORDS`` events at a time (each record
carrying many readings); the agent acknowledges them itself, and only after the batch was
processed (detected, written to InfluxDB, alerts published) and the detector state it produced
checkpointed (:class:`Committer`: a group commit, so a patient's state is written about once per
``CHECKPOINT_INTERVAL_S`` rather than once per message), so nothing reaches a committable offset
before it is in InfluxDB and in the state table. Not ``take()``: it
acknowledges the batch in a ``finally``, i.e. also when the body raised or was cancelled (a crash,
a shutdown during an InfluxDB outage), and the next commit then passes records nobody processed.
A failing batch is retried in place with backoff (:func:`until_done`; the engine is rebuilt from
its last checkpoints first) and never acknowledged unprocessed: an outage (InfluxDB or Kafka
unavailable) stalls the stream (and says so in the log, in ``/metrics`` and, after
``STUCK_AFTER_S``, in ``/healthz``) instead of losing readings; whatever is left unacknowledged is
delivered again after a restart. A batch that keeps failing for any other reason (a record our
code cannot process) is processed record by record after ``ISOLATE_AFTER`` attempts
(:func:`isolate_poison`): the records that fail on their own go to ``rpm.deadletter`` with the
error, so one poison record cannot blind the monitoring of every patient on its partition.

Rebalances are the other way Faust loses records (of partitions a worker keeps); the consumer
patch in :mod:`stream.faust_adapter`, installed by :func:`stream.app.create_app`, fixes that.

Detector state lives in the Faust table ``rpm-detector-state`` (key: patient id, value: the
engine's packed record, :mod:`detectors.packed`, or with ``RPM_STATE_FORMAT=json`` and from
workers of earlier versions its JSON export, both read; changelog topic
``rpm-worker-rpm-detector-state-changelog``). Faust refuses ordinary table writes inside
``take()`` batches: a write asks the *current event* for its partition, and a batch has no single
current event ("Cannot modify table key from outside of stream iteration"). The table is therefore
declared with ``use_partitioner=True``: the changelog partition is chosen by the producer's
partitioner from the key, the same murmur2 partitioner that put the patient's readings on their
partition, and the changelog has as many partitions as ``rpm.readings``. So a patient's state
lands on the changelog partition that mirrors its readings partition, Faust's assignor gives both
to the same worker, and after a rebalance the table holds exactly the states of the patients this
worker now owns. ``Pipeline.reload`` then rebuilds the engine from the table once Faust finished
recovering it, before any new record is processed.

The table lives in memory and is recovered from its changelog at start (``RPM_STATE_STORE=memory``,
the default), or in RocksDB in the data directory (``rocksdb``, with the ``rocksdict`` package),
so a restart with the same data directory reads only the changelog's tail. Faust's RocksDB store
wants a current event for every write (to pick the partition's database), and this worker
writes states per batch and on timers: :class:`TableStore` stands in an event that carries the
patient's partition.

Staleness alerts also cover roster patients who never sent anything: on every reload the worker
enrolls the roster patients *whose readings partition is assigned to it* (:func:`owned_patients`:
Kafka's default partitioner, murmur2 of the patient id modulo the partition count of
``rpm.readings``, the partitioner the bridge produces with and the table's changelog uses), so
each patient is watched by exactly one worker and its enrolment is checkpointed into the table
partition that moves with it. Without a roster nobody is enrolled: only patients who sent
something can go stale.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

import faust

from rpm_core import topics
from rpm_core.signing import KeyRing
from stream.pipeline import Pipeline
from stream.protocol import (
    CHECKPOINT_INTERVAL_S,
    MAX_BATCH_ACKS,
    MAX_BATCH_RECORDS,
    STATE_TABLE,
    TAKE_WITHIN_S,
    TICK_INTERVAL_S,
    WorkerMachine,
    WorkerStatus,
    partition_for,
)

_LOGGER = logging.getLogger(__name__)


class _PartitionOnly:
    """Stands for the current event where Faust's RocksDB store looks for the partition of a write
    (``faust.stores.rocksdb.Store._set`` asserts there is one): our writes happen per batch and
    from timers, outside any single event; the partition is the patient's, as the partitioner
    (``use_partitioner``) gives it to the changelog."""

    def __init__(self, partition: int) -> None:
        self.message = types.SimpleNamespace(partition=partition)


class TableStore:
    """The pipeline's :class:`~stream.pipeline.StateStore` on a Faust table (bytes keys and values).

    ``partition_of`` (RocksDB tables only): the partition of a patient, for the write's event.
    """

    def __init__(self, table: Any, partition_of: Callable[[str], int] | None = None) -> None:
        self._table = table
        self._partition_of = partition_of

    def get(self, patient: str) -> bytes | None:
        """The stored state of ``patient``."""
        value = self._table.get(patient.encode())
        return bytes(value) if value is not None else None

    def put(self, patient: str, state: bytes) -> None:
        """Store (and send to the changelog) the state of ``patient``."""
        if self._partition_of is None:
            self._table[patient.encode()] = state
            return
        from faust.streams import _current_event

        stand_in = _PartitionOnly(self._partition_of(patient))
        token = _current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]
        try:
            self._table[patient.encode()] = state
        finally:
            _current_event.reset(token)

    def patients(self) -> list[str]:
        """Patients with stored state on this worker's partitions."""
        return [bytes(k).decode() for k in self._table.keys()]


def register_agents(app: faust.App, pipeline: Pipeline, *, partitions: int,
                    status: WorkerStatus | None = None,
                    checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
                    key_ring: KeyRing | None = None) -> WorkerMachine:
    """Declare the topics and the state table, and attach the agents that drive ``pipeline``.

    ``status`` (its ``roster``: patients to enroll for staleness) is kept up to date with the
    assigned partitions; ``pipeline`` must have been built with ``enrolled=status.enrolled``. With
    ``key_ring`` every alert is signed and an acknowledgement that does not verify is dead-lettered
    (:mod:`rpm_core.signing`). Returns the machine (its ``status`` is the one given).
    """
    status = status if status is not None else WorkerStatus()
    status.configured_partitions = partitions
    readings = app.topic(topics.READINGS, key_type=bytes, value_type=bytes, partitions=partitions)
    acks = app.topic(topics.ALERT_ACKS, key_type=bytes, value_type=bytes, partitions=partitions)
    # key/value types bytes with the app's raw serializers (see faust_tuning.faust_settings)
    table = app.Table(STATE_TABLE, partitions=partitions, key_type=bytes, value_type=bytes, use_partitioner=True)
    on_disk = not str(app.conf.store).startswith("memory:")
    pipeline.use_store(TableStore(table, partition_of=(
        (lambda patient: partition_for(patient, status.total_partitions())) if on_disk else None)))
    _bind_outputs(app, pipeline, partitions=partitions, key_ring=key_ring)
    machine = WorkerMachine(pipeline, status, checkpoint_interval_s=checkpoint_interval_s, key_ring=key_ring,
                            unsent_checkpoints=functools.partial(unsent_changelog_records, app))
    _bind_machine(app, table, machine, readings=readings, acks=acks)
    return machine


def unsent_changelog_records(app: faust.App) -> int:
    """Records written to the state table that Faust has not yet handed to the Kafka client (its
    producer buffer, which only the tables' ``send_soon`` fills): the committer's back-pressure."""
    return int(app.producer.buffer.size)


def _bind_outputs(app: faust.App, pipeline: Pipeline, *, partitions: int, key_ring: KeyRing | None) -> None:
    """The pipeline's alerts (signed with ``key_ring``) and dead letters go to their topics."""
    alerts = app.topic(topics.ALERTS, key_type=bytes, value_type=bytes, partitions=partitions)
    deadletter = app.topic(topics.DEADLETTER, key_type=bytes, value_type=bytes, partitions=1)

    async def send_alert(key: bytes | None, value: bytes) -> None:
        headers = key_ring.sign(topics.ALERTS, key, value) if key_ring is not None else None
        await alerts.send(key=key, value=value, headers=headers)

    async def send_deadletter(key: bytes | None, value: bytes) -> None:
        await deadletter.send(key=key, value=value)

    pipeline.bind(send_alert=send_alert, send_deadletter=send_deadletter)


def _bind_machine(app: faust.App, table: Any, machine: WorkerMachine, *, readings: Any, acks: Any) -> None:
    """Faust's events, hooks and timers, each to the machine's transition."""

    async def recovered() -> None:
        # Recovery is done: the assignment is settled, and the table holds what this worker owns.
        machine.recovered(frozenset(tp.partition for tp in app.assignor.assigned_actives()
                                    if tp.topic == topics.READINGS), _topic_partitions(app, topics.READINGS))

    def revoked(_sender: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        machine.revoked()

    async def stop_with_the_app() -> None:
        # A graceful stop (SIGTERM) waits until every event taken is acknowledged (Faust's
        # stream_wait_empty), but Faust's timers end as soon as the stop begins, and states that
        # are still pending would hold acknowledgements back: the machine writes them all.
        await app.wait_until_stopped()  # set when the stop begins (mode.Service), before the consumer stops
        await machine.stop()

    async def detect(stream: Any) -> None:
        stopper = asyncio.ensure_future(stop_with_the_app())
        try:
            async for events in stream.noack_take(MAX_BATCH_RECORDS, within=TAKE_WITHIN_S):
                await machine.readings(stream, events)
        finally:
            stopper.cancel()

    async def acknowledge(stream: Any) -> None:
        async for events in stream.noack_take(MAX_BATCH_ACKS, within=TAKE_WITHIN_S):
            await machine.acknowledgements(stream, events)

    table.on_recover(recovered)
    app.on_partitions_revoked.connect(revoked)
    install_flush_before_wait_empty(app, machine.drain, machine.drained)
    app.agent(readings, name="rpm.detect")(detect)
    app.agent(acks, name="rpm.acknowledge")(acknowledge)
    app.timer(TICK_INTERVAL_S)(machine.tick)


_BEFORE_WAIT_EMPTY: Final = "_rpm_before_wait_empty"


def install_flush_before_wait_empty(app: faust.App, flush: Callable[[], Awaitable[bool]],
                                    done: Callable[[], None] | None = None) -> None:
    """Run ``flush`` whenever ``app``'s consumer is about to wait for every event taken to be
    acknowledged (``Consumer.wait_empty``: before a rebalance gives partitions away, and at a stop);
    if it returns False, do not wait (a stopping worker abandoned events it could not process:
    they stay unacknowledged, and Faust would wait for them forever). ``done`` is called when the
    wait is over, however it ended: between the two, the committer writes everything after every
    batch, so that a batch still in flight when ``flush`` ran is acknowledged as soon as it is done.

    The group commit holds acknowledgements back until the states they depend on are written (up
    to ``RPM_CHECKPOINT_INTERVAL_S``); without this, a rebalance would wait that long, past the
    group's rebalance timeout, and the worker would be dropped from the group and rejoin, again
    and again. ``flush`` writes every pending state and acknowledges what was processed.
    """
    from faust.transport.consumer import Consumer

    setattr(app, _BEFORE_WAIT_EMPTY, (flush, done))
    if getattr(Consumer.wait_empty, "_rpm_flushes_first", False):
        return
    original = Consumer.wait_empty

    @functools.wraps(original)
    async def wait_empty(self: Any) -> None:
        hooks = getattr(self.app, _BEFORE_WAIT_EMPTY, None)
        if hooks is None:
            await original(self)
            return
        flush, done = hooks
        try:
            if await flush():
                await original(self)
        finally:
            if done is not None:
                done()

    wait_empty._rpm_flushes_first = True  # type: ignore[attr-defined]
    Consumer.wait_empty = wait_empty  # type: ignore[method-assign]


def _topic_partitions(app: faust.App, topic: str) -> int:
    """The partition count of ``topic`` from the consumer's metadata (0 if it has none yet)."""
    try:
        count = app.consumer.topic_partitions(topic)
    except Exception:  # metadata not available (yet): the configured count is the fallback
        _LOGGER.debug("no partition metadata for %s", topic, exc_info=True)
        return 0
    return int(count) if count else 0
