"""Conformance: the faust-streaming and aiokafka internals we rely on are still where we expect.

If an upgrade moves any of them, this fails loudly instead of the worker silently going back to
Faust's hard-coded 1.5 s fetch wait (stream/faust_tuning.py), to losing records of the partitions
it keeps across a rebalance (stream/faust_rebalance.py), or to acknowledging batches it did not
process (stream/agents.py).

The seek fence is also exercised end to end against Faust's real ``Consumer._drain_messages``,
``getmany`` and ``perform_seek``, with the broker (fetch, seek) and the agent's queue scripted: the
rebalance that lost readings in ``tests/chaos`` is replayed, with and without the fence.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Callable
from typing import Any

import faust
import faust.streams
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from mode import Service
from mode.utils.queues import FlowControlEvent

from stream.agents import until_done
from stream.faust_rebalance import fence_getmany, fence_perform_seek, install_seek_fence
from stream.faust_tuning import FETCH_MAX_WAIT_MS, install_fetch_wait


def source(fun: Any) -> str:
    return inspect.getsource(inspect.unwrap(fun))


def in_order(text: str, *parts: str) -> bool:
    """Whether every part occurs in ``text``, each after the previous one."""
    at = 0
    for part in parts:
        at = text.find(part, at)
        if at < 0:
            return False
        at += len(part)
    return True


# -- fetch wait (stream/faust_tuning.py) ---------------------------------------------------------


def test_faust_still_builds_its_consumer_in_create_worker_consumer() -> None:
    assert "fetch_max_wait_ms" in source(AIOKafkaConsumerThread._create_worker_consumer)


async def test_aiokafka_still_keeps_the_fetch_wait_on_the_consumer() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=1234)
    try:
        assert consumer._fetch_max_wait_ms == 1234
        assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    finally:
        await consumer.stop()


def test_installed_wrapper_overrides_the_hard_coded_wait() -> None:
    install_fetch_wait()
    wrapped = AIOKafkaConsumerThread._create_worker_consumer
    assert wrapped.__wrapped__ is not None  # functools.wraps kept the original
    source = inspect.getsource(wrapped.__wrapped__)
    assert "fetch_max_wait_ms=1500" in source or "fetch_max_wait_ms" in source
    assert FETCH_MAX_WAIT_MS <= 100


# -- acknowledgements (stream/agents.py) ---------------------------------------------------------


def test_noack_take_yields_events_and_leaves_acking_to_the_agent() -> None:
    """The agents ack a batch themselves, after it was processed; take() acks in a finally (on errors too)."""
    text = source(faust.streams.Stream.noack_take)
    assert "self.enable_acks = False" in text  # the stream iterator does not ack either
    assert "buffer_add(cast(T_co, event))" in text  # the batch holds events, which the agent acks
    assert "await self.ack(" not in text.replace("#     await self.ack(", "")
    assert inspect.iscoroutinefunction(faust.streams.Stream.ack)
    # why not take(): it acks the events in the finally after the yield, whatever the body did
    assert in_order(source(faust.streams.Stream.take), "yield list(buffer)", "finally:", "await self.ack(event)")


async def test_a_failing_batch_is_retried_until_it_succeeds() -> None:
    outcomes: list[BaseException | None] = [RuntimeError("influx down"), ValueError("bug"), None]
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    reloads = 0

    def reload() -> None:
        nonlocal reloads
        reloads += 1

    await until_done("batch", step, before_retry=reload, first_delay=0.001, max_delay=0.002)
    assert (calls, reloads) == (3, 2)


async def test_cancellation_is_not_retried() -> None:
    async def step() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(until_done("batch", step, first_delay=0.001))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- the seek fence (stream/faust_rebalance.py): Faust internals it relies on --------------------


def test_drain_loop_still_gets_records_from_getmany_and_writes_the_read_offset_after_delivery() -> None:
    text = source(Consumer._drain_messages)
    assert "getmany = self.getmany" in text
    # the overwrite the fence guards against: the read offset is written after the delivery returns
    assert in_order(text, "async for tp, message in ait", "callback(message)", "set_read_offset(tp, offset)")
    assert "offset >= r_offset" in text  # records below the read offset are dropped


def test_getmany_still_yields_nothing_while_flow_is_stopped() -> None:
    assert inspect.isasyncgenfunction(inspect.unwrap(Consumer.getmany))
    text = source(Consumer.getmany)
    assert in_order(text, "for tp, record in records_it:", "if not self.flow_active:", "break", "yield tp")
    assert in_order(text, "else:", "await self.perform_seek()")
    assert in_order(source(Consumer._wait_next_records), "if not self.flow_active:", "self.can_resume_flow")


def test_flow_is_stopped_and_resumed_by_these_methods() -> None:
    assert in_order(source(Consumer.stop_flow), "self.flow_active = False", "self.suspend_flow.set()")
    assert in_order(source(Consumer.resume_flow), "self.flow_active = True", "self.can_resume_flow.set()")


def test_perform_seek_still_resets_read_offsets_to_the_committed_ones() -> None:
    text = source(Consumer.perform_seek)
    assert in_order(text, "await self.seek_to_committed()", "read_offset.update(")
    assert inspect.iscoroutinefunction(ThreadDelegateConsumer.seek_wait)
    # aiokafka leaves partitions without a committed offset (or 0) where they are: the fence rewinds them
    assert "if offset and offset > 0:" in inspect.getsource(AIOKafkaConsumer.seek_to_committed)


@pytest.mark.parametrize("method", [Recovery.on_recovery_completed, Recovery._resume_streams])
def test_callers_of_perform_seek_clear_the_queues_and_resume_flow_after_it(method: Callable[..., Any]) -> None:
    """The fence leaves the flow stopped: the caller resumes it once the agents' queues are cleared."""
    assert in_order(source(method), "perform_seek()", "flow_control.resume()", "consumer.resume_flow()")
    assert "self.clear()" in source(FlowControlEvent.resume)  # resuming flow control clears the queues


