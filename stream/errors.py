"""Errors of the stream processing services (bridge, worker); InfluxDB write errors are in
:mod:`rpm_core.errors` (the sink is shared with the notifier).

::

    StreamError
    └── BridgeError                  the MQTT→Kafka bridge cannot run (config, auth)
"""

from __future__ import annotations


class StreamError(Exception):
    """Root of the errors raised by ``stream``."""


class BridgeError(StreamError):
    """The MQTT→Kafka bridge cannot run."""
