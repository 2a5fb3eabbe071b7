"""The contract of messages from the care team to the patient's agent, and of the patient's acks.

The notifier (``rpm notifier``, channel ``edge_agent``) publishes a :class:`PatientMessage` on the
patient's command topic ``rpm/v1/p/{patient}/cmd`` (QoS 1); the agent (:mod:`edge_agent.commands`)
shows it and, when the patient acknowledges, publishes a :class:`PatientAck` on
``rpm/v1/p/{patient}/ack``, which the notifier turns into an acknowledgement on Kafka
``rpm.alert-acks``. Wire format (versioned JSON, unknown keys rejected)::

    cmd: {"v": 1, "type": "message", "id": "<notification id>", "alert_ids": ["3f2a…"],
          "severity": "critical", "text": "Your glucose is low. Take 15 g …", "at": 1764100000.0}
    ack: {"v": 1, "id": "<notification id or empty>", "alert_ids": ["3f2a…"], "at": 1764100042.5}

Both sides import this module; neither owns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import orjson

from rpm_core.errors import RpmError
from rpm_core.wire import MAX_EPOCH_S, MIN_SAMPLE_EPOCH_S, TOPIC_ROOT, brief, is_valid_id, load_envelope

COMMAND_SCHEMA_VERSION: Final = 1
MAX_COMMAND_BYTES: Final = 8192
MAX_TEXT_CHARS: Final = 1000
MAX_ALERTS_PER_MESSAGE: Final = 100
_SEVERITIES: Final = frozenset({"info", "warning", "critical"})
_MESSAGE_KEYS: Final = frozenset({"v", "type", "id", "alert_ids", "severity", "text", "at"})
_ACK_KEYS: Final = frozenset({"v", "id", "alert_ids", "at"})


class CommandDecodeError(RpmError, ValueError):
    """A message on the command or ack topic that is not valid; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ack_topic(patient: str) -> str:
    """MQTT topic on which the agent of ``patient`` publishes the patient's acknowledgements."""
    return f"{TOPIC_ROOT}/p/{patient}/ack"


def patient_from_ack_topic(topic: str) -> str:
    """The patient of an ``rpm/v1/p/<patient>/ack`` topic, or :class:`CommandDecodeError`."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{TOPIC_ROOT}/p" or parts[4] != "ack" or not is_valid_id(parts[3]):
        raise CommandDecodeError(f"topic {brief(topic)} is not {TOPIC_ROOT}/p/<patient>/ack")
    return parts[3]


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientMessage:
    """A message for the patient about one or more alerts."""

    id: str
    alert_ids: tuple[str, ...]
    severity: str
    text: str
    at: float

    def __post_init__(self) -> None:
        _check_ids(self.id, self.alert_ids, allow_empty_id=False)
        if not isinstance(self.severity, str) or self.severity not in _SEVERITIES:  # a list is unhashable
            raise CommandDecodeError("'severity' must be info, warning or critical")
        if not isinstance(self.text, str) or not self.text.strip() or len(self.text) > MAX_TEXT_CHARS:
            raise CommandDecodeError(f"'text' must be 1-{MAX_TEXT_CHARS} characters")
        object.__setattr__(self, "at", _checked_time(self.at))

    def __bytes__(self) -> bytes:
        return orjson.dumps({"v": COMMAND_SCHEMA_VERSION, "type": "message", "id": self.id,
                             "alert_ids": list(self.alert_ids), "severity": self.severity, "text": self.text,
                             "at": float(self.at)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> PatientMessage:
        """Decode and validate; :class:`CommandDecodeError` otherwise."""
        doc = _load(raw, _MESSAGE_KEYS)
        if doc["type"] != "message":
            raise CommandDecodeError(f"unknown command type {brief(doc['type'])}")
        return cls(id=doc["id"], alert_ids=_tuple(doc["alert_ids"]), severity=doc["severity"], text=doc["text"],
                   at=doc["at"])


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientAck:
    """The patient acknowledged the alerts ``alert_ids`` (of message ``id``, empty when typed by hand)."""

    id: str
    alert_ids: tuple[str, ...]
    at: float

    def __post_init__(self) -> None:
        _check_ids(self.id, self.alert_ids, allow_empty_id=True)
        object.__setattr__(self, "at", _checked_time(self.at))

    def __bytes__(self) -> bytes:
        return orjson.dumps({"v": COMMAND_SCHEMA_VERSION, "id": self.id, "alert_ids": list(self.alert_ids),
                             "at": float(self.at)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> PatientAck:
        """Decode and validate; :class:`CommandDecodeError` otherwise."""
        doc = _load(raw, _ACK_KEYS)
        return cls(id=doc["id"], alert_ids=_tuple(doc["alert_ids"]), at=doc["at"])


def _load(raw: bytes, keys: frozenset[str]) -> dict[str, Any]:
    return load_envelope(raw, what="message", version=COMMAND_SCHEMA_VERSION, error=CommandDecodeError,
                         max_bytes=MAX_COMMAND_BYTES, keys=keys, required=keys)


def _tuple(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise CommandDecodeError("'alert_ids' must be a list")
    return tuple(value)


def _check_ids(message_id: object, alert_ids: tuple[str, ...], *, allow_empty_id: bool) -> None:
    if not (is_valid_id(message_id) or (allow_empty_id and message_id == "")):
        raise CommandDecodeError("'id' must be 1-64 characters of [A-Za-z0-9_.:-]")
    if not 1 <= len(alert_ids) <= MAX_ALERTS_PER_MESSAGE or not all(is_valid_id(a) for a in alert_ids):
        raise CommandDecodeError(f"'alert_ids' must be 1-{MAX_ALERTS_PER_MESSAGE} alert ids")


def _checked_time(at: object) -> float:
    """``at`` as float epoch seconds, from 2000 to 2100; :class:`CommandDecodeError` otherwise."""
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise CommandDecodeError("'at' must be a finite number of epoch seconds")
    if not MIN_SAMPLE_EPOCH_S <= at < MAX_EPOCH_S:
        raise CommandDecodeError("'at' must be between 2000-01-01 and 2100-01-01 (epoch seconds)")
    return float(at)
