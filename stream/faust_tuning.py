"""Faust settings tuned for this pipeline, and the Faust internal we override for latency.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` when it builds its aiokafka consumer
(``faust/transport/drivers/aiokafka.py``, ``AIOKafkaConsumerThread._create_worker_consumer``).
With a quiet partition every fetch then waits up to 1.5 s, which dominates alert latency
(p50 450 ms measured here; 70 ms at 50 ms). :func:`install_fetch_wait` wraps that method and sets
the consumer's wait before it starts. ``tests/stream/test_faust_conformance.py`` fails loudly if
an upgrade moves either piece. (The consumer patch that keeps rebalances from losing records is
:mod:`stream.faust_rebalance`.)
"""

from __future__ import annotations

import functools
from typing import Any, Final

FETCH_MAX_WAIT_MS: Final = 50
# A fetch returns once this much is there (or after FETCH_MAX_WAIT_MS): under load, a few fetches
# a second with big batches instead of hundreds with a record or two, which cost the broker more
# CPU than the records themselves (Tansu was the busiest process at 20k readings/s).
FETCH_MIN_BYTES: Final = 64 * 1024
# Tansu's group joins take half the session timeout; Faust's 60 s default stalls starts for minutes.
SESSION_TIMEOUT_S: Final = 6.0
HEARTBEAT_INTERVAL_S: Final = 1.0
REBALANCE_TIMEOUT_S: Final = 12.0
REQUEST_TIMEOUT_S: Final = 30.0

_installed: list[int] = []


def install_fetch_wait(max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Make every Faust worker consumer created from now on wait at most ``max_wait_ms`` per fetch."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if _installed:
        _installed[0] = max_wait_ms
        return
    _installed.append(max_wait_ms)
    original = AIOKafkaConsumerThread._create_worker_consumer

    @functools.wraps(original)
    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        # aiokafka reads this attribute when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = _installed[0]
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


STORES: Final = {"memory": "memory://", "rocksdb": "rocksdb://"}


def faust_settings(*, broker: str, partitions: int, datadir: str, web_port: int, store: str = "memory"
                   ) -> dict[str, Any]:
    """``faust.App`` keyword arguments for a worker of this pipeline."""
    return {
        "broker": broker,
        "datadir": datadir,
        "topic_partitions": partitions,
        "topic_replication_factor": 1,
        "broker_session_timeout": SESSION_TIMEOUT_S,
        "broker_heartbeat_interval": HEARTBEAT_INTERVAL_S,
        "broker_rebalance_timeout": REBALANCE_TIMEOUT_S,
        "broker_request_timeout": REQUEST_TIMEOUT_S,
        "broker_commit_every": 1000,
        "broker_commit_interval": 1.0,
        # A new consumer group must see what was produced before it first joined.
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "producer_linger_ms": 20,  # fewer, bigger produce requests (state, alerts); +≤20 ms
        "stream_buffer_maxsize": 16384,
        # Memory tables (default) are recovered from their changelog; RocksDB ones keep a copy on
        # disk. No standbys: recovery reads the changelog.
        "store": STORES[store],
        "table_standby_replicas": 0,
        "web_enabled": True,
        "web_host": "127.0.0.1",
        "web_port": web_port,
        "web_bind": "127.0.0.1",
        "value_serializer": "raw",
        "key_serializer": "raw",
    }
