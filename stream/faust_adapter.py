"""Every patch of faust-streaming's and aiokafka's private internals, in one place.

The worker relies on four changes to how Faust drives its aiokafka consumer. Each touches private
attributes of the exact versions pinned in ``pyproject.toml`` (faust-streaming 0.15.3, aiokafka
0.14.0), and each has a conformance test in ``tests/stream/test_faust_conformance.py`` that checks
the *effect* it gives against a real broker (Tansu), so an upgrade that moves an internal fails
there instead of silently undoing the patch. :func:`adapt` installs all four for an app, and a
fifth piece that patches nothing: a Faust sensor that logs how long each assigned partition waited
for its first record (:func:`install_partition_timing`).
Two more touches of Faust's internals still live with the agents, in ``stream.agents``, until
the worker is restructured (issue 16, item 1): ``install_flush_before_wait_empty`` (Faust's
``Consumer.wait_empty`` flushes the group commit first) and ``TableStore``'s stand-in for
``faust.streams._current_event`` (the RocksDB store asks it for a write's partition). And one read
of a private attribute, no patch: :func:`kafka_producer`, the aiokafka producer under Faust's, which
``TableStore`` writes the state table's changelog records with, in bulk.

1. **Fetch wait** (:func:`install_fetch_wait`). faust-streaming hard-codes
   ``fetch_max_wait_ms=1500`` when it builds its aiokafka consumer
   (``AIOKafkaConsumerThread._create_worker_consumer``). With a quiet partition every fetch then
   waits up to 1.5 s, which dominates alert latency (p50 450 ms measured here; 70 ms at 50 ms; the
   wait is 100 ms since issue 20, for the broker's CPU).
   The patch wraps that method and sets the consumer's wait (and minimum fetch size) before it
   starts.

2. **Seek fence** (:func:`install_seek_fence`): a rebalance no longer loses records of partitions
   a worker keeps.
   The loss (faust-streaming 0.15.3, aiokafka 0.14; reproduced by ``tests/chaos``): after every
   rebalance Faust finishes recovery in ``Recovery.on_recovery_completed``, which

   1. resumes the stream partitions (``consumer.resume_partitions``) while the consumer's flow is
      already active (it was resumed to read the table changelogs), so the fetcher starts delivering
      readings again from the position aiokafka took from the committed offset;
   2. then seeks every partition to its committed offset (``consumer.perform_seek``), which also
      resets Faust's per-partition *read offset* (records below it are dropped as already read);
   3. then resumes flow control (``app.flow_control.resume()``), which *clears* the agents' queues.

   Records delivered after step 1 that no agent has taken from its queue yet are wiped in step 3.
   They should be fetched again from the committed offset, but are not: ``Consumer._drain_messages``
   writes the read offset of the record it is delivering *after* the delivery returns, so a seek that
   completes meanwhile is overwritten, and the rest of the batch fetched before the seek goes on
   being delivered, moving the read offset further. The records fetched again from the committed
   offset then fall below the read offset and are dropped ("DROPPED MESSAGE ROFF"), and the commits
   of later records pass over them (``Consumer._new_offset`` accepts a hole of one offset at the
   head, and ``_add_gap`` marks larger jumps as if they were acknowledged). Upstream fixed the same
   ordering in ``_resume_streams`` (faust-streaming #216/#217) but not in ``on_recovery_completed``.
   The same path runs when a worker joins (plain scale-out) and at the start of a worker that has
   table state, so it is not specific to a crash. Traced in the chaos test: the survivor delivered
   offsets 1652-1658 of a partition it kept while the seek was in flight, the queue clear took 1658,
   the refetched 1652-1658 were dropped below the read offset, and 1659 onwards was committed.

   The fence restores two invariants, whoever calls ``perform_seek`` and in whatever order:

   * **A seek never interleaves with a delivery, and nothing is delivered between a seek and the
     caller's queue clear.** :func:`install_seek_fence` wraps ``Consumer.perform_seek``: it stops the
     consumer's flow, waits until the record being delivered (if any) is done, then seeks, and leaves
     the flow stopped. Its callers in recovery (``on_recovery_completed``, ``_resume_streams``) clear
     the queues and then resume the flow themselves; ``getmany`` calls it when it finds the flow
     already stopped, by a rebalance or a shutdown that resumes it in turn. So every record
     delivered before the seek is either processed by an agent or cleared, and in both cases fetched
     again, because the seek moved aiokafka and the read offset back to the committed offset, which
     no unprocessed record is below.
   * **A batch fetched across a seek is never delivered.** The wrapped ``Consumer.getmany`` notes a
     seek counter before it fetches; if a seek began since, it delivers no more stream records of
     that batch (those records may predate the seek, and their offsets would move the read offset past
     records still to be fetched again) and seeks once more to the committed offsets before the next
     fetch. Records of topics without acknowledgements (the table changelogs that recovery reads) are
     still delivered: the seek to the committed offsets does not move their partitions back (they have
     no committed offset; recovery positions them itself), so a record of theirs dropped here would
     never be fetched again, and a recovery waiting for it would wait forever (seen once in CI: a
     worker keeping its partitions across a rebalance received no changelog event for minutes).

   Partitions with no committed offset (a new consumer group, or a partition nothing was committed on
   yet) are a special case: aiokafka's ``seek_to_committed`` does not move them at all, so records
   delivered and cleared there would be skipped. The fence moves them to offset 0 (aiokafka resets to
   the earliest available offset if that is gone, ``consumer_auto_offset_reset="earliest"``), which
   is where a consumer without a committed offset starts anyway.

   Duplicates are the price (records delivered before the seek are delivered again), and harmless
   here: the sink and the engine are idempotent. The conformance tests run the fence in Faust's
   real drain loop over a real consumer and Tansu: every offset is processed across a rebalance,
   and a batch fetched across a seek keeps its changelog records.

3. **Fetch give-back** (:func:`install_fetch_give_back`): the changelog recovery stall after a
   rebalance (issue 16; write-up in ``benchmarks/RESULTS.md``, "Changelog recovery stall").

   Faust's drain loop asks aiokafka for records with ``AIOKafkaConsumerThread._fetch_records``,
   which checks that the consumer's flow is active *before* it waits (up to 1 s) in aiokafka's
   ``Fetcher.fetched_records``, but not after. That wait spans a rebalance: ``fetched_records``
   first waits for the reassignment to finish, then for records, and returns whatever aiokafka
   fetched from the positions table recovery has just set (it seeks every active changelog
   partition to the last offset it applied) before recovery resumes the flow. ``Consumer.getmany``
   then finds the flow stopped, delivers nothing and seeks to the committed offsets, which moves
   stream partitions back but not changelog partitions (they have no committed offset), while
   aiokafka has already moved its position past the records it handed out. Recovery then waits
   for records that will not come again: its highwater is behind aiokafka's position, nothing is
   left to fetch, and Faust only logs "No event received for active tp". Traced in a rebalance
   loop: recovery sought changelog partition 2 to offset 9 (highwater 19), the fetch begun before
   the rebalance returned 9..19 while the flow was stopped, none were delivered, aiokafka's
   position was 20, and the recovery waited until the watchdog (4.) sought it back 30 s later.

   The give-back does the check Faust does before the fetch also after it: records handed out
   while the flow is stopped are put back (each partition sought to the first record it got) and
   the fetch returns nothing, as if it had not happened. There is no await between aiokafka
   handing the records out and the check, so nothing can have moved those partitions meanwhile.

4. **Recovery watchdog** (:func:`install_recovery_watchdog`): a last resort, which the rebalance
   loop of ``tests/chaos/test_rebalance_loop.py`` asserts never fires. A table recovery that
   stops receiving changelog records is restarted where it stands, and the state it was stuck in
   is logged. Before the give-back (3.) it fired after rebalances (4 of about 70 chaos runs, once
   in a 12-round rebalance loop): a worker waited for changelog records that never arrived.
   When an active changelog partition with records left to read has delivered nothing for
   ``stall_s``, the watchdog does two things:

   * it logs, at WARNING, what fetching depends on: the consumer's flow, the paused and active
     partitions, the fetch positions Faust holds (read offsets), the seek fence's epoch, recovery's
     own offsets and highwaters, and aiokafka's position of each partition, so an occurrence
     says where it stuck;
   * it does again what recovery did to start reading (resume those partitions and the flow, seek them
     to the last offset recovery applied, make sure the fetcher runs). Reading the changelog again from
     there is harmless: recovery skips offsets it has already applied.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

_LOGGER = logging.getLogger(__name__)

# -- 1. fetch wait ------------------------------------------------------------------------------

# 100 ms, not less: every fetch costs the broker more the more batches it holds (Tansu's in-memory
# storage), and at low load each fetch waits this long: at 5k readings/s, 50 -> 100 ms cut Tansu's
# CPU a third (RESULTS.md, "Broker cost per reading"); under load FETCH_MIN_BYTES ends fetches first.
FETCH_MAX_WAIT_MS: Final = 100
# A fetch returns once this much is there (or after FETCH_MAX_WAIT_MS): under load, a few fetches
# a second with big batches instead of hundreds with a record or two, which cost the broker more
# CPU than the records themselves (Tansu was the busiest process at 20k readings/s).
FETCH_MIN_BYTES: Final = 64 * 1024

_fetch_wait: list[int] = []

# -- 2. seek fence ------------------------------------------------------------------------------

# How often perform_seek looks whether the record being delivered is done (only during a rebalance).
_DELIVERY_POLL_S: Final = 0.002
_RESEEK_RETRY_S: Final = 1.0

_EPOCH: Final = "_rpm_seek_epoch"
_DELIVERING: Final = "_rpm_delivering"
_MARK: Final = "__rpm_seek_fence__"

# -- 4. recovery watchdog -----------------------------------------------------------------------

# An active changelog partition with records left that delivered nothing for this long is stalled.
STALL_S: Final = 30.0
# How often the watchdog looks.
CHECK_EVERY_S: Final = 5.0


def adapt(app: Any) -> None:
    """Install every patch for ``app``: the process-wide ones once, the watchdog and timing on ``app``."""
    install_fetch_wait()
    install_seek_fence()  # a rebalance must not lose records of the partitions a worker keeps
    install_fetch_give_back()  # a fetch that ends while the flow is stopped gives its records back
    install_recovery_watchdog(app)  # a table recovery that stops receiving records is restarted
    install_partition_timing(app)  # logs how long each assigned partition waited for its first record


def kafka_producer(app: Any) -> Any:
    """The aiokafka producer Faust's producer sends with (``AIOKafkaProducer``; started with the app).

    Faust's producer flushes it before every offset commit (``Consumer._commit_offsets`` awaits
    ``app.producer.flush()``, which awaits aiokafka's), so a record handed to it before the offsets
    are acknowledged is in the log before they are committed. ``tests/stream/test_faust_conformance.py``
    checks both against Tansu."""
    return app.producer._ensure_producer()


# -- 1. fetch wait ------------------------------------------------------------------------------


def install_fetch_wait(max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Make every Faust worker consumer created from now on wait at most ``max_wait_ms`` per fetch."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if _fetch_wait:
        _fetch_wait[0] = max_wait_ms
        return
    _fetch_wait.append(max_wait_ms)
    original = AIOKafkaConsumerThread._create_worker_consumer

    @functools.wraps(original)
    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        # aiokafka reads these attributes when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = _fetch_wait[0]
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


# -- 2. seek fence ------------------------------------------------------------------------------


def _epoch(consumer: Any) -> int:
    return int(getattr(consumer, _EPOCH, 0))


def _delivering(consumer: Any) -> bool:
    """Whether the drain loop is between receiving a record and asking for the next one."""
    task = getattr(consumer, _DELIVERING, None)
    # A drain loop cancelled mid-delivery leaves its generator suspended until it is collected.
    return task is not None and not task.done()


async def _seek(consumer: Any, perform_seek: Callable[[Any], Any]) -> None:
    """Seek every assigned partition to its committed offset, ``0`` if it has none; bump the epoch."""
    setattr(consumer, _EPOCH, _epoch(consumer) + 1)
    await perform_seek(consumer)
    # perform_seek set the read offset of every assigned partition from the committed offsets;
    # None (or 0) means aiokafka's seek_to_committed left the partition where it was.
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    rewind = {
        tp: 0 for tp in consumer.assignment()
        if acks_enabled_for(tp.topic) and not consumer._read_offset.get(tp)
    }
    if rewind:
        await consumer.seek_wait(rewind)


async def _reseek(consumer: Any, perform_seek: Callable[[Any], Any]) -> None:
    """Seek again after dropping a batch (from the drain loop itself: nothing is being delivered).

    The dropped records are past aiokafka's position now, so the next fetch must not happen before
    this seek did. Retried until it succeeds, the consumer stops, or its flow is stopped: only a
    rebalance (whose recovery seeks every partition to its committed offset before the flow resumes)
    or a shutdown stop it.
    """
    while not consumer.should_stop:
        try:
            await _seek(consumer, perform_seek)
            return
        except Exception as exc:
            if not consumer.flow_active:
                _LOGGER.info("seek after a dropped batch left to the rebalance under way (%r)", exc)
                return
            _LOGGER.warning("seek after a dropped batch failed, retrying: %r", exc)
            await asyncio.sleep(_RESEEK_RETRY_S)


def fence_perform_seek(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``Consumer.perform_seek`` that seeks only once no record is being delivered, and leaves flow stopped."""

    @functools.wraps(original)
    async def perform_seek(self: Any) -> None:
        self.stop_flow()  # the caller resumes it, after clearing the agents' queues
        # Polled, not an Event: a delivery also ends when the drain loop's task dies mid-delivery.
        while _delivering(self):  # noqa: ASYNC110
            await asyncio.sleep(_DELIVERY_POLL_S)
        await _seek(self, original)

    setattr(perform_seek, _MARK, True)
    return perform_seek


