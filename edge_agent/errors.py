"""Exceptions raised by the edge agent.

Everything the edge agent raises on purpose derives from :class:`EdgeAgentError`, so a caller can
catch the whole family in one place. Leaf errors carry the data a caller needs, and mix in the
builtin a caller would otherwise catch (``except ValueError`` still sees a bad payload)::

    EdgeAgentError
    ├── GattDecodeError (+ ValueError)   bytes (or field values) that are not a valid GATT payload
    ├── DeviceError                      something went wrong with one BLE device
    │   ├── DeviceNotFoundError          no advertisement from the address within the scan
    │   └── PairingError                 bonding / passkey entry failed or was refused
    ├── OutboxError                      the durable store-and-forward queue failed
    │   └── OutboxFullError              ... it is at capacity and refuses new readings
    └── PublishError                     the MQTT broker did not accept a message

Arguments are passed on to :class:`Exception`, so every error pickles and compares by ``args``.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every error the edge agent raises on purpose."""


class GattDecodeError(EdgeAgentError, ValueError):
    """Bytes that do not form a valid payload of a GATT characteristic (edge_agent.gatt).

    Also raised when a payload object is built with field values its wire format cannot carry,
    because encoding and decoding share the same range checks.

    Attributes:
        field: the field that could not be decoded, e.g. ``"sequence_number"`` or ``"base_time.month"``.
        reason: what was wrong with it.
        payload: the payload type being decoded, e.g. ``"GlucoseMeasurement"`` (may be empty).
    """

    def __init__(self, field: str, reason: str, payload: str = "") -> None:
        super().__init__(field, reason, payload)
        self.field = field
        self.reason = reason
        self.payload = payload

    def __str__(self) -> str:
        where = f"{self.payload}.{self.field}" if self.payload else self.field
        return f"{where}: {self.reason}"


class DeviceError(EdgeAgentError):
    """Something went wrong with one BLE device."""


class DeviceNotFoundError(DeviceError):
    """No advertisement from ``address`` was seen within the scan."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address

    def __str__(self) -> str:
        return f"device {self.address} not found"


class PairingError(DeviceError):
    """Bonding with ``address`` failed (refused, wrong passkey, not in pairing mode, ...)."""

    def __init__(self, address: str, reason: str = "") -> None:
        super().__init__(address, reason)
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"pairing with {self.address} failed{suffix}"


class OutboxError(EdgeAgentError):
    """The durable store-and-forward queue failed."""


class OutboxFullError(OutboxError):
    """The outbox holds ``capacity`` readings already and refuses new ones."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.capacity = capacity

    def __str__(self) -> str:
        return f"outbox full ({self.capacity} readings)"


class PublishError(EdgeAgentError):
    """The MQTT broker did not accept a message."""
