"""Conformance: the faust-streaming and aiokafka internals we rely on are still where we expect.

If an upgrade moves any of them, this fails loudly instead of alert latency silently going back
to Faust's hard-coded 1.5 s fetch wait (see stream/faust_tuning.py).
"""

from __future__ import annotations

import inspect

from aiokafka import AIOKafkaConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from stream.faust_tuning import FETCH_MAX_WAIT_MS, install_fetch_wait


def test_faust_still_builds_its_consumer_in_create_worker_consumer() -> None:
    source = inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms" in source


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


def test_take_acks_only_after_the_batch_body_ran() -> None:
    """At-least-once depends on take() acking events in the finally after the yield."""
    import faust.streams

    source = inspect.getsource(faust.streams.Stream.take)
    after_yield = source.split("yield list(buffer)", 1)[1]
    assert "await self.ack(event)" in after_yield
