"""Conformance: the Faust and aiokafka internals we patch still give the effect we patch them for.

Every patch lives in ``stream/faust_adapter.py`` (faust-streaming and aiokafka are pinned to the
versions these tests passed on). Each is checked by what it does, not by the library's source:

* the fetch wait: a consumer our app builds, polling an empty partition of a real Tansu, makes at
  least 10 times as many fetch round trips as the one Faust's own code builds (1.5 s per fetch);
* the seek fence: in Faust's real ``getmany`` over a real consumer and Tansu, a batch fetched
  across a seek keeps its changelog records and drops its stream records, which come again from
  the committed offset; in Faust's real drain loop (broker scripted, so the rebalance's timing is
  exact), every offset is processed across a rebalance, and without the fence offsets are lost;
* the recovery watchdog: it finds a stalled partition, says where aiokafka stands (read from a
  real consumer) and moves that consumer back to where recovery stands;
* the producer's batch size (a public setting, checked here because its effect is seen at the
  broker): a checkpoint's state records reach Tansu in a few batches, read back raw.

The agents' own hook (``stream.agents``: acknowledgements, ``wait_empty``) is checked here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import faust
import faust.streams
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from mode import Service

from rpm_app.services import start_tansu
from rpm_core.host import free_port
from stream.app import create_app
from stream.faust_adapter import fence_getmany, fence_perform_seek, install_seek_fence
from stream.protocol import until_done
from tests.support.kafka import produce


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


# -- the seek fence (stream/faust_adapter.py) --------------------------------------------------


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


# -- the recovery watchdog (stream/faust_adapter.py) ---------------------------------------------

def recovery_app() -> Any:
    return faust.App("recovery-watchdog", broker="kafka://127.0.0.1:9", autodiscover=False)


def test_a_partition_silent_since_the_recovery_started_is_stalled_and_one_still_reading_is_not() -> None:
    from stream.faust_adapter import STALL_S, stalled_partitions

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
    from stream.faust_adapter import STALL_S, install_recovery_watchdog

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


# -- against a real broker: a consumer built by our app, driven by Faust's own code ---------------


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Tansu for this module's tests (each uses topics of its own); its bootstrap address."""
    svc = start_tansu(tmp_path_factory.mktemp("tansu"))
    try:
        yield f"127.0.0.1:{svc.port}"
    finally:
        svc.stop()


async def new_topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        await admin.close()