def fence_getmany(
    original: Callable[[Any, float], AsyncIterator[tuple[Any, Any]]], perform_seek: Callable[[Any], Any]
) -> Callable[[Any, float], AsyncIterator[tuple[Any, Any]]]:
    """``Consumer.getmany`` that marks deliveries and drops the rest of a batch fetched across a seek."""

    @functools.wraps(original)
    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:  # noqa: ASYNC109 (Faust's)
        epoch = _epoch(self)  # before the fetch: conservative, a seek during the fetch counts
        records = original(self, timeout)
        acks_enabled_for = self.app.topics.acks_enabled_for
        stale = False
        try:
            async for tp, message in records:
                if not stale and _epoch(self) != epoch:
                    stale = True
                if stale and acks_enabled_for(tp.topic):
                    continue
                # _drain_messages hands the record to the agents' queues and then writes its read
                # offset, all before it asks for the next one: that is one delivery.
                setattr(self, _DELIVERING, asyncio.current_task())
                try:
                    yield tp, message
                finally:
                    setattr(self, _DELIVERING, None)
        finally:
            await records.aclose()  # type: ignore[attr-defined]
        if stale:
            _LOGGER.debug("batch fetched across a seek dropped; seeking to the committed offsets again")
            await _reseek(self, perform_seek)

    setattr(getmany, _MARK, True)
    return getmany