def test_the_fence_is_installed_once() -> None:
    install_seek_fence()
    getmany, perform_seek = Consumer.getmany, Consumer.perform_seek
    install_seek_fence()
    assert (Consumer.getmany, Consumer.perform_seek) == (getmany, perform_seek)
    assert getattr(getmany, "__rpm_seek_fence__", False) and getattr(perform_seek, "__rpm_seek_fence__", False)
    assert inspect.unwrap(perform_seek) is not perform_seek


# -- the seek fence against Faust's real drain loop ----------------------------------------------

TOPIC = "rpm.readings"
LOG_END = 400  # records 0..399 on the partition
BATCH = 25  # records per fetch


class ScriptedBroker:
    """One partition: fetches from a position, seeks to the committed offset (like aiokafka)."""

    def __init__(self, committed: int | None) -> None:
        self.committed = committed
        self.position = committed or 0

    async def fetch(  # Consumer._getmany's signature
        self, active_partitions: Any, timeout: float,  # noqa: ASYNC109
    ) -> dict[Any, list[ConsumerRecord[Any, Any]]]:
        await asyncio.sleep(0.001)  # the consumer thread's round trip
        start, end = self.position, min(self.position + BATCH, LOG_END)
        if start >= end:
            await asyncio.sleep(0.005)
            return {}
        self.position = end
        tp = TP(TOPIC, 0)
        return {tp: [ConsumerRecord(TOPIC, 0, o, 0, 0, None, b"x", None, 0, 1, ()) for o in range(start, end)]}

    async def seek_to_committed(self) -> dict[Any, int | None]:
        await asyncio.sleep(0.003)  # a commit fetch: records keep being delivered meanwhile
        if self.committed:  # aiokafka: "if offset and offset > 0"
            self.position = self.committed
        return {TP(TOPIC, 0): self.committed}

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        await asyncio.sleep(0.001)
        self.position = partitions[TP(TOPIC, 0)]


