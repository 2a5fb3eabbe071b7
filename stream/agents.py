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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import faust

from rpm_core import topics
from rpm_core.signing import KeyRing
from rpm_core.technical import WARNING_CHANGELOG
from stream.faust_adapter import kafka_producer
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

    ``producer`` (the worker's): the aiokafka producer Faust produces with. Then a state is written
    into the table's storage at once and its changelog record is handed straight to aiokafka by
    :meth:`flush`, all the states stored since the last flush in one go (a record batch per
    partition), on the partition the table's ``use_partitioner`` would choose (murmur2 of the key,
    as :func:`~stream.protocol.partition_for`), instead of one ``table[key] = value`` per state,
    which goes through Faust's producer buffer one record per event-loop turn (a Faust future, a
    queue hand-off, a wait, Faust's send path and two callbacks per record: ~100-150 µs of CPU per
    state against ~4-20, and its records trickle into many small produce requests;
    ``benchmarks/changelog_cost.py``).
    The records are the same (key, value, no headers, a current timestamp; recovery cannot tell
    them apart), on the same partitions, and are in the producer when :meth:`flush` returns: the
    worker acknowledges records only after it (see :class:`stream.protocol.Committer`), and
    Faust flushes the producer before it commits offsets, so, as before, no committed offset
    passes a state that is not in the changelog. A record or batch the producer fails (after its
    own retries) is logged and sent again, with the patients' current states, by the next flush
    (Faust's table path only logged such a failure), and :attr:`problem` says so until every such
    patient's state is in the changelog (the worker's ``/healthz`` and heartbeat: a technical
    warning; a restart meanwhile would start those patients from their last saved state). Without
    ``producer``: one ``table[key] = value`` per state, as before.

    ``owns`` (the worker's): whether a patient's partition is assigned here now. A failed record of a
    patient who is not is not sent again: after a rebalance it would overwrite, in the changelog,
    the newer state the partition's new owner writes (counted in :attr:`dropped_records`, logged).
    """

    def __init__(self, table: Any, partition_of: Callable[[str], int] | None = None,
                 producer: Callable[[], Any] | None = None, owns: Callable[[str], bool] | None = None) -> None:
        self._table = table
        self._partition_of = partition_of
        self._producer = producer
        self._owns = owns
        # patient -> state, stored in the table and not yet handed to the producer (newest only)
        self._outbox: dict[str, bytes] = {}
        self.failed_records = 0
        self.dropped_records = 0
        # patients whose changelog record failed, not delivered since (with the last failure's error)
        self._unsaved: set[str] = set()
        self._error = ""
        # changelog partition -> the future of what this store last handed over for it
        self._last: dict[int, asyncio.Future[Any]] = {}

    def get(self, patient: str) -> bytes | None:
        """The stored state of ``patient``."""
        value = self._table.get(patient.encode())
        return bytes(value) if value is not None else None

    def put(self, patient: str, state: bytes) -> None:
        """Store the state of ``patient`` (its changelog record: :meth:`flush`)."""
        self.put_many([(patient, state)])

    def put_many(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Store these states in the table (their changelog records: :meth:`flush`)."""
        if self._producer is None:
            for patient, state in records:
                self._set(patient, state, self._table)  # the table's own write: a changelog record each
            return
        data = self._table.data  # the table's storage: written without Faust's changelog record
        for patient, state in records:
            self._set(patient, state, data)
            self._outbox[patient] = state

    def _set(self, patient: str, state: bytes, target: Any) -> None:
        if self._partition_of is None:
            target[patient.encode()] = state
            return
        from faust.streams import _current_event

        stand_in = _PartitionOnly(self._partition_of(patient))
        token = _current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]
        try:
            target[patient.encode()] = state
        finally:
            _current_event.reset(token)

    async def flush(self) -> None:
        """Hand every state stored since the last flush to the producer, without waiting for the broker.

        Per changelog partition: if nothing this store handed over for it is still undelivered, the
        partition's records go as one record batch (``send_batch``: built here, the cheapest way,
        ~4-10 µs per state); otherwise record by record (``send``, ~15 µs), which appends to the batch
        still waiting there, because ``send_batch`` would wait until that batch left, i.e. for a produce
        request to complete (aiokafka keeps one in flight per broker), holding the worker's lock. A
        partition's records beyond one batch (1 MiB) wait for it to leave.
        """
        if not self._outbox or self._producer is None:
            return
        producer = self._producer()
        topic = self._table.changelog_topic.get_topic_name()
        partitions = len(await producer.partitions_for(topic))
        outbox, self._outbox = self._outbox, {}
        by_partition: dict[int, list[tuple[str, bytes]]] = {}
        for patient, state in outbox.items():
            by_partition.setdefault(partition_for(patient, partitions), []).append((patient, state))
        unsent = dict.fromkeys(outbox)
        try:
            for part, records in by_partition.items():
                last = self._last.get(part)
                if last is not None and not last.done():
                    for patient, state in records:
                        fut = await producer.send(topic, state, key=patient.encode(), partition=part)
                        fut.add_done_callback(functools.partial(self._sent, patient))
                        self._last[part] = fut
                        del unsent[patient]
                    continue
                at = 0
                while at < len(records):
                    batch, keys = producer.create_batch(), list[str]()
                    for patient, state in records[at:]:
                        if batch.append(key=patient.encode(), value=state, timestamp=None) is None:
                            break
                        keys.append(patient)
                    if not keys:
                        raise ValueError(f"a state of {len(records[at][1])} bytes does not fit in a producer batch")
                    fut = await producer.send_batch(batch, topic, partition=part)
                    fut.add_done_callback(functools.partial(self._batch_sent, len(keys), keys))
                    self._last[part] = fut
                    for patient in keys:
                        del unsent[patient]
                    at += len(keys)
        except BaseException:  # not handed over (closed, timed out, cancelled): with the next flush
            self._again(list(unsent))
            raise

    @property
    def unsaved(self) -> int:
        """Patients whose state's changelog record failed and is not delivered yet (sent again)."""
        return len(self._unsaved)

    @property
    def problem(self) -> str | None:
        """Why the changelog is behind the table, while it is (None: it is not)."""
        if not self._unsaved:
            return None
        return (f"the detector states of {len(self._unsaved)} patients could not be written to {WARNING_CHANGELOG} "
                f"in Kafka ({self._error}) and are being sent again; a worker restart before they are would "
                "start those patients from their last saved state")

    def _again(self, keys: list[str]) -> None:
        """Send these patients' current states with the next flush (unless a newer one is queued)."""
        data = self._table.data
        dropped = 0
        for patient in keys:
            if self._owns is not None and not self._owns(patient):
                self._unsaved.discard(patient)
                dropped += 1
                continue
            if patient not in self._outbox:
                value = data.get(patient.encode())
                if value is None:  # no state left to write (the patient was dropped from the table)
                    self._unsaved.discard(patient)
                else:
                    self._outbox[patient] = bytes(value)
        if dropped:
            self.dropped_records += dropped
            _LOGGER.warning("%d detector states that failed to reach the changelog are not sent again: their "
                            "partitions are no longer assigned here (their new owner starts from the last "
                            "state saved)", dropped)

    def _failed(self, keys: list[str], fut: asyncio.Future[Any]) -> None:
        error = "cancelled" if fut.cancelled() else repr(fut.exception())
        self.failed_records += len(keys)
        self._unsaved.update(keys)
        self._error = error[:200]
        _LOGGER.error("the changelog record(s) of %d detector states failed (%s); they are sent again with the "
                      "next flush", len(keys), error)
        self._again(keys)

    def _batch_sent(self, count: int, keys: list[str], fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._failed(keys, fut)
            return
        if self._unsaved:
            self._unsaved.difference_update(keys)
        meta = fut.result()  # the batch's first offset
        self._table.data.set_persisted_offset(meta.topic_partition, meta.offset + count - 1)

    def _sent(self, patient: str, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._failed([patient], fut)
            return
        self._unsaved.discard(patient)
        meta = fut.result()
        # What Faust's changelog callback does: RocksDB remembers the offset it holds.
        self._table.data.set_persisted_offset(meta.topic_partition, meta.offset)

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

    def partition_of(patient: str) -> int:
        return partition_for(patient, status.total_partitions())

    pipeline.use_store(TableStore(table, partition_of=partition_of if on_disk else None,
                                  producer=functools.partial(kafka_producer, app),
                                  owns=lambda patient: partition_of(patient) in status.partitions))
    _bind_outputs(app, pipeline, partitions=partitions, key_ring=key_ring)
    machine = WorkerMachine(pipeline, status, checkpoint_interval_s=checkpoint_interval_s, key_ring=key_ring)
    _bind_machine(app, table, machine, readings=readings, acks=acks)
    return machine


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
