"""Dead-letter records: every input we cannot use is parked in ``rpm.deadletter`` with its reason.

A record is JSON::

    {"stage": "bridge", "reason": "...", "source": "<mqtt or kafka topic>", "received_at": 1.7e9,
     "size": 123, "sha256": "...", "payload": "<text>" | null, "payload_b64": "<base64>" | null,
     "truncated": false}

Payloads up to :data:`MAX_KEPT_BYTES` are kept whole (as text when they are UTF-8 and their JSON
escaping fits, else base64) so an operator can replay them after a fix; larger ones keep their
head, size and hash. The *encoded* record never exceeds :data:`MAX_RECORD_BYTES`, whatever the
payload: JSON escapes a control character as six bytes (``\u0001``), so a payload kept as text can
grow sixfold, and a record above Kafka's maximum would be refused (and, retried, stop the bridge).
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

# Kept whole up to this; even as base64 (4/3) it fits MAX_RECORD_BYTES with the envelope, so a
# payload of up to this size is always kept whole, in one form or the other.
MAX_KEPT_BYTES: Final = 640 * 1024
# The whole encoded record, payload, reason and envelope included: below Kafka's default
# max.message.bytes (1,048,588) and the producers' max request size.
MAX_RECORD_BYTES: Final = 1_000_000
# A reason or a source may quote the input (unknown keys, a topic the sender chose): bounded.
MAX_REASON_CHARS: Final = 2_000
MAX_SOURCE_CHARS: Final = 1_000
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
    """Encode one dead-letter record of at most :data:`MAX_RECORD_BYTES` (a Kafka tombstone's missing
    value counts as an empty payload).

    The payload is kept whole as text when it is UTF-8 of at most :data:`MAX_KEPT_BYTES` and its
    JSON encoding fits; otherwise as base64 of as many leading bytes as fit (all of them when they
    do), with ``truncated`` saying whether any were left out. ``size`` and ``sha256`` always
    describe the whole payload.
    """
    payload = payload or b""
    doc: dict[str, object] = {
        "stage": stage,
        "reason": bounded_text(reason, MAX_REASON_CHARS),
        "source": bounded_text(source, MAX_SOURCE_CHARS),
        "received_at": received_at,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": None,
        "payload_b64": None,
        "truncated": False,
    }
    if len(payload) <= MAX_KEPT_BYTES:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            record = orjson.dumps({**doc, "payload": text})
            if len(record) <= MAX_RECORD_BYTES:
                return record
    # base64 grows by exactly 4/3: keep the head that fits beside the envelope
    envelope = len(orjson.dumps({**doc, "payload_b64": "", "truncated": True}))
    keep = min(len(payload), MAX_KEPT_BYTES, (MAX_RECORD_BYTES - envelope) // 4 * 3)
    record = orjson.dumps({**doc, "payload_b64": base64.b64encode(payload[:keep]).decode(),
                           "truncated": keep < len(payload)})
    assert len(record) <= MAX_RECORD_BYTES
    return record


def minimal_deadletter_record(record: bytes) -> bytes:
    """``record`` (a :func:`deadletter_record`) without its payload: what is left to send when Kafka
    refused the record itself (a broker whose maximum is below ours). Size and hash stay."""
    doc = orjson.loads(record)
    doc.update(payload=None, payload_b64=None, truncated=bool(doc.get("size")))
    return orjson.dumps(doc)


def bounded_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