async def replay_rebalance(*, fenced: bool, committed: int | None) -> set[int]:
    """on_recovery_completed's sequence while the drain loop delivers; the offsets the agent processed."""
    app = faust.App("fence-conformance", broker="kafka://127.0.0.1:9", autodiscover=False)
    consumer: Any = app.consumer
    app.topics._acking_topics.add(TOPIC)
    tp = TP(TOPIC, 0)
    broker = ScriptedBroker(committed)
    consumer._getmany = broker.fetch
    consumer.seek_to_committed = broker.seek_to_committed
    consumer.seek_wait = broker.seek_wait
    consumer.assignment = lambda: {tp}
    consumer.highwater = lambda tp: LOG_END
    original_getmany, original_perform_seek = inspect.unwrap(Consumer.getmany), inspect.unwrap(Consumer.perform_seek)
    getmany, perform_seek = original_getmany, original_perform_seek
    if fenced:
        getmany, perform_seek = fence_getmany(original_getmany, original_perform_seek), fence_perform_seek(
            original_perform_seek)
    consumer.getmany = types.MethodType(getmany, consumer)
    consumer.perform_seek = types.MethodType(perform_seek, consumer)

    queue: list[int] = []  # the agent's queue, cleared by flow_control.resume()
    processed: set[int] = set()
    hold = (committed or 0) + 40  # mid-batch: the seek completes while this record is being delivered
    holding = asyncio.Event()

    async def on_message(message: Any) -> None:  # the Conductor's callback
        await app.flow_control.acquire()
        queue.append(message.offset)
        if message.offset == hold and not holding.is_set():
            holding.set()
            await asyncio.sleep(0.05)  # e.g. a full queue; cancelled when the flow is stopped

    async def agent() -> None:
        while True:
            await asyncio.sleep(0.002)
            if queue:
                processed.add(queue.pop(0))

    consumer.callback = on_message
    app.flow_control.resume()
    consumer.resume_partitions({tp})  # on_recovery_completed resumes the stream partitions first...
    consumer.resume_flow()  # ...while flow is active since the changelog recovery
    drain = asyncio.create_task(consumer._drain_messages(Service()))
    work = asyncio.create_task(agent())
    try:
        await asyncio.wait_for(holding.wait(), 5)
        await consumer.perform_seek()  # ...then seeks to the committed offsets
        app.flow_control.resume()  # clears the queues
        queue.clear()
        consumer.resume_flow()
        for _ in range(1000):  # until the log is fetched to its end and the agent's queue is empty
            await asyncio.sleep(0.01)
            if broker.position >= LOG_END and not queue and consumer._read_offset.get(tp) == LOG_END - 1:
                break
    finally:
        drain.cancel()
        work.cancel()
        await asyncio.gather(drain, work, return_exceptions=True)
        consumer._thread.thread_loop.close()  # the never-started consumer thread's own loop
    return processed


@pytest.mark.parametrize("committed", [120, None], ids=["committed", "never-committed"])
async def test_the_fence_makes_every_offset_processed_after_a_rebalance(committed: int | None) -> None:
    processed = await replay_rebalance(fenced=True, committed=committed)
    assert set(range(committed or 0, LOG_END)) - processed == set()


async def test_without_the_fence_faust_loses_offsets_in_this_replay() -> None:
    """Guards the replay itself: it must reproduce the loss, or the test above proves nothing."""
    processed = await replay_rebalance(fenced=False, committed=120)
    assert set(range(120, LOG_END)) - processed


