"""Alert acknowledgements: the wire format of Kafka topic ``rpm.alert-acks``.

A nurse station produces one record per acknowledgement; the worker that owns the patient
consumes it and calls the detector engine's ``acknowledge(alert_id, by, at)``. Contract::

    key   = patient id (UTF-8 bytes), so the ack lands on the partition of the worker that owns
            the patient (the same partitioning as ``rpm.readings``)
    value = {"v": 1, "alert_id": "3f2a…", "patient": "p0001", "by": "Nurse Ana",
             "at": 1764100000.123, "station": "north-desk"}

- ``v``: schema version, 1;
- ``alert_id``: the alert's id as published on ``rpm.alerts`` (identifier characters, ≤ 64);
- ``patient``: the alert's patient (identifier; must equal the record key);
- ``by``: the nurse's name as typed, 1-64 printable characters, surrounding space stripped;
- ``at``: when the nurse clicked, UTC epoch seconds (finite, from 2000 to 2100, not more than
  5 minutes ahead of the decoder's clock when one is given);
- ``station``: the nurse station that sent it (identifier).

Unknown keys are rejected (a newer sender must bump ``v``). Acknowledgements are at-least-once
like everything else: the engine ignores an ack for an alert that is not open or already
acknowledged, so a redelivered record changes nothing.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

import orjson

from rpm_core.errors import RpmError
from rpm_core.wire import MAX_EPOCH_S, MAX_FUTURE_SKEW_S, MIN_SAMPLE_EPOCH_S, is_valid_id, load_envelope

ACK_SCHEMA_VERSION: Final = 1
MAX_NAME_CHARS: Final = 64
# An ack is a few hundred bytes; anything much larger is not one.
MAX_ACK_BYTES: Final = 4096
_KEYS: Final = frozenset({"v", "alert_id", "patient", "by", "at", "station"})


class AckDecodeError(RpmError, ValueError):
    """A record on ``rpm.alert-acks`` that is not a valid acknowledgement; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """One acknowledgement of one alert by one nurse."""

    alert_id: str
    patient: str
    by: str
    at: float
    station: str

    def __post_init__(self) -> None:
        _check_id("alert_id", self.alert_id)
        _check_id("patient", self.patient)
        _check_id("station", self.station)
        object.__setattr__(self, "by", normalize_name(self.by))
        if isinstance(self.at, bool) or not isinstance(self.at, int | float) or not math.isfinite(self.at):
            raise AckDecodeError("'at' must be a finite number of epoch seconds")
        if self.at < MIN_SAMPLE_EPOCH_S:
            raise AckDecodeError("'at' is before 2000-01-01")
        if self.at >= MAX_EPOCH_S:
            raise AckDecodeError("'at' is after 2100-01-01")
        object.__setattr__(self, "at", float(self.at))  # an integer reads back as the float it is sent as

    @property
    def key(self) -> bytes:
        """The Kafka record key: the patient id."""
        return self.patient.encode()

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        return {"v": ACK_SCHEMA_VERSION, "alert_id": self.alert_id, "patient": self.patient,
                "by": self.by, "at": float(self.at), "station": self.station}

    def __bytes__(self) -> bytes:
        return orjson.dumps(self.to_dict())


def normalize_name(name: object) -> str:
    """A nurse's name as stored: NFC, surrounding space stripped, 1-64 printable characters."""
    if not isinstance(name, str):
        raise AckDecodeError("'by' must be a string")
    text = unicodedata.normalize("NFC", name).strip()
    if not text:
        raise AckDecodeError("'by' is empty: the nurse's name is required")
    if len(text) > MAX_NAME_CHARS:
        raise AckDecodeError(f"'by' is longer than {MAX_NAME_CHARS} characters")
    if any(not ch.isprintable() for ch in text):
        raise AckDecodeError("'by' contains control characters")
    return text


def _check_id(name: str, value: object) -> None:
    if not is_valid_id(value):
        raise AckDecodeError(f"{name!r} must be 1-64 characters of [A-Za-z0-9_.:-]")


def encode_ack(*, alert_id: str, patient: str, by: str, at: float, station: str) -> bytes:
    """The record value of an acknowledgement (validated; :class:`AckDecodeError` if invalid)."""
    return bytes(Ack(alert_id=alert_id, patient=patient, by=by, at=at, station=station))


def decode_ack(value: bytes | None, *, key: bytes | None = None, now: float | None = None) -> Ack:
    """Parse and validate a record value of ``rpm.alert-acks``.

    With ``key``, the key must be the patient id; with ``now`` (epoch s), ``at`` may be at most
    ``MAX_FUTURE_SKEW_S`` ahead. Raises :class:`AckDecodeError` (a ``ValueError``) with the reason.
    A record without a value (a Kafka tombstone) is an error like any other, never a crash: the
    ack agent must keep going.
    """
    doc = load_envelope(value, what="acknowledgement", version=ACK_SCHEMA_VERSION, error=AckDecodeError,
                        max_bytes=MAX_ACK_BYTES, keys=_KEYS, required=_KEYS)
    ack = Ack(alert_id=doc["alert_id"], patient=doc["patient"], by=doc["by"], at=doc["at"], station=doc["station"])
    if key is not None and key != ack.key:
        raise AckDecodeError("record key is not the acknowledgement's patient")
    if now is not None and ack.at > now + MAX_FUTURE_SKEW_S:
        raise AckDecodeError("'at' is more than 5 minutes in the future")
    return ack

