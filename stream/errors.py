"""Errors of the stream processing services (bridge, worker, sink).

::

    StreamError
    ├── SinkError                    InfluxDB could not take a write
    │   ├── SinkUnavailableError     connection refused / 5xx: retried with backoff
    │   │   └── SinkConfigError      missing database/bucket, rejected credentials: waited out, and said
    │   └── SinkRejectedError        4xx: the points themselves are bad; isolated and dead-lettered
    └── BridgeError                  the MQTT→Kafka bridge cannot run (config, auth)
"""

from __future__ import annotations


class StreamError(Exception):
    """Root of the errors raised by ``stream``."""


class SinkError(StreamError):
    """InfluxDB could not take a write."""


class SinkUnavailableError(SinkError):
    """InfluxDB is down or overloaded (connection error, 5xx); the write can be retried."""


class SinkConfigError(SinkUnavailableError):
    """InfluxDB cannot take any write until someone fixes its configuration (no such database or
    bucket, credentials refused): not the points' fault, so nothing is dead-lettered; ``fix`` says
    what to do, for the log, ``/healthz`` and the technical alert."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix


class SinkRejectedError(SinkError):
    """InfluxDB refused the points (4xx); retrying the same lines cannot succeed."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"InfluxDB rejected the write ({status}): {body[:300]}")
        self.status = status
        self.body = body


class BridgeError(StreamError):
    """The MQTT→Kafka bridge cannot run."""
