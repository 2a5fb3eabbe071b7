"""What a Kafka error means for the record that met it: retry, refuse the record, or wait for a fix.

aiokafka marks few errors ``retriable``, and a producer that retries every ``KafkaError`` retries
a record the broker will never take (too large, invalid) forever: everything behind it waits.
So every producer of ours sorts an error into one of three kinds:

- ``REFUSED``: the broker (or the client's own limit) will never take *this record*; split it,
  shrink it or dead-letter it, and go on with the others.
- ``FORBIDDEN``: the broker refuses this client (authorization, authentication): no record can
  pass until an operator fixes credentials or ACLs. Keep everything, retry slowly, say so loudly.
- ``TRANSIENT``: everything else (broker down, leader moving, timeouts): retry with backoff.
"""

from __future__ import annotations

import enum

from aiokafka import errors as kafka


class ErrorKind(enum.Enum):
    """How to treat a record whose produce failed."""

    TRANSIENT = "transient"
    REFUSED = "refused"
    FORBIDDEN = "forbidden"


_REFUSED: tuple[type[BaseException], ...] = (
    kafka.MessageSizeTooLargeError,  # over the client's max_request_size, or the broker's max message
    kafka.RecordTooLargeError,
    kafka.RecordListTooLargeError,
    kafka.CorruptRecordException,  # also InvalidMessageError (same errno)
    kafka.InvalidTimestampError,
    kafka.UnsupportedForMessageFormatError,
    kafka.PolicyViolationError,
    kafka.InvalidRequestError,
)
_FORBIDDEN: tuple[type[BaseException], ...] = (
    kafka.TopicAuthorizationFailedError,
    kafka.ClusterAuthorizationFailedError,
    kafka.TransactionalIdAuthorizationFailed,
    kafka.UnsupportedSaslMechanismError,
)
_FORBIDDEN_NAMES = frozenset({"SaslAuthenticationFailedError", "AuthenticationFailedError",
                              "IllegalSaslStateError"})


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` (see the module docstring); anything unknown is transient."""
    if isinstance(exc, _REFUSED):
        return ErrorKind.REFUSED
    if isinstance(exc, _FORBIDDEN) or type(exc).__name__ in _FORBIDDEN_NAMES:
        return ErrorKind.FORBIDDEN
    return ErrorKind.TRANSIENT


def describe(exc: BaseException) -> str:
    """A short, log-safe description of a Kafka error (its class and message, bounded)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