async def test_a_batch_fetched_across_a_seek_still_delivers_its_changelog_records() -> None:
    """The fence drops the stream records of a batch fetched across a seek: the seek to the
    committed offsets fetches them again. Changelog records are not fetched again (they have no
    committed offset; recovery positions their partitions itself), so dropping them would leave a
    recovery waiting for records that never come."""
    readings, changelog = TP("rpm.readings", 0), TP("rpm-worker-rpm-detector-state-changelog", 0)
    batch = [(tp, ConsumerRecord(tp.topic, 0, o, 0, 0, None, b"x", None, 0, 1, ()))
             for o in range(3) for tp in (readings, changelog)]
    seeks: list[str] = []

    async def original_getmany(self: Any, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's)
        for tp, record in batch:
            yield tp, record

    async def perform_seek(self: Any) -> None:  # aiokafka's seek_to_committed moves readings only
        seeks.append("seek")

    consumer: Any = types.SimpleNamespace(
        app=types.SimpleNamespace(topics=types.SimpleNamespace(acks_enabled_for=lambda t: t == readings.topic)),
        should_stop=False, flow_active=True, _read_offset={readings: 7}, assignment=lambda: {readings, changelog},
    )
    getmany = fence_getmany(original_getmany, perform_seek)
    delivered = []
    async for tp, record in getmany(consumer, 1.0):
        delivered.append((tp.topic, record.offset))
        if len(delivered) == 1:  # a seek begins while the first record is being delivered
            consumer._rpm_seek_epoch = 1
    assert delivered == [(readings.topic, 0)] + [(changelog.topic, o) for o in range(3)]
    assert seeks == ["seek"], "the stream records dropped are fetched again from the committed offset"


def test_faust_waits_for_every_taken_event_before_a_rebalance_and_at_a_stop() -> None:
    """What install_flush_before_wait_empty hooks into: the revocation and the stop both wait in
    Consumer.wait_empty for every event taken to be acknowledged."""
    assert "_consumer_wait_empty" in source(faust.App._on_partitions_revoked)
    assert "_consumer_wait_empty" in source(faust.App._stop_consumer)
    assert "consumer.wait_empty()" in source(faust.App._consumer_wait_empty)
    assert "self._unacked_messages" in source(Consumer.wait_empty)


class Taken:
    """A message an agent took: ``Consumer.wait_empty`` waits until it is acknowledged."""

    acked = False
    refcount = 1


def waiting_consumer(name: str) -> tuple[faust.App, Any, Taken]:
    """An app whose consumer holds one taken, unacknowledged message (and commits nothing)."""
    app = faust.App(name, broker="kafka://127.0.0.1:9", autodiscover=False)
    consumer: Any = app.consumer
    message = Taken()
    consumer._unacked_messages.add(message)

    async def no_commit(*_a: Any, **_k: Any) -> bool:
        return False

    consumer.commit = no_commit
    consumer.commit_and_end_transactions = no_commit
    return app, consumer, message


def acknowledge(consumer: Any, message: Taken) -> None:
    message.acked = True
    consumer._unacked_messages.discard(message)


async def wait_empty_by_itself(consumer: Any, *, give_up_after: float = 10.0) -> bool:
    """Run ``consumer.wait_empty()``; whether it returned by itself, before ``give_up_after`` seconds
    (it swallows cancellation: stopping the consumer is what ends it otherwise)."""

    async def give_up() -> None:
        await asyncio.sleep(give_up_after)
        consumer._stopped.set()

    watchdog = asyncio.create_task(give_up())
    try:
        await consumer.wait_empty()
        return not watchdog.done()
    finally:
        watchdog.cancel()
        consumer._thread.thread_loop.close()


async def test_wait_empty_flushes_the_group_commit_first_instead_of_waiting_for_it() -> None:
    """Events processed but not yet acknowledged (their states wait for the group commit) would
    hold a rebalance for up to a checkpoint interval; the hook writes them and acknowledges first."""
    from stream.agents import install_flush_before_wait_empty

    app, consumer, held = waiting_consumer("wait-empty-conformance")
    flushed: list[bool] = []

    async def flush() -> bool:  # the committer: writes the pending states, then acknowledges
        flushed.append(True)
        acknowledge(consumer, held)
        return True

    install_flush_before_wait_empty(app, flush)
    assert await wait_empty_by_itself(consumer), "wait_empty waited for the group commit"
    assert flushed == [True] and not consumer._unacked_messages


async def test_wait_empty_does_not_wait_for_events_a_stopping_worker_abandoned() -> None:
    """A batch abandoned at a stop (InfluxDB down) stays unacknowledged on purpose; Faust would wait
    for it forever. The hook answering False skips the wait (the events are delivered again later)."""
    from stream.agents import install_flush_before_wait_empty

    app, consumer, abandoned = waiting_consumer("wait-empty-abandoned")

    async def flush() -> bool:
        return False

    install_flush_before_wait_empty(app, flush)
    assert await wait_empty_by_itself(consumer), "wait_empty waited for the abandoned event"
    assert abandoned in consumer._unacked_messages and not abandoned.acked


async def test_a_batch_finishing_during_the_wait_is_acknowledged_without_waiting_for_its_interval() -> None:
    """The hook's flush runs once, when the wait begins; a batch in flight then finishes later and
    must be acknowledged as soon as it is done (the committer flushes everything until ``done``)."""
    from stream.agents import install_flush_before_wait_empty

    app, consumer, in_flight = waiting_consumer("wait-empty-in-flight")
    draining: list[bool] = [False]

    async def flush() -> bool:
        draining[0] = True
        return True

    def done() -> None:
        draining[0] = False

    async def batch_finishes() -> None:  # the agent, after the flush: its states are not due yet
        await asyncio.sleep(0.2)
        if draining[0]:  # the committer writes everything while draining, so it acknowledges
            acknowledge(consumer, in_flight)

    install_flush_before_wait_empty(app, flush, done)
    agent = asyncio.create_task(batch_finishes())
    try:
        assert await wait_empty_by_itself(consumer), "wait_empty waited for the interval"
    finally:
        await asyncio.gather(agent, return_exceptions=True)
    assert in_flight.acked and draining == [False], "draining ends with the wait"


# -- the recovery watchdog (stream/faust_recovery.py) --------------------------------------------

def recovery_app() -> Any:
    return faust.App("recovery-watchdog", broker="kafka://127.0.0.1:9", autodiscover=False)


def test_recovery_still_keeps_what_the_watchdog_reads() -> None:
    app = recovery_app()
    try:
        recovery = app.tables.recovery
        assert isinstance(recovery, Recovery)
        for name in ("in_recovery", "_recovery_started_at", "_active_events_received_at", "active_offsets",
                     "active_highwaters", "active_tps"):
            assert hasattr(recovery, name), name
        assert callable(recovery.active_remaining)
        consumer = app.consumer
        for name in ("_active_partitions", "_paused_partitions", "_read_offset", "flow_active", "can_resume_flow",
                     "suspend_flow"):
            assert hasattr(consumer, name), name
        # aiokafka's view, logged for each stalled partition
        from aiokafka.consumer.fetcher import Fetcher
        from aiokafka.consumer.subscription_state import SubscriptionState, TopicPartitionState

        assert callable(SubscriptionState._assigned_state)
        assert {"paused", "awaiting_reset"} <= set(dir(TopicPartitionState))
        assert "self._position = " in source(TopicPartitionState.__init__)
        assert "self._records = " in source(Fetcher.__init__)
        # what recovery itself does to start reading, and so what the watchdog repeats
        assert in_order(source(Recovery._restart_recovery.fun), "consumer.resume_partitions)(active_tps)",
                        "flow_control.resume", "consumer.resume_flow", "_fetcher.maybe_start")
        assert "seek_wait" in source(Recovery._seek_offsets)
        # the events the watchdog measures silence by are noted per active partition
        assert "active_events_received_at[tp] = now" in source(Recovery._slurp_changelogs.fun)
    finally:
        app.consumer._thread.thread_loop.close()


def test_a_partition_silent_since_the_recovery_started_is_stalled_and_one_still_reading_is_not() -> None:
    from stream.faust_recovery import STALL_S, stalled_partitions

    app = recovery_app()
    try:
        recovery = app.tables.recovery
        silent, reading, done = (TP("rpm-worker-rpm-detector-state-changelog", p) for p in (4, 5, 6))
        now = 1000.0
        recovery._set_recovery_started()
        recovery._recovery_started_at = now - STALL_S - 1
        recovery.active_highwaters.update({silent: 3, reading: 9, done: 2})
        recovery.active_offsets.update({silent: -1, reading: 4, done: 2})
        recovery._active_events_received_at[reading] = now - 1
        assert stalled_partitions(recovery, now) == {silent}
        recovery._recovery_started_at = now - 1
        assert stalled_partitions(recovery, now) == set(), "a recovery that just started is not stalled"
        recovery._set_recovery_ended()
        recovery._recovery_started_at = now - STALL_S - 1
        assert stalled_partitions(recovery, now) == set(), "no recovery, nothing stalled"
    finally:
        app.consumer._thread.thread_loop.close()


async def test_the_watchdog_restarts_the_reading_of_a_stalled_partition_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stream.faust_recovery import STALL_S, install_recovery_watchdog

    app = recovery_app()
    consumer: Any = app.consumer
    try:
        tp = TP("rpm-worker-rpm-detector-state-changelog", 4)
        consumer.assignment = lambda: {tp}
        seeks: list[dict[Any, int]] = []

        async def seek_wait(partitions: dict[Any, int]) -> None:  # the broker side is not under test
            seeks.append(dict(partitions))

        started: list[bool] = []

        async def maybe_start() -> None:
            started.append(True)

        consumer.seek_wait = seek_wait
        app._fetcher.maybe_start = maybe_start
        consumer.pause_partitions({tp})
        consumer.stop_flow()  # the state a stalled recovery might be stuck in
        now = [1000.0]
        tasks = len(app._app_tasks)
        watch = install_recovery_watchdog(app, clock=lambda: now[0])
        assert [inspect.unwrap(t) for t in app._app_tasks[tasks:]] == [watch], "registered as a timer"
        recovery = app.tables.recovery
        recovery._set_recovery_started()
        recovery._recovery_started_at = now[0] - STALL_S - 1
        recovery.active_highwaters[tp] = 3
        recovery.active_offsets[tp] = -1
        await watch()
        assert seeks == [{tp: 0}] and started == [True]
        assert consumer.flow_active and tp not in consumer._paused_partitions
        assert "reading them again from the last applied offset" in caplog.text and "paused True" in caplog.text
        assert "aiokafka state unavailable" in caplog.text, "no consumer here, and the watchdog goes on regardless"
        await watch()
        assert len(seeks) == 1, "not again before another stall period"
        now[0] += STALL_S
        await watch()
        assert len(seeks) == 2
    finally:
        consumer._thread.thread_loop.close()
