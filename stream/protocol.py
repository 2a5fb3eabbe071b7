"""The worker's protocol as an explicit state machine: process, checkpoint, acknowledge, stop.

One worker owns some partitions of ``rpm.readings``. Everything it does to the detector engine (a
readings batch, a batch of nurse acknowledgements, a tick) runs under one lock, moves through these
phases, and is the only thing that acknowledges records (makes their offsets committable)::

                  recovered                     batch taken            done
    RECOVERING ─────────────▶ ASSIGNED ────────────────────▶ PROCESSING ────▶ CHECKPOINTING
        ▲   revoked               ▲                 (retried until done,            │
        └─────────────────────────┤                  isolated if poison)            ▼
                                  └──────────────────────────────────────── ACKNOWLEDGING
    any phase ── the app stops ──▶ STOPPING ── states written, records acknowledged ──▶ STOPPED

- PROCESSING: the batch runs to completion with its outputs (InfluxDB write, alerts) delivered;
  a failure is retried in place with backoff (:func:`until_done`) on the engine rebuilt from its
  checkpoints, never acknowledged unprocessed; after ``ISOLATE_AFTER`` failures that were not
  outages it runs record by record and dead-letters what fails alone (:func:`isolate_poison`).
  A batch of more than ``MAX_SLICE_BYTES`` goes through PROCESSING and CHECKPOINTING once per
  slice, the lock released in between (a tick may run there); only its last slice acknowledges.
- CHECKPOINTING: the states that are due are written (:class:`Committer`, a paced group commit).
- ACKNOWLEDGING: the records no pending state depends on any more are acknowledged.
- STOPPING: a batch under way gets ``STOP_GRACE_S``; one still retrying is abandoned (nothing of
  it acknowledged, nothing checkpointed from then on: it is all processed again after the restart);
  otherwise every pending state is written and every record acknowledged.
- A rebalance that gives partitions away first drains (:meth:`WorkerMachine.drain`: everything
  written and acknowledged, so Faust's wait for acknowledgements ends at once), then RECOVERING
  until the state table of the new assignment is recovered (:meth:`WorkerMachine.recovered`
  rebuilds the engine from it).

The machine talks to Kafka only through :class:`Acknowledger` (``ack(event)``) and the events'
``key``/``value``/``headers``: ``tests/stream/test_worker_machine.py`` drives every transition
with a real pipeline and a recording acknowledger; :mod:`stream.agents` binds it to Faust.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from rpm_core import topics
from rpm_core.errors import SinkUnavailableError
from rpm_core.signing import KeyRing, SignatureError
from stream.pipeline import Pipeline

if TYPE_CHECKING:
    from detectors import Engine

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
# A taken batch is processed in slices of consecutive records of at most this many bytes of values
# (a larger record is a slice of its own), the lock released between slices (see
# WorkerMachine.readings): under a backlog take() hands over up to MAX_BATCH_RECORDS records of
# ~125 kB (~2,500 readings) each, and detecting and writing such a batch held the lock, and so the
# timers (staleness, escalation), for 10-30 s. 8 MB is ~150,000 readings of a backlog's records.
MAX_SLICE_BYTES: Final = 8 * 1024 * 1024
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
# /healthz warns once the readings of a batch waited this long in Kafka before they were processed
# (a backlog: the worker cannot keep up, or catches up after an outage): their alerts come that late.
BEHIND_AFTER_S: Final = 60.0
# ... as long as such a batch was processed within this long (an idle worker is behind nothing).
BEHIND_FRESH_S: Final = 30.0


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
        if not self.abandoned:
            await self.acknowledge(self.checkpoint(everything=everything))

    def checkpoint(self, *, everything: bool = False) -> int | None:
        """Under :attr:`lock`: write the states that are due (all of them with ``everything``, while
        draining, or with no interval); the sequence number below which every batch's states are
        written (None: all of them)."""
        if everything or self.draining or self.interval_s <= 0:
            self.pipeline.checkpoint()
            return None
        return self.pipeline.checkpoint_older_than(self.interval_s, limit=self._budget())

    async def acknowledge(self, frontier: int | None) -> None:
        """Under :attr:`lock`: acknowledge the batches older than ``frontier`` (all with None), once
        the states written so far are in the changelog's producer (which Faust flushes before it
        commits the acknowledged offsets)."""
        await self.pipeline.flush_states()
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


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    """Faust hands a record's headers over as a list of pairs or as a mapping."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), bytes(v)) for k, v in items]


