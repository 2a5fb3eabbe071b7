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
import time
from dataclasses import dataclass, field
from typing import Final

import orjson

_LOGGER = logging.getLogger(__name__)

# Below Kafka's default 1 MiB record limit, with room for the envelope.
MAX_KEPT_BYTES: Final = 768 * 1024


def deadletter_record(*, stage: str, reason: str, source: str, payload: bytes, received_at: float) -> bytes:
    """Encode one dead-letter record."""
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

    Only the reason and where it came from are logged, never the payload (it may hold readings).
    """

    every: int = 1000
    counts: dict[str, int] = field(default_factory=dict)
    _last_summary: float = field(default_factory=time.monotonic)

    def note(self, stage: str, reason: str, source: str) -> None:
        """Count one dead-lettered input and maybe log it."""
        kind = reason.split(":", 1)[0][:80]
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n == 1 or n % self.every == 0:
            _LOGGER.warning("%s: dead-lettered input from %s (%d so far of this kind): %s", stage, source, n, reason)

    @property
    def total(self) -> int:
        """How many inputs were dead-lettered."""
        return sum(self.counts.values())
