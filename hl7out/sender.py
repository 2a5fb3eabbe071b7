"""Deliver HL7 messages one at a time: send, wait for the ACK, retry with backoff, dead-letter.

Per message (the outcome of each attempt goes to ``on_attempt``, which the CLI turns into
``notifications`` points, like the notifier's channels):

- ``AA``: delivered;
- ``AR`` (rejected: the receiver will never take this message): dead-lettered at once with the
  receiver's reason, never retried;
- ``AE`` (application error), no answer in time, a broken or refused connection, an answer that is
  not our ACK: retried with jittered exponential backoff, the same control id each time (a
  receiver drops duplicates by MSH-10), on a fresh connection after any connection trouble; after
  ``retries`` retries the message is dead-lettered with the last reason.

Order: one message in flight at a time, so the receiver sees a patient's messages in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from hl7out.errors import AckError, MllpError
from hl7out.messages import parse_ack
from hl7out.mllp import MllpConnection
from rpm_core.backoff import backoff_s

_LOGGER = logging.getLogger(__name__)

Outcome = Literal["delivered", "failed", "deadlettered"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An MLLP listener: ``mllp://host:port``."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """From ``mllp://host:port`` (``ValueError`` otherwise)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "mllp" or not parts.hostname or parts.port is None:
            raise ValueError(f"{url!r} is not mllp://host:port")
        return cls(parts.hostname, parts.port)

    def __str__(self) -> str:
        return f"mllp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Timeout per attempt, retries after the first attempt, and the cap of the backoff."""

    timeout_s: float = 10.0
    retries: int = 5
    backoff_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to deliver, with what the receipts say about it."""

    control_id: str
    text: str
    patient: str
    kind: Literal["vitals", "alert"]
    rule: str = "-"
    severity: str = "-"
    alert_id: str = ""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt at one message."""

    message: Outgoing
    attempt: int
    outcome: Outcome
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class Receipt:
    """How delivering one message ended."""

    message: Outgoing
    outcome: Outcome
    attempts: int
    detail: str


DeadLetter = Callable[[Outgoing, str], Awaitable[None]]


class Sender:
    """Delivers messages to one endpoint over one (re-opened as needed) connection."""

    def __init__(self, *, endpoint: Endpoint, policy: Policy, on_attempt: Callable[[AttemptRecord], None],
                 deadletter: DeadLetter, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.endpoint = endpoint
        self._policy = policy
        self._on_attempt = on_attempt
        self._deadletter = deadletter
        self._sleep = sleep
        self._conn: MllpConnection | None = None

    async def send(self, message: Outgoing) -> Receipt:
        """Deliver ``message`` or dead-letter it; never raises for the receiver's or the network's trouble."""
        attempts = self._policy.retries + 1
        detail = ""
        for attempt in range(1, attempts + 1):
            code, detail = await self._attempt(message)
            if code == "AA":
                self._record(message, attempt, "delivered", detail or "AA")
                return Receipt(message, "delivered", attempt, detail or "AA")
            if code == "AR":
                self._record(message, attempt, "deadlettered", f"AR: {detail}")
                await self._deadletter(message, f"rejected by {self.endpoint} (AR): {detail}")
                return Receipt(message, "deadlettered", attempt, f"AR: {detail}")
            self._record(message, attempt, "failed", detail)
            if attempt < attempts:
                await self._sleep(backoff_s(attempt, cap_s=self._policy.backoff_max_s))
        reason = f"gave up after {attempts} attempts: {detail}"
        _LOGGER.warning("HL7 message %s to %s: %s", message.control_id, self.endpoint, reason)
        await self._deadletter(message, reason)
        return Receipt(message, "deadlettered", attempts, reason)

    async def refuse(self, message: Outgoing, reason: str) -> Receipt:
        """Dead-letter ``message`` unsent (it could not be encoded: ``message.text`` holds what it came from)."""
        self._record(message, 0, "deadlettered", reason)
        await self._deadletter(message, reason)
        return Receipt(message, "deadlettered", 0, reason)

    async def _attempt(self, message: Outgoing) -> tuple[str, str]:
        """("AA"|"AE"|"AR", why) or ("", why) for trouble before an ACK."""
        try:
            async with asyncio.timeout(self._policy.timeout_s):
                answer = await self._exchange(message.text)
            ack = parse_ack(answer, control_id=message.control_id)
        except TimeoutError:
            await self._drop()
            return "", f"no ACK within {self._policy.timeout_s:g} s"
        except (MllpError, AckError) as exc:
            await self._drop()  # out of step with the peer: start afresh
            return "", str(exc)
        return ack.code, ack.text if ack.code == "AA" or ack.text else f"{ack.code} without a reason"

    async def _exchange(self, text: str) -> str:
        """Send on the open connection, or a new one. Many listeners (hl7apy's among them) close the
        connection after each ACK: when a kept connection turns out closed before it answered, the
        message goes once more on a fresh one, in the same attempt (same control id: a receiver
        that did see it drops the duplicate)."""
        if self._conn is not None and not self._conn.closed:
            try:
                return await self._conn.exchange(text)
            except MllpError as exc:
                _LOGGER.debug("kept MLLP connection to %s unusable (%s); reconnecting", self.endpoint, exc)
        await self._drop()
        self._conn = await MllpConnection.open(self.endpoint.host, self.endpoint.port)
        return await self._conn.exchange(text)

    async def probe(self, timeout_s: float) -> str | None:
        """Whether the receiver can be reached now, sending it nothing: None if so, else why not.

        The kept connection counts if it is still open (its TCP keepalive notices a receiver gone
        without closing it: :meth:`MllpConnection.open`); else a new one is opened, and kept for the
        next message. A receiver that closes every connection after its ACK sees one connection opened
        per probe, and nothing sent on it."""
        if self._conn is not None and not self._conn.closed:
            return None
        await self._drop()
        try:
            async with asyncio.timeout(timeout_s):
                self._conn = await MllpConnection.open(self.endpoint.host, self.endpoint.port)
        except TimeoutError:
            return f"cannot connect to {self.endpoint.host}:{self.endpoint.port}: no answer within {timeout_s:g} s"
        except MllpError as exc:
            return str(exc)
        return None

    def _record(self, message: Outgoing, attempt: int, outcome: Outcome, detail: str) -> None:
        self._on_attempt(AttemptRecord(message, attempt, outcome, detail, time.time()))

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def close(self) -> None:
        """Close the connection."""
        await self._drop()