partition_for = topics.partition_for  # ownership is computed with the bridge's function


def slice_ends(values: Sequence[bytes | None], max_bytes: int) -> list[int]:
    """Where the slices of ``values`` end (exclusive), in order: consecutive records of at most
    ``max_bytes`` in all, a record larger than that alone. No slices for no values. A record without
    a value (a tombstone: dead-lettered by the pipeline) weighs nothing."""
    ends: list[int] = []
    size = 0
    for i, value in enumerate(values):
        weight = len(value) if value is not None else 0
        if size and size + weight > max_bytes:
            ends.append(i)
            size = 0
        size += weight
    if values:
        ends.append(len(values))
    return ends


@dataclass
class _Slices:
    """A readings batch under way in slices: how far the engine has it.

    ``values[:done]`` (but the ``poison`` records, dead-lettered) are in the engine as long as it
    was not rebuilt since: ``reloads`` is the pipeline's reload count when they were. After a
    rebuild (a failed slice's retry, a failed tick, a recovery) the engine holds none of them, and
    the next slice is processed together with every record of the batch before it.
    """

    values: list[bytes]
    reloads: int
    done: int = 0
    poison: set[int] = field(default_factory=set)

    def todo(self, end: int, reloads: int, *, from_start: bool = False) -> list[int]:
        """The indexes to process up to ``end`` for an engine of ``reloads`` (noted as the engine's)."""
        start = self.done if reloads == self.reloads and not from_start else 0
        self.reloads = reloads
        return [i for i in range(start, end) if i not in self.poison]


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
    phase: str = "recovering"  # the worker's Phase, for /healthz
    # How long the oldest record of the last batch processed had waited in Kafka (its timestamp to
    # the end of its processing), and time.monotonic() when that batch was done.
    behind_s: float = 0.0
    behind_at: float | None = None
    # A defect that escaped a batch (an exception no retry handles): Faust restarts the agent, but the
    # batch's records are never acknowledged and the stream stalls, so the worker says so until it is
    # restarted. Set once, with the first defect's description.
    defect: str | None = None

    def behind_for(self, now: float) -> float:
        """How late the last batch's readings were processed (0 if that batch was not recent)."""
        if self.behind_at is None or now - self.behind_at > BEHIND_FRESH_S:
            return 0.0
        return self.behind_s

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




class Acknowledger(Protocol):
    """What the machine needs of a Kafka consumer: acknowledging an event it took."""

    async def ack(self, event: Any) -> None:
        """Make ``event``'s offset committable."""


class Event(Protocol):
    """A record taken from a topic (a Faust event)."""

    key: bytes | None
    value: bytes
    headers: Any


class Phase(enum.StrEnum):
    """Where the worker is in its protocol (see the module docstring)."""

    RECOVERING = "recovering"
    ASSIGNED = "assigned"
    PROCESSING = "processing"
    CHECKPOINTING = "checkpointing"
    ACKNOWLEDGING = "acknowledging"
    STOPPING = "stopping"
    STOPPED = "stopped"