def install_seek_fence() -> None:
    """Patch Faust's ``Consumer`` (once per process) so rebalances cannot lose records."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer.perform_seek, _MARK, False):
        return
    original_perform_seek = Consumer.perform_seek
    setattr(Consumer, "getmany", fence_getmany(Consumer.getmany, original_perform_seek))  # noqa: B010
    setattr(Consumer, "perform_seek", fence_perform_seek(original_perform_seek))  # noqa: B010


# -- 3. fetch give-back --------------------------------------------------------------------------

_GIVE_BACK_MARK: Final = "__rpm_fetch_give_back__"


def give_back_fetch(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``AIOKafkaConsumerThread._fetch_records`` that hands out nothing while the consumer's flow is
    stopped: records it got from aiokafka then are put back (each partition sought to its first
    record) and ``{}`` is returned, so the fetch is as if it never happened."""

    @functools.wraps(original)
    async def _fetch_records(self: Any, consumer: Any, active_partitions: Any, timeout: float | None = None,  # noqa: ASYNC109
                             max_records: int | None = None) -> Any:
        records = await original(self, consumer, active_partitions, timeout=timeout, max_records=max_records)
        # No await between aiokafka handing the records out (and moving its positions past them) and
        # this check: nothing can have sought these partitions since, so their first records are
        # exactly where aiokafka stood before this fetch.
        if records and not self.consumer.flow_active:
            for tp, batch in records.items():
                if batch:
                    consumer.seek(tp, batch[0].offset)
            _LOGGER.info("a fetch ended while the flow was stopped; its records were put back: %s",
                          {f"{tp.topic}[{tp.partition}]": batch[0].offset for tp, batch in records.items() if batch})
            return {}
        return records

    setattr(_fetch_records, _GIVE_BACK_MARK, True)
    return _fetch_records