def count_fetches(kafka: AIOKafkaConsumer) -> list[int]:
    """A one-element counter of the fetch requests ``kafka`` sends (wraps its client's ``send``)."""
    sent = [0]
    original = kafka._client.send

    async def send(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        if type(request).__name__.startswith("FetchRequest"):
            sent[0] += 1
        return await original(node_id, request, *args, **kwargs)

    kafka._client.send = send
    return sent


@contextlib.asynccontextmanager
async def our_app(bootstrap: str, tmp_path: Path) -> AsyncIterator[faust.App]:
    """The worker's Faust app as ``stream.app.create_app`` builds it (every patch installed)."""
    app = create_app(broker=f"kafka://{bootstrap}", partitions=1, datadir=str(tmp_path / "faust"), web_port=free_port(),
                     app_id=f"conformance-{uuid.uuid4().hex[:8]}")
    try:
        yield app
    finally:
        app.consumer._thread.thread_loop.close()  # the consumer thread's own loop, never started here


async def test_a_consumer_built_by_our_app_waits_a_fraction_of_fausts_fetch_wait(tansu: str, tmp_path: Path) -> None:
    """faust-streaming builds its consumer with a 1.5 s fetch wait; ours must wait at most ~100 ms.

    Both consumers, ours and the one Faust's own (unpatched) method builds, poll the same empty
    partition over the same stretch of time; Tansu holds each fetch for the consumer's wait. The
    count of fetch round trips is the measure: at most 100 ms against 1.5 s is at least 15 times
    as many; 10 is asserted (round trips add to both, proportionally more to the shorter wait).
    """
    topic = f"quiet-{uuid.uuid4().hex[:8]}"
    await new_topics(tansu, topic)
    async with our_app(tansu, tmp_path) as app:
        thread = app.consumer._thread
        ours = thread._create_worker_consumer(app.transport)
        fausts = inspect.unwrap(AIOKafkaConsumerThread._create_worker_consumer)(thread, app.transport)
        polls = []
        try:
            counts = []
            for kafka in (ours, fausts):
                await kafka.start()
                counts.append(count_fetches(kafka))
                kafka.assign([TopicPartition(topic, 0)])
                polls.append(asyncio.create_task(poll_forever(kafka)))
            async with asyncio.timeout(120):  # a deadline for the condition, not a measurement
                while counts[1][0] < 4:  # noqa: ASYNC110 (a counter in aiokafka's client, no event)
                    await asyncio.sleep(0.1)
            assert counts[0][0] >= 10 * counts[1][0], f"fetches: ours {counts[0][0]}, Faust's {counts[1][0]}"
        finally:
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
            await asyncio.gather(ours.stop(), fausts.stop())


async def poll_forever(kafka: AIOKafkaConsumer) -> None:
    while True:
        await kafka.getmany(timeout_ms=200)


@contextlib.asynccontextmanager
async def wired_consumer(app: faust.App, tps: list[TopicPartition]) -> AsyncIterator[Any]:
    """``app``'s Faust consumer over a real aiokafka consumer that our app built, assigned ``tps``.

    Everything is Faust's and aiokafka's own code (fetch, seek to committed, seek, assignment)
    except the consumer thread: its calls run in this event loop instead of a thread of their own.
    """
    consumer: Any = app.consumer
    thread = consumer._thread
    kafka = thread._create_worker_consumer(app.transport)
    await kafka.start()

    async def here(fun: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        return await fun(*args, **kwargs)

    thread._consumer = kafka
    thread.call_thread = here
    kafka.assign(tps)
    try:
        yield consumer
    finally:
        await kafka.stop()


async def test_a_batch_fetched_across_a_seek_keeps_its_changelog_records(tansu: str, tmp_path: Path) -> None:
    """The drain loop waits in ``getmany`` for the flow while a rebalance seeks to the committed
    offsets; the batch it then gets was fetched across that seek. The fence drops its stream
    records (fetched again from the committed offset) but delivers its changelog records: the seek
    does not move changelog partitions back (they have no committed offset), so a changelog record
    dropped there would never come again and a recovery waiting for it would wait forever."""
    readings, changelog = f"readings-{uuid.uuid4().hex[:8]}", f"state-{uuid.uuid4().hex[:8]}-changelog"
    await new_topics(tansu, readings, changelog)
    for topic in (readings, changelog):
        await produce(tansu, topic, [(None, b"%d" % i) for i in range(30)])
    tp_readings, tp_changelog = TopicPartition(readings, 0), TopicPartition(changelog, 0)
    async with our_app(tansu, tmp_path) as app, wired_consumer(app, [tp_readings, tp_changelog]) as consumer:
        kafka = consumer._thread._consumer
        await kafka.commit({tp_readings: 10})  # processed up to 9 before the rebalance
        app.topics._acking_topics.add(readings)  # as the worker's agents subscribe it (acks enabled)
        fetched: list[tuple[str, int]] = []
        fetch = consumer._getmany

        async def noting_fetch(*args: Any, **kwargs: Any) -> Any:
            records = await fetch(*args, **kwargs)
            fetched.extend((tp.topic, r.offset) for tp, rs in records.items() for r in rs)
            return records

        consumer._getmany = noting_fetch
        consumer.resume_partitions({TP(readings, 0), TP(changelog, 0)})
        consumer.stop_flow()  # a rebalance is under way: the drain loop's next getmany waits for the flow
        delivered: list[tuple[str, int]] = []

        async def drain_one_batch() -> None:
            async for tp, message in consumer.getmany(timeout=5.0):
                delivered.append((tp.topic, message.offset))

        batch = asyncio.create_task(drain_one_batch())
        await asyncio.sleep(0)  # the batch began (it waits for the flow) ...
        await consumer.perform_seek()  # ... recovery seeks every partition to its committed offset ...
        async with asyncio.timeout(60):  # records of both partitions fetched, so the batch holds both
            while not {tp_readings, tp_changelog} <= set(kafka._fetcher._records):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        consumer.resume_flow()  # ... and resumes the flow
        async with asyncio.timeout(60):
            await batch
        assert fetched, "the batch fetched nothing"
        changelog_fetched = [r for r in fetched if r[0] == changelog]
        assert changelog_fetched and len(changelog_fetched) < len(fetched), "the batch must hold both kinds"
        assert [r for r in delivered if r[0] == changelog] == changelog_fetched
        assert [r for r in delivered if r[0] == readings] == [], "stream records of a stale batch were delivered"
        assert await kafka.position(tp_readings) == 10, "the stream partition was not sought back to its commit"
        # The next batch starts where it should: the committed offset, nothing skipped.
        delivered.clear()
        async with asyncio.timeout(60):
            while not any(t == readings for t, _ in delivered):
                await drain_one_batch()
        assert min(o for t, o in delivered if t == readings) == 10


async def test_the_watchdog_reads_a_real_consumer_and_moves_it_back_to_where_recovery_stands(
    tansu: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """On a consumer our app built, reading a real changelog partition: the watchdog finds the
    stalled partition from recovery's own bookkeeping, logs aiokafka's position (its internals were
    readable), and seeks the partition back to the last offset recovery applied."""
    from stream.faust_adapter import STALL_S, install_recovery_watchdog

    changelog = f"state-{uuid.uuid4().hex[:8]}-changelog"
    await new_topics(tansu, changelog)
    await produce(tansu, changelog, [(None, b"%d" % i) for i in range(30)])
    tp = TopicPartition(changelog, 0)
    async with our_app(tansu, tmp_path) as app, wired_consumer(app, [tp]) as consumer:
        kafka = consumer._thread._consumer
        async with asyncio.timeout(60):  # the consumer read the whole partition: its position is 30
            while await kafka.position(tp) < 30:
                await kafka.getmany(timeout_ms=200)
        started: list[bool] = []

        async def maybe_start() -> None:  # the app's fetcher service is not running here
            started.append(True)

        app._fetcher.maybe_start = maybe_start
        now = [1000.0]
        watch = install_recovery_watchdog(app, clock=lambda: now[0])
        recovery = app.tables.recovery
        recovery._set_recovery_started()  # a recovery that applied offsets 0..9 and then heard nothing
        recovery._recovery_started_at = now[0] - STALL_S - 1
        recovery.active_highwaters[TP(changelog, 0)] = 29
        recovery.active_offsets[TP(changelog, 0)] = 9
        await watch()
        assert "aiokafka: position 30" in caplog.text, caplog.text
        assert await kafka.position(tp) == 9 and started == [True]
        assert consumer.flow_active


# -- the fetch give-back (stream/faust_adapter.py) -----------------------------------------------


async def straddle_a_rebalance(consumer: Any, kafka: AIOKafkaConsumer, tp: TopicPartition) -> list[int]:
    """One batch of Faust's ``getmany`` whose fetch waits through a rebalance: it starts while the
    flow runs, at the end of the changelog partition ``tp`` (nothing to read), then the flow stops
    and recovery seeks ``tp`` to its start, which is what the fetch then returns. The offsets the
    batch delivered."""
    kafka.seek(tp, 30)
    consumer.resume_partitions({TP(tp.topic, tp.partition)})
    consumer.resume_flow()
    delivered: list[int] = []

    async def drain_one_batch() -> None:
        async for _tp, message in consumer.getmany(timeout=10.0):
            delivered.append(message.offset)

    batch = asyncio.create_task(drain_one_batch())
    async with asyncio.timeout(60):  # the fetch is waiting in aiokafka for records
        while not kafka._fetcher._fetch_waiters:  # noqa: ASYNC110 (aiokafka's waiter set, no event)
            await asyncio.sleep(0.01)
    consumer.stop_flow()  # a rebalance: the flow stops while the fetch waits ...
    await consumer.seek_wait({TP(tp.topic, tp.partition): 0})  # ... and recovery seeks the changelog to its start
    async with asyncio.timeout(60):
        await batch
    return delivered


async def test_a_fetch_that_ends_while_the_flow_is_stopped_gives_its_changelog_records_back(
    tansu: str, tmp_path: Path,
) -> None:
    """The recovery stall of issue 16: Faust's ``getmany`` discards a batch that arrives while the
    flow is stopped (and seeks to the committed offsets, which changelog partitions do not have),
    but aiokafka already counted those records consumed. With the give-back, the batch delivers
    nothing, the changelog partition is back at its start, and once recovery resumes the flow every
    record comes."""
    changelog = f"state-{uuid.uuid4().hex[:8]}-changelog"
    await new_topics(tansu, changelog)
    await produce(tansu, changelog, [(None, b"%d" % i) for i in range(30)])
    tp = TopicPartition(changelog, 0)
    async with our_app(tansu, tmp_path) as app, wired_consumer(app, [tp]) as consumer:
        kafka = consumer._thread._consumer
        assert await straddle_a_rebalance(consumer, kafka, tp) == []
        assert await kafka.position(tp) == 0, "the records the fetch got were not put back"
        consumer.resume_flow()  # recovery resumes the flow: everything from 0 comes
        delivered: list[int] = []
        async with asyncio.timeout(60):
            while len(delivered) < 30:
                delivered += [m.offset async for _tp, m in consumer.getmany(timeout=1.0)]
        assert delivered == list(range(30))


async def test_without_the_give_back_faust_loses_the_changelog_records_of_that_fetch(
    tansu: str, tmp_path: Path,
) -> None:
    """The same batch with Faust's own fetch: nothing delivered, yet aiokafka stands past the records
    that fetch got, so a recovery waiting for them would wait until something seeks the partition back.
    How many records one fetch gets is the broker's choice (Tansu returned 18 of the 30 once, in CI):
    any position past the start, with nothing delivered, is the loss."""
    changelog = f"state-{uuid.uuid4().hex[:8]}-changelog"
    await new_topics(tansu, changelog)
    await produce(tansu, changelog, [(None, b"%d" % i) for i in range(30)])
    tp = TopicPartition(changelog, 0)
    async with our_app(tansu, tmp_path) as app, wired_consumer(app, [tp]) as consumer:
        kafka = consumer._thread._consumer
        thread = consumer._thread
        thread._fetch_records = types.MethodType(inspect.unwrap(AIOKafkaConsumerThread._fetch_records), thread)
        assert await straddle_a_rebalance(consumer, kafka, tp) == []
        lost = await kafka.position(tp)
        assert 0 < lost <= 30, "Faust's own fetch no longer loses the batch: is the patch still needed?"


async def stored_batches(bootstrap: str, topic: str) -> list[int]:
    """The record count of every batch the broker stores for partition 0 of ``topic``, read from a raw
    fetch (a consumer hands out records, not the batches the producer sent them in)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    counts: list[int] = []
    try:
        offset = 0
        while True:
            node = client.cluster.leader_for_partition(TopicPartition(topic, 0))
            response = await client.send(node, FetchRequest(100, 1, 64 << 20, 0, [(topic, [(0, offset, 64 << 20)])]))
            [(_topic, [(_p, error, highwater, *rest)])] = response.topics
            assert error == 0, f"fetch error {error}"
            records = MemoryRecords(rest[-1])
            before = len(counts)
            while (batch := records.next_batch()) is not None:
                n = sum(1 for _ in batch)
                if n:
                    counts.append(n)
                    offset = batch.base_offset + n  # type: ignore[union-attr]
            if offset >= highwater or len(counts) == before:
                return counts
    finally:
        await client.close()


async def test_a_checkpoints_state_records_reach_the_broker_in_few_batches(tansu: str, tmp_path: Path) -> None:
    """A checkpoint sends a state record per patient to the changelog in one go; the producer our app
    builds must put them in batches of up to 1 MiB, not aiokafka's default 16 KiB: the broker's work
    is per batch (Tansu's in-memory storage pays for every batch stored on every later request,
    benchmarks/RESULTS.md, "Broker cost per reading"). 2,000 records of 600 bytes are 1.2 MB: at most
    a few batches, where 16 KiB batches make at least 70."""
    topic = f"changelog-{uuid.uuid4().hex[:8]}"
    await new_topics(tansu, topic)
    async with our_app(tansu, tmp_path) as app:
        producer = app.producer._new_producer()  # the producer Faust builds from our settings
        await producer.start()
        try:
            state = bytes(range(200)) * 3
            sent = [await producer.send(topic, value=state, key=f"patient-{i}".encode(), partition=0)
                    for i in range(2000)]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
    batches = await stored_batches(tansu, topic)
    assert sum(batches) == 2000
    assert len(batches) <= 6, f"{len(batches)} batches of {batches[:10]}... records"


async def test_the_state_stores_bulk_changelog_records_are_in_the_log_once_faust_flushes_for_a_commit(
    tansu: str, tmp_path: Path,
) -> None:
    """``TableStore`` writes a checkpoint's states into the table's storage and hands them to the
    producer Faust produces with (``faust_adapter.kafka_producer``) in one go, not through Faust's
    producer buffer. What the worker's guarantee rests on, checked at the broker: once ``flush`` returned
    and Faust's producer flushed (what its offset commit does before committing), every state is
    in the changelog, on the partition the table's partitioner picks for its key (a recovery reads
    it where it reads Faust's own records), with its bytes, and each flush is one batch."""
    from stream.agents import TableStore
    from stream.faust_adapter import kafka_producer
    from stream.protocol import STATE_TABLE, partition_for

    app = create_app(broker=f"kafka://{tansu}", partitions=8, datadir=str(tmp_path / "faust"), web_port=free_port(),
                     app_id=f"conformance-{uuid.uuid4().hex[:8]}")
    table = app.Table(STATE_TABLE, partitions=8, key_type=bytes, value_type=bytes, use_partitioner=True)
    app.finalize()
    await app.producer.start()
    try:
        await table.changelog_topic.maybe_declare()
        store = TableStore(table, producer=lambda: kafka_producer(app))
        states = {f"patient-{i:04d}": bytes([i % 251]) * (300 + i % 7) for i in range(400)}
        items = list(states.items())
        store.put_many(items[:250])
        await store.flush()
        store.put_many(items[250:])
        await store.flush()
        assert all(store.get(p) == s for p, s in states.items())  # readable at once, from the table
        await app.producer.flush()
        changelog = table.changelog_topic.get_topic_name()
    finally:
        await app.producer.stop()
        app.consumer._thread.thread_loop.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=tansu, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(changelog, p) for p in range(8)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        got: dict[str, tuple[int, bytes]] = {}
        async with asyncio.timeout(60):
            while sum(ends.values()) > sum([await consumer.position(tp) for tp in tps]):
                for tp, recs in (await consumer.getmany(timeout_ms=500)).items():
                    got.update({r.key.decode(): (tp.partition, r.value) for r in recs if r.key is not None})
    finally:
        await consumer.stop()
    assert got == {p: (partition_for(p, 8), s) for p, s in states.items()}
    assert len(await stored_batches(tansu, changelog)) <= 2, "a flush's records in one batch per partition"