class WorkerMachine:
    """One worker's protocol; every method that changes the engine holds :attr:`Committer.lock`.

    ``key_ring``: acknowledgements that do not verify are dead-lettered, not applied.
    ``retry_first_s`` (first backoff of a failed batch), ``stop_grace_s`` and ``max_slice_bytes``
    are the protocol's constants unless a test changes them.
    """

    def __init__(self, pipeline: Pipeline, status: WorkerStatus, *, checkpoint_interval_s: float,
                 key_ring: KeyRing | None = None, retry_first_s: float = RETRY_FIRST_S,
                 stop_grace_s: float = STOP_GRACE_S, max_slice_bytes: int = MAX_SLICE_BYTES) -> None:
        self.pipeline = pipeline
        self.retry_first_s = retry_first_s
        self.stop_grace_s = stop_grace_s
        self.max_slice_bytes = max_slice_bytes
        # Held by a readings batch from its first slice to its last, and by drain and stop: they come
        # between batches, never between two slices of one (ticks and acknowledgements may).
        self._batches = asyncio.Lock()
        self._stop_at: float | None = None  # time.monotonic() when the stop began
        self.status = status
        self.key_ring = key_ring
        self.committer = Committer(pipeline, interval_s=checkpoint_interval_s)
        self.stopping = asyncio.Event()
        status.phase = Phase.RECOVERING.value
        self.history: collections.deque[Phase] = collections.deque([Phase.RECOVERING], maxlen=256)

    # -- phases ----------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the protocol is (kept in :attr:`status` for ``/healthz``)."""
        return Phase(self.status.phase)

    def _enter(self, phase: Phase) -> None:
        if phase is not self.phase:
            _LOGGER.debug("worker: %s -> %s", self.phase.value, phase.value)
            self.status.phase = phase.value
            self.history.append(phase)

    def _rest(self) -> None:
        """Between batches: waiting for records, for recovery, or for the stop to finish."""
        if self.stopping.is_set():
            self._enter(Phase.STOPPING)
        else:
            self._enter(Phase.ASSIGNED if self.status.recovered else Phase.RECOVERING)

    # -- assignment ------------------------------------------------------------------------------

    def recovered(self, partitions: frozenset[int], topic_partitions: int) -> None:
        """The state table of the new assignment is recovered: rebuild the engine from it."""
        self.status.partitions = partitions
        self.status.topic_partitions = topic_partitions
        self.status.recovered = True
        self.rebuild()
        if self.phase in (Phase.RECOVERING, Phase.ASSIGNED):
            self._rest()

    def revoked(self) -> None:
        """Partitions were taken away; nothing is owned until the next recovery."""
        self.status.partitions = frozenset()
        self.status.recovered = False
        if self.phase in (Phase.RECOVERING, Phase.ASSIGNED):
            self._rest()

    def rebuild(self) -> None:
        """The engine from its checkpoints; what was delivered since is fetched again, unacknowledged."""
        self.committer.forget_pending()
        self.pipeline.reload()

    # -- batches ---------------------------------------------------------------------------------

    async def readings(self, stream: Acknowledger, events: Sequence[Event]) -> None:
        """:meth:`_readings`, telling a defect that escapes it (see :attr:`WorkerStatus.defect`)."""
        try:
            await self._readings(stream, events)
        except Exception as exc:
            self._defect("readings", exc)
            raise

    def _defect(self, what: str, exc: Exception) -> None:
        if self.status.defect is None:
            self.status.defect = f"its {what} agent failed on a defect ({type(exc).__name__}: {str(exc)[:200]})"
            _LOGGER.error("the %s agent failed on a defect: its records are not acknowledged and the stream stalls "
                          "until the worker is restarted", what, exc_info=exc)

    async def _readings(self, stream: Acknowledger, events: Sequence[Event]) -> None:
        """Process a batch of ``rpm.readings`` records in slices of at most ``max_slice_bytes``
        (:data:`MAX_SLICE_BYTES`), each processed (detected, written, alerts published) under the
        lock and followed by a checkpoint of what is due; the lock is released between slices, so a
        tick or a batch of acknowledgements waits for one slice, not for the whole batch. The
        batch's records are acknowledged together, once its last slice is processed and the states
        they changed are checkpointed: a slice that keeps failing holds the whole batch back."""
        values = [event.value for event in events]
        ends = slice_ends(values, self.max_slice_bytes)
        batch = _Slices(values, self.pipeline.stats.reloads)
        async with self._batches:
            started = time.monotonic()
            seq = self.committer.next_seq()
            for n, end in enumerate(ends, 1):
                if n > 1:
                    await asyncio.sleep(0)  # what is ready (/metrics, a timer) runs before the next slice
                what = f"a batch of {len(values)} readings records" + (
                    f" (slice {n} of {len(ends)})" if len(ends) > 1 else "")
                async with self.committer.lock:
                    if not await self._run(what, functools.partial(self._slice, batch, end),
                                           functools.partial(self._isolate_slice, batch, end), since=started):
                        return
                    if end == len(values):
                        self._note_waited(events)
                    self.committer.changed(seq, stream, events if end == len(values) else ())
                    await self._flush()

    async def _slice(self, batch: _Slices, end: int) -> None:
        """Process the batch's records up to ``end`` that the engine does not hold (a slice, or after a
        rebuild everything of the batch up to there: the engine rebuilt from its checkpoints lost the
        earlier slices' effects, and InfluxDB's keyed points and deterministic alert ids make
        delivering their outputs again harmless)."""
        todo = batch.todo(end, self.pipeline.stats.reloads)
        await self.pipeline.handle([batch.values[i] for i in todo], checkpoint=False)
        batch.done = end

    async def _isolate_slice(self, batch: _Slices, end: int) -> None:
        """The batch up to ``end`` record by record (:func:`isolate_poison` rebuilds the engine at each
        poison record, so it starts from the batch's first record); the poison stays out of later slices."""
        todo = batch.todo(end, self.pipeline.stats.reloads, from_start=True)
        poison = await isolate_poison([batch.values[i] for i in todo], self._handle_one, self.rebuild,
                                      self._deadletter_reading)
        batch.poison.update(todo[j] for j in poison)
        batch.reloads, batch.done = self.pipeline.stats.reloads, end

    def _note_waited(self, events: Sequence[Event]) -> None:
        """How long the batch's oldest record waited in Kafka (its timestamp, set when the bridge
        produced it) until now that it is processed: how far behind its readings the worker runs."""
        stamps = [t for t in (getattr(getattr(e, "message", None), "timestamp", None) for e in events)
                  if isinstance(t, int | float) and math.isfinite(t) and t > 0]
        if stamps:
            self.status.behind_s = max(0.0, self.pipeline.now() - min(stamps))
            self.status.behind_at = time.monotonic()

    async def acknowledgements(self, stream: Acknowledger, events: Sequence[Event]) -> None:
        """:meth:`_acknowledgements`, telling a defect that escapes it (see :attr:`WorkerStatus.defect`)."""
        try:
            await self._acknowledgements(stream, events)
        except Exception as exc:
            self._defect("acknowledgements", exc)
            raise

    async def _acknowledgements(self, stream: Acknowledger, events: Sequence[Event]) -> None:
        """Apply a batch of nurse acknowledgements (each checkpointed at once), then acknowledge it."""
        records = [(event.key, event.value, event.headers) for event in events]
        async with self.committer.lock:
            done = await self._run(f"a batch of {len(records)} acknowledgements",
                                   functools.partial(self._apply_acks, records))
            self._rest()
        if done:
            await ack_all(stream, events)

    async def tick(self) -> None:
        """The detectors' timers (staleness, escalation); their transitions are checkpointed as usual."""
        if self.stopping.is_set() or self.committer.abandoned:
            return
        async with self.committer.lock:
            self._enter(Phase.PROCESSING)
            try:
                await self.pipeline.tick(checkpoint=False)
            except BaseException:
                # Outputs not all delivered (cancelled at a stop, or failed): the transitions must not
                # reach a checkpoint, or it would record an escalation nobody was told of.
                if self.stopping.is_set():
                    self.committer.abandoned = True
                else:
                    self.rebuild()
                self._rest()
                raise
            self.committer.changed(None)
            await self._flush()

    async def _run(self, what: str, step: Callable[[], Awaitable[None]],
                   isolate: Callable[[], Awaitable[object]] | None = None, *, since: float | None = None) -> bool:
        """Under the lock: run a batch to completion (retrying failures), unless the worker stops;
        then it gets ``STOP_GRACE_S`` to finish (from the stop, or from ``since`` if it began later:
        a batch's slices share it), and one still retrying (InfluxDB or Kafka unavailable) is
        abandoned (see the module docstring). Whether the batch was processed."""
        if self.committer.abandoned:
            return False
        self._enter(Phase.PROCESSING)
        task = asyncio.ensure_future(until_done(what, step, before_retry=self.rebuild, isolate=isolate,
                                                status=self.status, first_delay=self.retry_first_s))
        stop_wait = asyncio.ensure_future(self.stopping.wait())
        self.status.batch_since = time.monotonic()
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self._grace_left(since))
        except asyncio.CancelledError:
            await self._abandon(task)
            raise
        finally:
            stop_wait.cancel()
            self.status.batch_since = None
        if task.done():
            task.result()
            return True
        await self._abandon(task)
        _LOGGER.warning("stopping: %s could not be finished within %.0f s (see the errors above); not "
                        "acknowledged, it will be processed again after the restart", what, self.stop_grace_s)
        return False

    def _grace_left(self, since: float | None) -> float:
        """What is left of ``stop_grace_s`` counted from the stop or ``since``, whichever is later."""
        now = time.monotonic()
        start = max(self._stop_at if self._stop_at is not None else now, since if since is not None else now)
        return max(0.0, start + self.stop_grace_s - now)

    async def _abandon(self, task: asyncio.Future[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self.committer.abandoned = True
        self._rest()

    async def _flush(self, *, everything: bool = False) -> None:
        """Under the lock: CHECKPOINTING the states that are due, then ACKNOWLEDGING what they free."""
        if not self.committer.abandoned:
            self._enter(Phase.CHECKPOINTING)
            frontier = self.committer.checkpoint(everything=everything)
            self._enter(Phase.ACKNOWLEDGING)
            await self.committer.acknowledge(frontier)
        self._rest()

    async def _handle_one(self, values: list[bytes]) -> None:
        await self.pipeline.handle(values, checkpoint=False)

    async def _deadletter_reading(self, value: bytes, reason: str) -> None:
        await self.pipeline.deadletter("worker", reason, topics.READINGS, value)

    async def _apply_acks(self, records: list[tuple[bytes | None, bytes, Any]]) -> None:
        from rpm_core.acks import decode_ack

        for key, value, headers in records:
            if self.key_ring is not None:
                try:
                    self.key_ring.verify(topics.ALERT_ACKS, key, value, _header_pairs(headers))
                except SignatureError as exc:
                    reason = f"acknowledgement refused: {exc}"
                    await self.pipeline.deadletter("worker", reason, topics.ALERT_ACKS, value)
                    continue
            try:
                ack = decode_ack(value, key=key)  # the key routes it to the patient's worker: it must agree
            except ValueError as exc:
                await self.pipeline.deadletter("worker", f"bad acknowledgement: {exc}", topics.ALERT_ACKS, value)
                continue
            # detectors.Engine (pipeline.AlertEngine, the protocol, does not declare alert_patient yet)
            owner = cast("Engine", self.pipeline.engine).alert_patient(ack.alert_id)
            if owner is not None and owner != ack.patient:
                # The engine acknowledges by alert id alone: an ack in patient A's name (a patient's own
                # device through the notifier, or another ward's station) stopped patient B's escalation.
                await self.pipeline.deadletter("worker", "acknowledgement refused: the alert is not the named "
                                               "patient's", topics.ALERT_ACKS, value)
                continue
            if await self.pipeline.acknowledge(patient=ack.patient, alert_id=ack.alert_id, by=ack.by, at=ack.at,
                                               checkpoint=False):
                self.pipeline.checkpoint_patients([ack.patient])  # acknowledgements are few and matter
        await self.pipeline.flush_states()  # before the acknowledgements' events are acknowledged

    # -- rebalance and stop ----------------------------------------------------------------------

    async def drain(self) -> bool:
        """Before Faust waits for every record taken to be acknowledged (a rebalance, a stop): write
        every state and acknowledge everything processed; False if a stop abandoned a batch (Faust
        must not wait for acknowledgements that will never come)."""
        self.committer.draining = True
        async with self._batches, self.committer.lock:
            await self._flush(everything=True)
        return not self.committer.abandoned

    def drained(self) -> None:
        """Faust's wait is over: back to the paced group commit."""
        self.committer.draining = False

    async def stop(self) -> None:
        """The app is stopping: let the batch under way finish (or abandon it), then write every
        pending state and acknowledge its records, so Faust's last commit covers them."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self.stopping.set()
        self._rest()
        try:
            async with self._batches, self.committer.lock:
                await self._flush(everything=True)
        except Exception:
            _LOGGER.exception("stopping: could not write the pending detector states; their readings "
                              "are not acknowledged and will be processed again after the restart")
            raise
        finally:
            self._enter(Phase.STOPPED)
        if self.committer.abandoned:
            _LOGGER.warning("stopping: a batch was abandoned, so no detector state was written; what was "
                            "processed since the last checkpoint will be processed again after the restart")
        else:
            _LOGGER.info("stopping: every pending detector state written and its readings acknowledged")
