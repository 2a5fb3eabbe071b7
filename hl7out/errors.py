"""Errors of the HL7 output.

::

    Hl7Error (RpmError)
    ├── Hl7EncodeError (ValueError)     a message we built does not validate against HL7 2.6
    ├── AckError (ValueError)           the peer's answer is not an ACK of our message
    └── MllpError (ConnectionError)     framing violated, connection lost or refused
"""

from __future__ import annotations

from rpm_core.errors import RpmError


class Hl7Error(RpmError):
    """Root of the HL7 output's errors."""


class Hl7EncodeError(Hl7Error, ValueError):
    """A message we built does not validate (a bug or a value HL7 cannot carry)."""


class AckError(Hl7Error, ValueError):
    """The answer is not a valid ACK for the message sent (wrong control id, unparsable)."""


class MllpError(Hl7Error, ConnectionError):
    """The MLLP connection failed: refused, closed before the ACK, or a frame that breaks the rules."""
