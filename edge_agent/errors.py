"""Exceptions raised by the edge agent.

Everything the edge agent raises on purpose derives from :class:`EdgeAgentError`, so a caller can
catch the whole family in one place. Leaf errors carry the data a caller needs, and mix in the
builtin a caller would otherwise catch (``except ValueError`` still sees a bad payload)::

    EdgeAgentError
    ├── AgentConfigError (+ ValueError)  settings that cannot work; names the variable/flag and the fix
    ├── RegistryError                    the pairing registry is unreadable or does not allow the change
    ├── GattDecodeError (+ ValueError)   bytes (or field values) that are not a valid GATT payload
    │   └── OverlongPayloadError         ... a valid payload followed by bytes its flags do not announce
    ├── DeviceError                      something went wrong with one BLE device
    │   ├── DeviceNotFoundError          no advertisement from the address within the scan
    │   ├── DeviceConnectionError        connecting failed (after bleak-retry-connector's retries)
    │   │   └── LinkLostError            ... or the link dropped while we were using it
    │   ├── DeviceProtocolError          the device answered a GATT request with an error
    │   ├── RacpError                    a Record Access Control Point procedure did not succeed
    │   │   └── RacpTimeoutError         ... no response indication in time (aborted with 03 00)
    │   └── PairingError                 bonding / passkey entry failed or was refused
    ├── OutboxError                      the durable store-and-forward queue failed
    │   └── OutboxFullError              ... it is at capacity and refuses new readings
    └── PublishError                     the MQTT broker did not accept a message
        ├── BrokerUnavailableError       no connection (refused, unreachable, TLS failure, CONNACK timeout)
        ├── BrokerRefusedError           the broker answered CONNACK with an error (credentials, ACL)
        └── PublishRejectedError         a PUBACK carried an error reason code (e.g. not authorized)

Arguments are passed on to :class:`Exception`, so every error pickles and compares by ``args``.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every error the edge agent raises on purpose."""


class AgentConfigError(EdgeAgentError, ValueError):
    """Settings that cannot work; the message names the variable or flag and the fix."""


class RegistryError(EdgeAgentError):
    """The pairing registry cannot be read, or does not allow the requested change."""


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


class OverlongPayloadError(GattDecodeError):
    """A payload whose first ``consumed`` bytes decode completely and which has more bytes after them.

    Strict decoding refuses it; :func:`edge_agent.gatt.decode_padded` decodes the first ``consumed``
    bytes and reports the rest as padding (real devices pad notifications, issue 14 item 4).
    """

    def __init__(self, field: str, reason: str, payload: str, consumed: int) -> None:
        super().__init__(field, reason, payload)
        self.consumed = consumed

    def __reduce__(self) -> tuple[type[OverlongPayloadError], tuple[str, str, str, int]]:
        return (type(self), (self.field, self.reason, self.payload, self.consumed))


class DeviceError(EdgeAgentError):
    """Something went wrong with one BLE device."""


class DeviceNotFoundError(DeviceError):
    """No advertisement from ``address`` was seen within the scan."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address

    def __str__(self) -> str:
        return f"device {self.address} not found"


class DeviceConnectionError(DeviceError):
    """Connecting to ``address`` failed; ``reason`` is the translated bleak error."""

    def __init__(self, address: str, reason: str = "") -> None:
        super().__init__(address, reason)
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"cannot connect to {self.address}{suffix}"


class LinkLostError(DeviceConnectionError):
    """The link to ``address`` dropped (the device hung up, went out of range, or was switched off)."""

    def __init__(self, address: str) -> None:
        super().__init__(address, "link lost")


class DeviceProtocolError(DeviceError):
    """``address`` answered a GATT request with an error (ATT code, or a BlueZ error name)."""

    def __init__(self, address: str, reason: str, att_code: int | None = None) -> None:
        super().__init__(address, reason, att_code)
        self.address = address
        self.reason = reason
        self.att_code = att_code

    def __str__(self) -> str:
        return f"{self.address}: {self.reason}"


class RacpError(DeviceError):
    """A RACP procedure on ``address`` ended with ``response`` (a RacpResponseCode name) instead of success."""

    def __init__(self, address: str, response: str) -> None:
        super().__init__(address, response)
        self.address = address
        self.response = response

    def __str__(self) -> str:
        return f"{self.address}: record transfer failed: {self.response}"


class RacpTimeoutError(RacpError):
    """No RACP response indication from ``address`` within ``timeout_s``; the procedure was aborted."""

    def __init__(self, address: str, timeout_s: float) -> None:
        super().__init__(address, f"no response within {timeout_s:g} s")
        self.timeout_s = timeout_s


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


class BrokerUnavailableError(PublishError):
    """No MQTT connection: refused, unreachable, TLS failure or no CONNACK in time."""


class BrokerRefusedError(PublishError):
    """The broker refused the connection (CONNACK ``reason``): wrong credentials or not authorised."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"broker refused the connection: {self.reason}"


class PublishRejectedError(PublishError):
    """The broker answered a publish to ``topic`` with an error reason code (e.g. not authorised by the ACL)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(topic, reason)
        self.topic = topic
        self.reason = reason

    def __str__(self) -> str:
        return f"broker rejected a message on {self.topic}: {self.reason}"