def install_fetch_give_back() -> None:
    """Patch Faust's aiokafka consumer thread (once per process): see :func:`give_back_fetch`."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread._fetch_records, _GIVE_BACK_MARK, False):
        return
    AIOKafkaConsumerThread._fetch_records = give_back_fetch(  # type: ignore[method-assign,assignment]
        AIOKafkaConsumerThread._fetch_records)


# -- 4. recovery watchdog -----------------------------------------------------------------------


def stalled_partitions(recovery: Any, now: float, stall_s: float = STALL_S) -> set[Any]:
    """The active changelog partitions of ``recovery`` with records left to read that have delivered
    nothing for ``stall_s`` (since the recovery started, or since their last record)."""
    if not recovery.in_recovery or recovery._recovery_started_at is None:
        return set()
    started = recovery._recovery_started_at
    received = recovery._active_events_received_at
    return {tp for tp, left in recovery.active_remaining().items()
            if left > 0 and now - received.get(tp, started) >= stall_s}


def _kafka_state(consumer: Any, tp: Any) -> str:
    """aiokafka's own view of ``tp`` (read across threads: for the log only)."""
    try:
        kafka = consumer._thread._ensure_consumer()
        state = kafka._subscription._assigned_state(tp)
        return (f"aiokafka: position {state._position}, paused {state.paused}, awaiting reset "
                f"{state.awaiting_reset}, records buffered {kafka._fetcher._records.get(tp) is not None}")
    except Exception as exc:  # diagnostics must never fail the watchdog
        return f"aiokafka state unavailable ({type(exc).__name__})"


