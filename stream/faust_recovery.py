"""A watchdog for Faust's table recovery: a recovery that stops receiving changelog records is
restarted where it stands, and the state it was stuck in is logged.

Seen in ``tests/chaos`` (4 of about 70 runs, only with other integration tests running beside them):
after a rebalance a worker that kept some of its partitions waited for records of their changelog
partitions that never arrived ("No event received for active tp … since recovery start", for
minutes), so those partitions' readings were not processed at all. Faust only logs that warning;
nothing ends the wait. When it fired live, Faust's side looked right (flow active, partitions
assigned, resumed and active, no read offset, nothing applied yet, records left) and a seek to
where recovery stands ended the stall at once, so the suspect is aiokafka's fetch position; the
cause is not pinned down yet. When an active changelog partition with records left to read has
delivered nothing for ``stall_s``, the watchdog does two things:

* it logs, at WARNING, what fetching depends on: the consumer's flow, the paused and active
  partitions, the fetch positions Faust holds (read offsets), the seek fence's epoch, recovery's
  own offsets and highwaters, and aiokafka's position of each partition, so the next occurrence
  says where it stuck;
* it does again what recovery did to start reading (resume those partitions and the flow, seek them
  to the last offset recovery applied, make sure the fetcher runs). Reading the changelog again from
  there is harmless: recovery skips offsets it has already applied.

``tests/stream/test_faust_conformance.py`` pins the Faust internals this reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

_LOGGER = logging.getLogger(__name__)

# An active changelog partition with records left that delivered nothing for this long is stalled.
STALL_S: Final = 30.0
# How often the watchdog looks.
CHECK_EVERY_S: Final = 5.0


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
    from stream.faust_rebalance import _DELIVERING, _epoch

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
