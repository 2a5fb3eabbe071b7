"""The worker's Faust agents: readings in micro-batches through the detectors, acks, and a ticker.

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
import collections
import functools
import logging
import math
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import faust

from rpm_core import topics
from rpm_core.errors import SinkUnavailableError
from rpm_core.signing import KeyRing, SignatureError
from stream.pipeline import Pipeline

_LOGGER = logging.getLogger(__name__)

MAX_BATCH_RECORDS: Final = 2_000
# Group commit of detector state and offsets (Committer); RPM_CHECKPOINT_INTERVAL_S overrides.
CHECKPOINT_INTERVAL_S: Final = 30.0
# A flush may always write this many due states, however short the time since the last one.
MIN_CHECKPOINTS_PER_FLUSH: Final = 20
# A flush writes at most this many times its share of the pending states (see Committer).
CHECKPOINT_PACE: Final = 1.25
# How long take() waits to fill a batch; bounds the latency the batching adds.
TAKE_WITHIN_S: Final = 0.05
TICK_INTERVAL_S: Final = 1.0
STATE_TABLE: Final = "rpm-detector-state"
# Nurse acknowledgements are few; a small batch keeps their latency at TAKE_WITHIN_S at most.
MAX_BATCH_ACKS: Final = 100
# At a stop, how long a batch in progress may take to finish; one still retrying then (InfluxDB or
# Kafka unavailable) is abandoned unacknowledged and processed again after the restart.
STOP_GRACE_S: Final = 5.0
# Backoff of a batch that failed: doubled from the first delay up to the last, retried forever.
RETRY_FIRST_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
# A batch that failed this many times in a row, not because a service was unavailable, is
# processed record by record (isolate_poison) on its next attempt.
ISOLATE_AFTER: Final = 3
# /healthz says "not progressing" once a batch (or an InfluxDB write) has been failing this long.
STUCK_AFTER_S: Final = 60.0


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says a service is unavailable (retry for as long as it takes) rather than
    that the input, or our code, is at fault (retrying the same batch cannot help)."""
    from aiokafka.errors import KafkaError

    return isinstance(exc, SinkUnavailableError | KafkaError | OSError | TimeoutError)


async def until_done(what: str, step: Callable[[], Awaitable[None]], *, before_retry: Callable[[], None] | None = None,
                     isolate: Callable[[], Awaitable[object]] | None = None, status: WorkerStatus | None = None,
                     first_delay: float = RETRY_FIRST_S, max_delay: float = RETRY_MAX_S) -> None:
    """Run ``step`` until it returns, retrying every exception with backoff (never cancellation).

    The events of a batch are acknowledged only after this returned: a batch that fails is neither
    acknowledged (Faust's default, which commits past it) nor skipped. ``step`` must be safe to
    run again (the pipeline's writes are keyed and its alert ids deterministic); ``before_retry``
    puts back what a failed attempt may have left half done (the engine, from its checkpoints).
    After ``ISOLATE_AFTER`` failures in a row that were not outages (:func:`is_outage`), the
    attempts run ``isolate`` instead (the batch record by record, see :func:`isolate_poison`).
    ``status`` counts the failures and notes since when the batch has been failing.
    """
    delay = first_delay
    attempt = 1
    not_outages = 0
    while True:
        run = isolate if isolate is not None and not_outages >= ISOLATE_AFTER else step
        try:
            await run()
            if status is not None:
                status.failing_since = None
            return
        except Exception as exc:
            not_outages = 0 if is_outage(exc) else not_outages + 1
            if status is not None:
                status.batch_failures += 1
                if status.failing_since is None:
                    status.failing_since = time.monotonic()
            _LOGGER.exception("%s failed (attempt %d); not acknowledged, retrying in %.1f s", what, attempt, delay)
            if isolate is not None and not_outages == ISOLATE_AFTER:
                _LOGGER.error("%s failed %d times in a row, not for an outage: next, record by record, sending "
                              "the records that fail on their own to %s", what, not_outages, topics.DEADLETTER)
        await asyncio.sleep(delay)
        if before_retry is not None:
            before_retry()
        delay = min(delay * 2, max_delay)
        attempt += 1