def diagnose(app: Any, tps: set[Any]) -> str:
    """What fetching ``tps`` depends on, for the log."""
    consumer, recovery = app.consumer, app.tables.recovery
    active = consumer._active_partitions
    lines = [
        f"consumer flow active: {consumer.flow_active} (can resume: {consumer.can_resume_flow.is_set()}, "
        f"suspended: {consumer.suspend_flow.is_set()}); app flow control active: {app.flow_control.is_active()}",
        f"seek fence epoch {_epoch(consumer)}, delivering: {getattr(consumer, _DELIVERING, None) is not None}",
    ]
    assigned = consumer.assignment()
    lines += [
        f"{tp.topic}[{tp.partition}]: assigned {tp in assigned}, paused {tp in consumer._paused_partitions}, "
        f"active {active is not None and tp in active}, read offset {consumer._read_offset.get(tp)}, "
        f"applied offset {recovery.active_offsets.get(tp)}, highwater {recovery.active_highwaters.get(tp)}; "
        f"{_kafka_state(consumer, tp)}"
        for tp in sorted(tps)
    ]
    return "\n".join(lines)


async def restart_reading(app: Any, tps: set[Any]) -> None:
    """Do again what recovery does to start reading ``tps``: resume them and the flow, seek each to
    the last offset applied (``-1``: the beginning), make sure the fetcher runs."""
    consumer, recovery = app.consumer, app.tables.recovery
    consumer.resume_partitions(tps)
    app.flow_control.resume()
    consumer.resume_flow()
    await consumer.seek_wait({tp: max(recovery.active_offsets.get(tp) or 0, 0) for tp in tps})
    await app._fetcher.maybe_start()


