"""``stream.agents.TableStore``'s changelog writes, against a scripted producer (the broker's side is
checked against Tansu in ``test_faust_conformance.py``)."""

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


class Producer:
    """aiokafka's producer as ``TableStore`` uses it; each record's future is left to the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, bytes, asyncio.Future[Meta]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    async def send(self, topic: str, value: bytes, *, key: bytes, partition: int) -> asyncio.Future[Meta]:
        fut: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        self.sent.append((partition, key, value, fut))
        return fut


def sent_states(producer: Producer) -> dict[str, tuple[int, bytes]]:
    return {k.decode(): (p, v) for p, k, v, _f in producer.sent}


async def test_states_go_to_the_table_at_once_and_to_the_producer_with_the_flush() -> None:
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    states = {f"p{i:03d}": b"s%d" % i for i in range(100)}
    store.put_many(list(states.items()))
    assert all(store.get(p) == s for p, s in states.items()) and producer.sent == []
    await store.flush()
    assert table.own_writes == 0, "no record through Faust's table path"
    assert sent_states(producer) == {p: (partition_for(p, PARTITIONS), s) for p, s in states.items()}
    partition, _k, _v, fut = producer.sent[0]
    fut.set_result(Meta(partition, 40))
    await asyncio.sleep(0)
    assert table.data.persisted == {("changelog", partition): 40}
    await store.flush()
    assert len(producer.sent) == 100, "nothing new: nothing sent"


async def test_a_state_written_twice_before_a_flush_is_sent_once_with_its_newest_value() -> None:
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    store.put_many([("a", b"old")])
    store.put_many([("a", b"new")])
    await store.flush()
    assert [(k, v) for _p, k, v, _f in producer.sent] == [(b"a", b"new")]


async def test_a_failed_record_is_sent_again_with_the_current_state() -> None:
    """A record the producer gives up on (after its own retries) must not leave the changelog behind
    the table: the patient's state goes out again with the next flush, the newest one."""
    table, producer = Table(), Producer()
    store = TableStore(table, producer=lambda: producer)
    store.put_many([("a", b"v1"), ("b", b"w1")])
    await store.flush()
    (_p, _k, _v, fut_a), (_p2, _k2, _v2, fut_b) = producer.sent
    store.put_many([("b", b"w2")])  # newer, not flushed yet
    fut_a.set_exception(TimeoutError("expired"))
    fut_b.set_exception(TimeoutError("expired"))
    await asyncio.sleep(0)
    assert store.failed_records == 2
    await store.flush()
    assert {k: v for _p, k, v, _f in producer.sent[2:]} == {b"a": b"v1", b"b": b"w2"}


async def test_states_the_producer_refused_are_kept_for_the_next_flush() -> None:
    class Closed(Producer):
        async def send(self, topic: str, value: bytes, *, key: bytes, partition: int) -> asyncio.Future[Meta]:
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
    assert sent_states(producer) == {p: (partition_for(p, PARTITIONS), s) for p, s in (("a", b"1"), ("b", b"2"))}


async def test_without_a_producer_every_state_is_the_tables_own_write() -> None:
    table = Table()
    store = TableStore(table)
    store.put_many([("a", b"1"), ("b", b"2")])
    await store.flush()
    assert table.own_writes == 2 and store.get("b") == b"2"
