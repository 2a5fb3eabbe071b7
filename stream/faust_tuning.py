"""Faust settings tuned for this pipeline (public ``faust.App`` settings only).

What cannot be set through Faust's settings, the fetch wait among them, is patched in
:mod:`stream.faust_adapter`.
"""

from __future__ import annotations

from typing import Any, Final

# Tansu's group joins take half the session timeout; Faust's 60 s default stalls starts for minutes.
SESSION_TIMEOUT_S: Final = 6.0
HEARTBEAT_INTERVAL_S: Final = 1.0
REBALANCE_TIMEOUT_S: Final = 12.0
REQUEST_TIMEOUT_S: Final = 30.0

PRODUCER_MAX_BATCH_BYTES: Final = 1024 * 1024  # as the bridge's producer
PRODUCER_MAX_REQUEST_BYTES: Final = 2 * 1024 * 1024

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
        # A checkpoint writes a state record per patient: in aiokafka's default 16 KiB batches that
        # was thousands of batches per checkpoint, and the broker's cost is per batch (Tansu's
        # in-memory storage: per batch stored, and every later request pays for the batches stored;
        # RESULTS.md, "Broker cost per reading").
        "producer_max_batch_size": PRODUCER_MAX_BATCH_BYTES,
        "producer_max_request_size": PRODUCER_MAX_REQUEST_BYTES,
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