def install_recovery_watchdog(app: Any, *, stall_s: float = STALL_S,
                              clock: Callable[[], float] = time.monotonic) -> Callable[[], Awaitable[None]]:
    """Check ``app``'s table recovery every ``CHECK_EVERY_S`` (a Faust timer; timers run during
    recovery) and restart the reading of partitions stalled for ``stall_s``. Returns the check."""
    restarted: dict[Any, float] = {}

    async def watch() -> None:
        recovery = app.tables.recovery
        now = clock()
        # Once per stall_s per partition: a restart resets nothing in Faust's own timestamps.
        tps = {tp for tp in stalled_partitions(recovery, now, stall_s) if now - restarted.get(tp, -stall_s) >= stall_s}
        if not tps:
            return
        _LOGGER.warning("table recovery received nothing for %.0f s from %d changelog partition(s) with records "
                        "left to read; reading them again from the last applied offset. State:\n%s",
                        stall_s, len(tps), diagnose(app, tps))
        for tp in tps:
            restarted[tp] = now
        await restart_reading(app, tps)

    app.timer(CHECK_EVERY_S, name="rpm.recovery_watchdog")(watch)
    return watch


# -- 5. partition timing (a Faust sensor: public API, no patch) ---------------------------------

ASSIGNED_LOG: Final = "stream partitions assigned: %s"
FIRST_RECORD_LOG: Final = "partition %s[%d]: first record %.3f s after its assignment"
NO_RECORD_LOG: Final = "partition %s[%d]: revoked %.3f s after its assignment, before any record"


def install_partition_timing(app: Any, *, clock: Callable[[], float] = time.monotonic) -> Any:
    """Log, for every stream partition assigned to ``app``, how long it waited for its first record.

    Measured from the assignment (Faust's ``on_partitions_assigned``, sent once the group handed out
    the partitions) to the moment a stream takes the partition's first record (the sensor hook
    ``on_stream_event_in``); the table recovery in between is what this measures. Changelog
    partitions are not streams and are left out."""
    from faust.sensors import Sensor

    class PartitionTiming(Sensor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.pending: dict[Any, float] = {}

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
            since = self.pending.pop(tp, None)
            if since is not None:
                _LOGGER.info(FIRST_RECORD_LOG, tp.topic, tp.partition, clock() - since)

    timing = PartitionTiming()
    app.sensors.add(timing)

    async def on_assigned(_sender: Any, assigned: Any = (), **_kwargs: Any) -> None:
        changelogs = app.tables.changelog_topics
        now = clock()
        timing.pending = {tp: now for tp in assigned if tp.topic not in changelogs}
        _LOGGER.info(ASSIGNED_LOG, ", ".join(f"{topic}{sorted(p for t, p in timing.pending if t == topic)}"
                                             for topic in sorted({tp.topic for tp in timing.pending})))

    async def on_revoked(_sender: Any, revoked: Any = (), **_kwargs: Any) -> None:
        now = clock()
        for tp in sorted(tp for tp in revoked if tp in timing.pending):
            _LOGGER.info(NO_RECORD_LOG, tp.topic, tp.partition, now - timing.pending.pop(tp))

    app.on_partitions_assigned.connect(on_assigned)
    app.on_partitions_revoked.connect(on_revoked)
    return timing
