"""Acknowledgements of alerts, on Kafka ``rpm.alert-acks`` (key: patient id, so an ack reaches the
worker that owns the patient's state)::

    {"v": 1, "alert_id": "9f0c…", "patient": "p0001", "by": "Nurse Ann", "at": 1764100000.0, "station": "ward-a"}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import orjson

from rpm_core.wire import is_valid_id

ACK_VERSION: Final = 1
MAX_ACK_BYTES: Final = 4096
MAX_NAME_CHARS: Final = 80


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledgement of one alert by one person."""

    alert_id: str
    patient: str
    by: str
    at: float
    station: str


def encode_ack(*, alert_id: str, patient: str, by: str, at: float, station: str) -> bytes:
    """The record value for ``rpm.alert-acks``."""
    ack = Ack(alert_id=alert_id, patient=patient, by=by, at=at, station=station)
    _check(ack)
    return orjson.dumps({"v": ACK_VERSION, "alert_id": alert_id, "patient": patient, "by": by, "at": at,
                         "station": station})


def decode_ack(value: bytes) -> Ack:
    """Decode and validate an ack; ``ValueError`` with the reason otherwise."""
    if len(value) > MAX_ACK_BYTES:
        raise ValueError(f"ack is {len(value)} bytes; the limit is {MAX_ACK_BYTES}")
    try:
        doc: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"ack is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != ACK_VERSION or isinstance(doc.get("v"), bool):
        raise ValueError(f"ack must be a v{ACK_VERSION} JSON object")
    if set(doc) != {"v", "alert_id", "patient", "by", "at", "station"}:
        raise ValueError("ack needs exactly v, alert_id, patient, by, at, station")
    at = doc["at"]
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ValueError("ack time must be a number of epoch seconds")
    ack = Ack(alert_id=doc["alert_id"], patient=doc["patient"], by=doc["by"], at=float(at), station=doc["station"])
    _check(ack)
    return ack


def _check(ack: Ack) -> None:
    if not isinstance(ack.alert_id, str) or not ack.alert_id.isalnum() or len(ack.alert_id) > 64:
        raise ValueError("ack alert_id must be alphanumeric")
    if not is_valid_id(ack.patient) or not is_valid_id(ack.station):
        raise ValueError("ack patient and station must be identifiers")
    if not isinstance(ack.by, str) or not ack.by.strip() or len(ack.by) > MAX_NAME_CHARS:
        raise ValueError(f"ack needs who acknowledged (1-{MAX_NAME_CHARS} characters)")
    if not math.isfinite(ack.at) or ack.at <= 0:
        raise ValueError("ack time must be a finite positive number")