async def isolate_poison(values: Sequence[bytes], handle: Callable[[list[bytes]], Awaitable[None]],
                         rebuild: Callable[[], None], deadletter: Callable[[bytes, str], Awaitable[None]]) -> list[int]:
    """Process ``values`` one record at a time; a record that fails on its own, not for an outage,
    goes to the dead-letter topic with the error. Returns the indexes of those records.

    A record that failed may have left the engine half updated, its outputs undelivered: the engine
    is rebuilt from its checkpoints and the pass starts again without that record, so each record
    kept is processed by an engine that saw exactly the kept records before it (their outputs go
    out again, which keyed points and deterministic alert ids make harmless). An outage raises: the
    whole batch is tried again later.
    """
    poison: dict[int, str] = {}
    while True:
        for i, value in enumerate(values):
            if i in poison:
                continue
            try:
                await handle([value])
            except Exception as exc:
                if is_outage(exc):
                    raise
                # The error's type only: its message may quote the record (the log has the traceback).
                poison[i] = f"processing failed: {type(exc).__name__}"
                _LOGGER.error("a readings record failed on its own (%s); it goes to %s",
                              type(exc).__name__, topics.DEADLETTER)
                _LOGGER.debug("the record that failed on its own: %r", exc)
                rebuild()
                break
        else:
            break
    for i, reason in poison.items():
        await deadletter(values[i], reason)
    return sorted(poison)


class Committer:
    """The group commit of detector state and offsets: outputs, then state, then offsets.

    Everything that changes the engine (a readings batch, a tick, an acknowledgement) runs under
    :attr:`lock` together with its outputs (InfluxDB write, alert events), so whenever the lock is
    free every effect in the engine has been delivered, and any patient's state may be
    checkpointed. States are not written after every batch: a patient whose state changed is
    written once it has been pending for ``interval_s`` (oldest first, a few at a time after each
    batch; :meth:`~stream.pipeline.Pipeline.checkpoint_older_than`), and a batch is acknowledged
    once no pending state depends on it. So a patient sending every few seconds costs one table
    write per interval instead of one per message, an offset never passes a state that was not
    checkpointed, and a crash replays at most about one interval, which deterministic alert ids
    and keyed InfluxDB points make harmless (the replayed alerts are the same alerts).
    ``interval_s = 0`` writes every changed state after every batch.

    The writes are paced: patients who started sending together (a worker start, a rebalance, a
    reconnecting ward) all fall due together, and writing thousands of states in one go stalls
    the stream for seconds. A flush writes at most :data:`CHECKPOINT_PACE` times its share of the
    pending states (their number × the time since the last flush / the interval, at least
    :data:`MIN_CHECKPOINTS_PER_FLUSH`), so a wave is spread over most of an interval (and the next
    round is no wave any more), while the steady state, where every pending patient falls due once
    per interval, is always kept up with.
    """

    def __init__(self, pipeline: Pipeline, *, interval_s: float) -> None:
        self.pipeline = pipeline
        self.interval_s = interval_s
        self.lock = asyncio.Lock()
        self._last_flush: float | None = None
        # Set when a stop abandoned a batch it could not finish: from then on nothing more is
        # processed, and Faust must not wait for acknowledgements that will never come.
        self.abandoned = False
        # Set while Faust waits for every event taken to be acknowledged (a rebalance giving
        # partitions away, or a stop): every flush then writes everything, so a batch that was in
        # flight when the wait began does not hold the rebalance back until its states fall due.
        self.draining = False
        self._seq = 0
        self._unacked: collections.deque[tuple[int, Any, Sequence[Any]]] = collections.deque()

    def next_seq(self) -> int:
        """The sequence number of a new batch of events."""
        self._seq += 1
        return self._seq

    def forget_pending(self) -> None:
        """The engine was rebuilt from its checkpoints (a rebalance, a failed batch): what was
        delivered since is not in it, so it must not be acknowledged; Faust fetches it again from
        the committed offset."""
        self._unacked.clear()

    def changed(self, seq: int | None, stream: Any = None, events: Sequence[Any] = ()) -> None:
        """Under :attr:`lock`, after the outputs of a change were delivered: note what changed
        (and the events, to acknowledge once their states are written)."""
        self.pipeline.note_dirty(seq)
        if events:
            self._unacked.append((seq if seq is not None else self._seq, stream, events))

    async def flush(self, *, everything: bool = False) -> None:
        """Under :attr:`lock`: write the states that are due, then acknowledge what no pending
        state depends on any more (nothing once :attr:`abandoned`)."""
        if self.abandoned:
            return
        if everything or self.draining or self.interval_s <= 0:
            self.pipeline.checkpoint()
            frontier = None
        else:
            frontier = self.pipeline.checkpoint_older_than(self.interval_s, limit=self._budget())
        while self._unacked and (frontier is None or self._unacked[0][0] < frontier):
            _seq, stream, events = self._unacked.popleft()
            await ack_all(stream, events)

    def _budget(self) -> int:
        """How many states this flush may write (see the class docstring)."""
        now = self.pipeline.now()
        elapsed = self.interval_s if self._last_flush is None else min(now - self._last_flush, self.interval_s)
        self._last_flush = now
        share = CHECKPOINT_PACE * self.pipeline.pending * max(elapsed, 0.0) / self.interval_s
        return max(MIN_CHECKPOINTS_PER_FLUSH, math.ceil(share))


