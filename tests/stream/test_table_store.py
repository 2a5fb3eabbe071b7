"""``stream.agents.TableStore``'s changelog writes, against a scripted producer (the broker's side is
checked against Tansu in ``test_faust_conformance.py``)."""

from __future__ import annotations

import asyncio
import types
from dataclasses import replace
from typing import Any

from detectors.engine import Engine
from rpm_core.rules import load_rules
from rpm_core.sink import SinkStats, make_sink
from stream.agents import TableStore
from stream.metrics import worker_metrics
from stream.pipeline import Pipeline, PipelineStats
from stream.protocol import WorkerStatus, partition_for
from stream.worker import health, heartbeat
from tests.conftest import REPO
from tests.stream.test_watchdog import T0, bridge, make, run

PARTITIONS = 8


class Meta:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic_partition = ("changelog", partition)
        self.offset = offset


class Storage(dict[bytes, bytes]):
    """The table's storage (Faust's ``table.data``), with the offsets it was told it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.persisted: dict[Any, int] = {}

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class Table:
    """A Faust table: ``table[key] = value`` would send its own changelog record (counted)."""

    def __init__(self) -> None:
        self.data = Storage()
        self.own_writes = 0
        self.changelog_topic = type("T", (), {"get_topic_name": staticmethod(lambda: "changelog")})()

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.own_writes += 1
        self.data[key] = value

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def keys(self) -> list[bytes]:
        return list(self.data)


class Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: float | None) -> object:
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class Producer:
    """aiokafka's producer as ``TableStore`` uses it: what was handed over, each with its future
    (left to the test), as ``("batch", partition, records, future)`` or ``("record", ...)``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]], asyncio.Future[Meta]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Meta]:
        fut: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        self.sent.append(("batch", partition, batch.records, fut))
        return fut

    async def send(self, topic: str, value: bytes, *, key: bytes, partition: int) -> asyncio.Future[Meta]:
        fut: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        self.sent.append(("record", partition, [(key, value)], fut))
        return fut


def sent_states(sent: list[Any]) -> dict[str, tuple[int, bytes]]:
    return {k.decode(): (p, v) for _how, p, records, _f in sent for k, v in records}


async def test_states_go_to_the_table_at_once_and_to_the_producer_as_a_batch_per_partition() -> None:
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    states = {f"p{i:03d}": b"s%d" % i for i in range(100)}
    store.put_many(list(states.items()))
    assert all(store.get(p) == s for p, s in states.items()) and producer.sent == []
    await store.flush()
    assert table.own_writes == 0, "no record through Faust's table path"
    assert sent_states(producer.sent) == {p: (partition_for(p, PARTITIONS), s) for p, s in states.items()}
    partitions = {partition_for(p, PARTITIONS) for p in states}
    assert sorted(p for how, p, _r, _f in producer.sent if how == "batch") == sorted(partitions)
    _how, partition, records, fut = producer.sent[0]
    fut.set_result(Meta(partition, 40))
    await asyncio.sleep(0)
    assert table.data.persisted == {("changelog", partition): 40 + len(records) - 1}
    await store.flush()
    assert len(producer.sent) == len(partitions), "nothing new: nothing sent"


async def test_while_a_partitions_batch_is_undelivered_its_next_states_go_record_by_record() -> None:
    """``send_batch`` would wait until the partition's pending batch left (a produce request): the
    next flush must not wait, so it appends record by record; once delivered, a batch again."""
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    same = [p for p in (f"q{i}" for i in range(300)) if partition_for(p, PARTITIONS) == 0][:4]
    store.put_many([(same[0], b"1"), (same[1], b"1")])
    await store.flush()
    store.put_many([(same[2], b"2"), (same[3], b"2")])
    await store.flush()
    assert [how for how, *_ in producer.sent] == ["batch", "record", "record"]
    for _how, _p, _r, fut in producer.sent:
        fut.set_result(Meta(0, 0))
    store.put_many([(same[0], b"3")])
    await store.flush()
    assert [how for how, *_ in producer.sent][3:] == ["batch"]
    assert sent_states(producer.sent[3:]) == {same[0]: (0, b"3")}


async def test_a_state_written_twice_before_a_flush_is_sent_once_with_its_newest_value() -> None:
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    store.put_many([("a", b"old")])
    store.put_many([("a", b"new")])
    await store.flush()
    assert [r for _how, _p, r, _f in producer.sent] == [[(b"a", b"new")]]


async def test_what_the_producer_fails_is_sent_again_with_the_current_states() -> None:
    """A batch or record the producer gives up on (after its own retries) must not leave the
    changelog behind the table: those patients' states go out again with the next flush, the
    newest ones."""
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    same = [p for p in (f"q{i}" for i in range(300)) if partition_for(p, PARTITIONS) == 0][:3]
    store.put_many([(same[0], b"v1"), (same[1], b"w1")])
    await store.flush()
    store.put_many([(same[2], b"x1")])
    await store.flush()  # the batch is undelivered: a record
    store.put_many([(same[1], b"w2")])  # newer, not flushed yet
    for _how, _p, _r, fut in producer.sent:
        fut.set_exception(TimeoutError("expired"))
    await asyncio.sleep(0)
    assert store.failed_records == 3
    await store.flush()
    assert sent_states(producer.sent[2:]) == {same[0]: (0, b"v1"), same[1]: (0, b"w2"), same[2]: (0, b"x1")}


