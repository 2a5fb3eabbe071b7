"""Dead-letter records: every input we cannot use is parked in ``rpm.deadletter`` with its reason.

A record is JSON::

    {"stage": "bridge", "reason": "...", "source": "<mqtt or kafka topic>", "received_at": 1.7e9,
     "size": 123, "sha256": "...", "payload": "<text>" | null, "payload_b64": "<base64>" | null,
     "truncated": false}

Payloads up to :data:`MAX_KEPT_BYTES` are kept whole (as text when they are UTF-8, else base64) so
an operator can replay them after a fix; larger ones keep their head, size and hash.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Final

import orjson

_LOGGER = logging.getLogger(__name__)

# Below Kafka's default 1 MiB record limit, with room for the envelope.
MAX_KEPT_BYTES: Final = 768 * 1024
# A reason may quote the input (a metric name, a schema version, unknown keys, a time, InfluxDB's
# echo of a line): the dead-letter record keeps all of it beside the payload, the log none of it.
_ECHOES: Final = (
    (re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""), "'…'"),
    (re.compile(r"(unknown (?:fields|keys?|key\(s\)):).*"), r"\1 …"),
    (re.compile(r"((?:version|metric) |time (?!is )).*?(; | \(| is before|$)"), r"\1…\2"),
)
_NUMBER: Final = re.compile(r"\d+(?:\.\d+)?")
_SAFE_SOURCE: Final = re.compile(r"[A-Za-z0-9_.:/+-]{1,200}")
MAX_LOGGED_REASON_CHARS: Final = 300


def redact_reason(reason: str) -> str:
    """``reason`` without what the input put into it, printable and bounded: fit for a log line."""
    for pattern, replacement in _ECHOES:
        reason = pattern.sub(replacement, reason)
    printable = "".join(ch if ch.isprintable() else "?" for ch in reason)
    return printable[:MAX_LOGGED_REASON_CHARS]


def safe_source(source: str) -> str:
    """A topic name fit for a log line (an MQTT topic is the sender's to choose: it may hold anything)."""
    return source if _SAFE_SOURCE.fullmatch(source) else "<an invalid topic>"


def deadletter_record(
    *, stage: str, reason: str, source: str, payload: bytes | None, received_at: float
) -> bytes:
    """Encode one dead-letter record (a Kafka tombstone's missing value counts as an empty payload)."""
    payload = payload or b""
    kept = payload[:MAX_KEPT_BYTES]
    text: str | None
    try:
        text = kept.decode("utf-8")
        b64 = None
    except UnicodeDecodeError:
        text, b64 = None, base64.b64encode(kept).decode()
    return orjson.dumps(
        {
            "stage": stage,
            "reason": reason,
            "source": source,
            "received_at": received_at,
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": text,
            "payload_b64": b64,
            "truncated": len(payload) > MAX_KEPT_BYTES,
        }
    )


@dataclass
class ReasonLog:
    """Logs each kind of bad input once, then every ``every``-th time: a flood must not flood the log.

    Only the reason and where it came from are logged, never the payload (it may hold readings),
    and the reason only as :func:`redact_reason` leaves it; kinds ignore numbers (sizes, indexes).
    """

    every: int = 1000
    counts: dict[str, int] = field(default_factory=dict)
    _last_summary: float = field(default_factory=time.monotonic)

    def note(self, stage: str, reason: str, source: str) -> None:
        """Count one dead-lettered input and maybe log it."""
        logged = redact_reason(reason)
        kind = _NUMBER.sub("N", logged)[:120]
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n == 1 or n % self.every == 0:
            _LOGGER.warning(
                "%s: dead-lettered input from %s (%d so far of this kind): %s", stage, safe_source(source), n, logged
            )
        _LOGGER.debug("%s: dead-lettered input from %r: %s", stage, source[:200], reason)

    @property
    def total(self) -> int:
        """How many inputs were dead-lettered."""
        return sum(self.counts.values())
