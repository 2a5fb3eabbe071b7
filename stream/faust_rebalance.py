"""A seek fence for Faust's consumer: a rebalance no longer loses records of partitions a worker keeps.

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
here: the sink and the engine are idempotent. ``tests/stream/test_faust_conformance.py`` pins every
Faust internal this relies on and exercises the fence against a scripted drain loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

_LOGGER = logging.getLogger(__name__)

# How often perform_seek looks whether the record being delivered is done (only during a rebalance).
_DELIVERY_POLL_S: Final = 0.002
_RESEEK_RETRY_S: Final = 1.0

_EPOCH: Final = "_rpm_seek_epoch"
_DELIVERING: Final = "_rpm_delivering"
_MARK: Final = "__rpm_seek_fence__"


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
