"""``stream.agents.TableStore``'s bulk changelog writes, against a scripted producer (the broker's side
is checked against Tansu in ``test_faust_conformance.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.agents import TableStore
from stream.protocol import partition_for

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
    """aiokafka's producer as ``TableStore`` uses it; each sent batch's future is left to the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Batch, asyncio.Future[Meta]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Meta]:
        fut: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        self.sent.append((partition, batch, fut))
        return fut


def sent_states(producer: Producer) -> dict[str, tuple[int, bytes]]:
    return {k.decode(): (p, v) for p, batch, _f in producer.sent for k, v in batch.records}


async def test_states_go_to_the_table_at_once_and_to_the_changelog_in_one_batch_per_partition() -> None:
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    states = {f"p{i:03d}": b"s%d" % i for i in range(100)}
    store.put_many(list(states.items()))
    assert all(store.get(p) == s for p, s in states.items()) and producer.sent == []
    await store.flush()
    assert table.own_writes == 0, "no record through Faust's table path"
    assert sent_states(producer) == {p: (partition_for(p, PARTITIONS), s) for p, s in states.items()}
    assert sorted(p for p, _b, _f in producer.sent) == sorted({partition_for(p, PARTITIONS) for p in states})
    partition, batch, fut = producer.sent[0]
    fut.set_result(Meta(partition, 40))
    await asyncio.sleep(0)
    assert table.data.persisted == {("changelog", partition): 40 + batch.record_count() - 1}
    await store.flush()
    assert len(producer.sent) == len({partition_for(p, PARTITIONS) for p in states}), "nothing new: nothing sent"


async def test_a_state_written_twice_before_a_flush_is_sent_once_with_its_newest_value() -> None:
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    store.put_many([("a", b"old")])
    store.put_many([("a", b"new")])
    await store.flush()
    assert [batch.records for _p, batch, _f in producer.sent] == [[(b"a", b"new")]]


async def test_a_failed_batch_is_sent_again_with_the_current_states() -> None:
    """A batch the producer gives up on (after its own retries) must not leave the changelog behind
    the table: its keys go out again with the next flush, each with its newest state."""
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    same = [p for p in (f"q{i}" for i in range(200)) if partition_for(p, PARTITIONS) == 0][:2]
    store.put_many([(same[0], b"v1"), (same[1], b"w1")])
    await store.flush()
    [(_p, _batch, fut)] = producer.sent
    store.put_many([(same[1], b"w2")])  # newer, not flushed yet
    fut.set_exception(TimeoutError("expired"))
    await asyncio.sleep(0)
    assert store.failed_batches == 1
    await store.flush()
    assert dict(producer.sent[-1][1].records) == {same[0].encode(): b"v1", same[1].encode(): b"w2"}


async def test_without_a_producer_every_state_is_the_tables_own_write() -> None:
    table = Table()
    store = TableStore(table)
    store.put_many([("a", b"1"), ("b", b"2")])
    await store.flush()
    assert table.own_writes == 2 and store.get("b") == b"2"