async def ack_all(stream: Any, events: Sequence[Any]) -> None:
    """Acknowledge ``events`` (their offsets become committable)."""
    for event in events:
        await stream.ack(event)


partition_for = topics.partition_for  # re-exported: ownership is computed with the bridge's function


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    """Faust hands a record's headers over as a list of pairs or as a mapping."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), bytes(v)) for k, v in items]


def owned_patients(patients: Iterable[str], assigned: Collection[int], partitions: int) -> list[str]:
    """The ``patients`` whose partition (out of ``partitions``) is among the ``assigned`` ones, in order."""
    if not assigned or partitions < 1:
        return []
    return [p for p in patients if partition_for(p, partitions) in assigned]


@dataclass
class WorkerStatus:
    """What this worker owns right now, for enrolment and ``/healthz``.

    ``partitions`` (the readings partitions assigned here) is set once the state table has been
    recovered after a rebalance, and emptied when partitions are revoked.
    """

    roster: tuple[str, ...] = ()
    configured_partitions: int = 0
    partitions: frozenset[int] = frozenset()
    topic_partitions: int = 0  # of rpm.readings as the broker reports it (0: unknown, use configured)
    recovered: bool = False
    # time.monotonic() of the first failed attempt of the batch under way; None while batches succeed.
    failing_since: float | None = None
    batch_failures: int = 0  # failed attempts of batches (each retried), since the start
    # time.monotonic() when the batch under way started; None between batches.
    batch_since: float | None = None

    def busy_for(self, now: float) -> float:
        """How long the batch under way has been unfinished (0 between batches)."""
        return max(0.0, now - self.batch_since) if self.batch_since is not None else 0.0

    def failing_for(self, now: float, *also: float | None) -> float:
        """How long the oldest failure still unresolved (a batch's, or one of ``also``) has lasted; 0 if none."""
        since = [t for t in (self.failing_since, *also) if t is not None]
        return max(0.0, now - min(since)) if since else 0.0

    def total_partitions(self) -> int:
        """The partition count that maps patients to partitions."""
        return self.topic_partitions or self.configured_partitions

    def enrolled(self) -> list[str]:
        """Roster patients on this worker's assigned partitions (see :func:`owned_patients`)."""
        return owned_patients(self.roster, self.partitions, self.total_partitions())


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
                    key_ring: KeyRing | None = None) -> WorkerStatus:
    """Declare the topics and the state table, and attach the agents that drive ``pipeline``.

    ``status`` (its ``roster``: patients to enroll for staleness) is kept up to date with the
    assigned partitions; ``pipeline`` must have been built with ``enrolled=status.enrolled``. With
    ``key_ring`` every alert is signed and an acknowledgement that does not verify is dead-lettered
    (:mod:`rpm_core.signing`).
    """
    status = status if status is not None else WorkerStatus()
    status.configured_partitions = partitions
    readings = app.topic(topics.READINGS, key_type=bytes, value_type=bytes, partitions=partitions)
    acks = app.topic(topics.ALERT_ACKS, key_type=bytes, value_type=bytes, partitions=partitions)
    alerts = app.topic(topics.ALERTS, key_type=bytes, value_type=bytes, partitions=partitions)
    deadletter = app.topic(topics.DEADLETTER, key_type=bytes, value_type=bytes, partitions=1)
    # key/value types bytes with the app's raw serializers (see faust_tuning.faust_settings)
    table = app.Table(STATE_TABLE, partitions=partitions, key_type=bytes, value_type=bytes, use_partitioner=True)
    on_disk = not str(app.conf.store).startswith("memory:")
    pipeline.use_store(TableStore(table, partition_of=(
        (lambda patient: partition_for(patient, status.total_partitions())) if on_disk else None)))

    async def send_alert(key: bytes | None, value: bytes) -> None:
        headers = key_ring.sign(topics.ALERTS, key, value) if key_ring is not None else None
        await alerts.send(key=key, value=value, headers=headers)

    async def send_deadletter(key: bytes | None, value: bytes) -> None:
        await deadletter.send(key=key, value=value)

    pipeline.bind(send_alert=send_alert, send_deadletter=send_deadletter)

    async def reload() -> None:
        # Recovery is done: the assignment is settled, and the table holds what this worker owns.
        status.partitions = frozenset(tp.partition for tp in app.assignor.assigned_actives()
                                      if tp.topic == topics.READINGS)
        status.topic_partitions = _topic_partitions(app, topics.READINGS)
        status.recovered = True
        committer.forget_pending()
        pipeline.reload()

    table.on_recover(reload)

    def on_revoked(_sender: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        status.partitions = frozenset()
        status.recovered = False

    app.on_partitions_revoked.connect(on_revoked)

    committer = Committer(pipeline, interval_s=checkpoint_interval_s)

    def rebuild() -> None:  # a failed batch is retried on the engine rebuilt from its checkpoints
        committer.forget_pending()
        pipeline.reload()

    stopping = asyncio.Event()

    async def guarded(what: str, step: Callable[[], Awaitable[None]],
                      isolate: Callable[[], Awaitable[object]] | None = None) -> bool:
        """Under :attr:`Committer.lock`: run a batch to completion (retrying failures), unless the
        worker stops. Then the batch gets ``STOP_GRACE_S`` to finish; one still retrying (InfluxDB or
        Kafka unavailable) is abandoned: nothing of it is acknowledged, and it is processed again
        after the restart. Returns whether the batch was processed.

        An abandoned attempt may have left effects in the engine whose outputs were never
        delivered, so from then on nothing is checkpointed or acknowledged any more
        (:attr:`Committer.abandoned`): everything since the last checkpoint is processed again
        after the restart."""
        if committer.abandoned:
            return False
        task = asyncio.ensure_future(until_done(what, step, before_retry=rebuild, isolate=isolate, status=status))
        stop_wait = asyncio.ensure_future(stopping.wait())
        status.batch_since = time.monotonic()
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=STOP_GRACE_S)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            committer.abandoned = True
            raise
        finally:
            stop_wait.cancel()
            status.batch_since = None
        if task.done():
            task.result()
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        committer.abandoned = True
        _LOGGER.warning("stopping: %s could not be finished within %.0f s (see the errors above); not "
                        "acknowledged, it will be processed again after the restart", what, STOP_GRACE_S)
        return False

    async def flush_on_stop() -> None:
        # A graceful stop (SIGTERM) waits until every event taken is acknowledged (Faust's
        # stream_wait_empty), but Faust's timers end as soon as the stop begins, and states that
        # are still pending would hold acknowledgements back: write them all and acknowledge.
        await app.wait_until_stopped()  # set when the stop begins (mode.Service), before the consumer stops
        stopping.set()
        try:
            async with committer.lock:
                await committer.flush(everything=True)
        except Exception:
            _LOGGER.exception("stopping: could not write the pending detector states; their readings "
                              "are not acknowledged and will be processed again after the restart")
            raise
        if committer.abandoned:
            _LOGGER.warning("stopping: a batch was abandoned, so no detector state was written; what was "
                            "processed since the last checkpoint will be processed again after the restart")
        else:
            _LOGGER.info("stopping: every pending detector state written and its readings acknowledged")

    async def drain() -> bool:
        committer.draining = True
        async with committer.lock:
            await committer.flush(everything=True)
        return not committer.abandoned

    def drained() -> None:
        committer.draining = False

    install_flush_before_wait_empty(app, drain, drained)

    async def detect(stream: Any) -> None:
        stopper = asyncio.ensure_future(flush_on_stop())
        try:
            await _detect(stream)
        finally:
            stopper.cancel()

    async def handle_one(values: list[bytes]) -> None:
        await pipeline.handle(values, checkpoint=False)

    async def deadletter_reading(value: bytes, reason: str) -> None:
        await pipeline.deadletter("worker", reason, topics.READINGS, value)

    async def _detect(stream: Any) -> None:
        async for events in stream.noack_take(MAX_BATCH_RECORDS, within=TAKE_WITHIN_S):
            values = [event.value for event in events]
            step = functools.partial(pipeline.handle, values, checkpoint=False)
            isolate = functools.partial(isolate_poison, values, handle_one, rebuild, deadletter_reading)
            async with committer.lock:
                if await guarded(f"a batch of {len(values)} readings records", step, isolate):
                    committer.changed(committer.next_seq(), stream, events)
                    await committer.flush()

    async def acknowledge(stream: Any) -> None:
        from rpm_core.acks import decode_ack

        async def apply(value: bytes) -> None:
            try:
                ack = decode_ack(value)
            except ValueError as exc:
                await pipeline.deadletter("worker", f"bad acknowledgement: {exc}", topics.ALERT_ACKS, value)
                return
            if await pipeline.acknowledge(patient=ack.patient, alert_id=ack.alert_id, by=ack.by, at=ack.at,
                                          checkpoint=False):
                pipeline.checkpoint_patients([ack.patient])  # acknowledgements are few and matter

        async def apply_all(records: list[tuple[bytes | None, bytes, Any]]) -> None:
            for key, value, headers in records:
                if key_ring is not None:
                    try:
                        key_ring.verify(topics.ALERT_ACKS, key, value, _header_pairs(headers))
                    except SignatureError as exc:
                        await pipeline.deadletter("worker", f"acknowledgement refused: {exc}", topics.ALERT_ACKS, value)
                        continue
                await apply(value)

        async for events in stream.noack_take(MAX_BATCH_ACKS, within=TAKE_WITHIN_S):
            values = [(event.key, event.value, event.headers) for event in events]
            async with committer.lock:
                done = await guarded(f"a batch of {len(values)} acknowledgements", functools.partial(apply_all, values))
            if done:
                await ack_all(stream, events)

    async def tick() -> None:
        if stopping.is_set() or committer.abandoned:
            return
        async with committer.lock:
            try:
                await pipeline.tick(checkpoint=False)
            except BaseException:
                # Outputs not all delivered (cancelled at a stop, or failed): the transitions must not
                # reach a checkpoint, or it would record an escalation nobody was told of.
                if stopping.is_set():
                    committer.abandoned = True
                else:
                    rebuild()
                raise
            committer.changed(None)
            await committer.flush()

    app.agent(readings, name="rpm.detect")(detect)
    app.agent(acks, name="rpm.acknowledge")(acknowledge)
    app.timer(TICK_INTERVAL_S)(tick)
    return status


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