async def test_states_the_producer_refused_are_kept_for_the_next_flush() -> None:
    class Closed(Producer):
        async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Meta]:
            raise ConnectionError("closed")

    table, closed = Table(), Closed()
    producer: Producer = closed
    store = TableStore(table, producer=lambda: producer)
    store.put_many([("a", b"1"), ("b", b"2")])
    try:
        await store.flush()
    except ConnectionError:
        pass
    else:
        raise AssertionError("the failure must reach the caller: nothing may be acknowledged")
    producer = Producer()
    await store.flush()
    assert sent_states(producer.sent) == {p: (partition_for(p, PARTITIONS), s) for p, s in (("a", b"1"), ("b", b"2"))}


async def test_without_a_producer_every_state_is_the_tables_own_write() -> None:
    table = Table()
    store = TableStore(table)
    store.put_many([("a", b"1"), ("b", b"2")])
    await store.flush()
    assert table.own_writes == 2 and store.get("b") == b"2"



async def test_a_failed_changelog_write_is_a_problem_until_those_states_are_delivered() -> None:
    """Never silent: a state the changelog does not hold is not durable (a restart would lose it),
    so the store says so, with the count and Kafka's error, until a later record of every such
    patient is delivered; the metrics count it."""
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    store.put_many([("a", b"1"), ("b", b"1"), ("c", b"1")])
    await store.flush()
    assert store.problem is None
    for _how, _p, records, fut in producer.sent:
        if any(k == b"c" for k, _v in records):
            fut.set_result(Meta(0, 0))
        else:
            fut.set_exception(TimeoutError("broker gone"))
    await asyncio.sleep(0)
    failed = {"a", "b"} - {k.decode() for _h, _p, r, f in producer.sent if not f.exception() for k, _v in r}
    assert store.unsaved == len(failed) and store.problem is not None
    assert f"of {len(failed)} patients" in store.problem and "broker gone" in store.problem
    assert "state changelog" in store.problem
    metrics = {m.name: m for m in worker_metrics(PipelineStats(), SinkStats(), store=store)}
    assert metrics["rpm_worker_state_unsaved_patients"].samples[0][1] == len(failed)
    assert metrics["rpm_worker_state_changelog_failures_total"].samples[0][1] == store.failed_records > 0
    sent_before = len(producer.sent)
    await store.flush()  # sent again
    assert store.problem is not None, "handed over is not delivered"
    for _how, p, _r, fut in producer.sent[sent_before:]:
        fut.set_result(Meta(p, 1))
    await asyncio.sleep(0)
    assert store.problem is None and store.unsaved == 0


async def test_a_failed_state_of_a_patient_no_longer_owned_is_not_sent_again() -> None:
    """After a rebalance the patient's partition has a new owner, which writes its own states: our
    stale one, sent again, would overwrite them in the changelog. It is dropped, counted and logged,
    and it does not keep the warning up."""
    owned = {"a": True, "b": True}
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer, owns=lambda p: owned[p])
    store.put_many([("a", b"1"), ("b", b"1")])
    await store.flush()
    owned["b"] = False  # revoked before its record failed
    for _how, _p, _r, fut in producer.sent:
        fut.set_exception(TimeoutError("expired"))
    await asyncio.sleep(0)
    assert store.dropped_records == 1 and store.unsaved == 1
    sent_before = len(producer.sent)
    await store.flush()
    assert sent_states(producer.sent[sent_before:]) == {"a": (partition_for("a", PARTITIONS), b"1")}


async def test_a_changelog_failure_reaches_the_watchdog_as_a_kafka_warning_and_clears() -> None:
    """The technical path: the store's problem → the worker's /healthz body and heartbeat (healthy:
    detection and alerts go on, no 503) → the watchdog's tech.worker_warning naming Kafka, within a
    minute; it clears once the states are delivered."""
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    rules = load_rules(REPO / "alert_rules.yaml")
    pipeline = Pipeline(engine_factory=lambda: Engine(rules), sink=make_sink(url="http://127.0.0.1:9", db="x"))
    pipeline.use_store(store)
    app = types.SimpleNamespace(started=True, should_stop=False)
    status = WorkerStatus(partitions=frozenset({0, 1, 2, 3}), recovered=True)
    store.put_many([("a", b"1")])
    await store.flush()
    producer.sent[0][3].set_exception(ConnectionError("NotLeaderForPartition"))
    await asyncio.sleep(0)
    body = health(app, pipeline, status)
    assert body["configured"] and body["progressing"] and "state changelog" in body["problem"]
    wd = make()
    t0 = T0 + 60
    out = run(wd, t0, t0 + 30, lambda t: [replace(heartbeat(app, pipeline, status, instance="w1", ward_of={}),
                                                   time=t), bridge("b1", t)])
    [raised] = out
    assert (raised.rule, raised.severity, raised.component) == ("tech.worker_warning", "warning", "kafka")
    assert "NotLeaderForPartition" in raised.message and "Kafka" in raised.remedy
    assert "readings refused" not in raised.message, "not InfluxDB's text"
    assert raised.time - t0 <= 60
    await store.flush()
    producer.sent[1][3].set_result(Meta(producer.sent[1][1], 1))
    await asyncio.sleep(0)
    out = run(wd, t0 + 31, t0 + 40, lambda t: [replace(heartbeat(app, pipeline, status, instance="w1", ward_of={}),
                                                        time=t), bridge("b1", t)])
    assert [(a.rule, a.state) for a in out] == [("tech.worker_warning", "cleared")]
