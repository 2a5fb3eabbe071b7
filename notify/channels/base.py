"""What every channel adapter shares: the :class:`Channel` protocol, receipts, and the retry loop.

A channel's ``send`` makes one attempt and returns a receipt text ("HTTP 200", "250 queued") or
raises :class:`~notify.errors.TransientDeliveryError` (try again), :class:`~notify.errors.PermanentDeliveryError`
(stop) or :class:`NothingToSend` (this channel has nothing to say about these alerts). :func:`deliver`
wraps it with a timeout per attempt and jittered exponential backoff between attempts, and reports
every attempt to a callback, which the service turns into ``notifications`` points in InfluxDB.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from notify.errors import ChannelError, PermanentDeliveryError, TransientDeliveryError
from notify.model import ChannelSpec, Delivery
from notify.router import Notification
from rpm_core.backoff import backoff_s

_LOGGER = logging.getLogger(__name__)

AttemptOutcome = Literal["delivered", "failed", "skipped"]


class NothingToSend(ChannelError):
    """The channel has nothing to say about these alerts (e.g. no patient message for the rule)."""


class Channel(Protocol):
    """One configured way of reaching a receiver."""

    spec: ChannelSpec

    def recipient(self, note: Notification) -> str:
        """Who this reaches, for the audit (no secrets: URLs without query or credentials)."""

    async def send(self, note: Notification) -> str:
        """One attempt; the receipt text on success."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of one channel for one notification."""

    channel: ChannelSpec
    note: Notification
    attempt: int
    outcome: AttemptOutcome
    detail: str
    recipient: str
    at: float


@dataclass(frozen=True, slots=True)
class Receipt:
    """How delivering one notification on one channel ended."""

    channel: str
    outcome: AttemptOutcome
    attempts: int
    detail: str
    recipient: str

    @property
    def delivered(self) -> bool:
        """Whether the channel accepted the notification."""
        return self.outcome == "delivered"


async def deliver(
    channel: Channel,
    note: Notification,
    *,
    policy: Delivery,
    on_attempt: Callable[[Attempt], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> Receipt:
    """Send with a timeout per attempt and up to ``policy.retries`` retries; never raises a channel error."""
    recipient = channel.recipient(note)
    attempts = policy.retries + 1
    detail = ""
    for attempt in range(1, attempts + 1):
        outcome, detail = await _attempt(channel, note, policy.timeout_s)
        on_attempt(Attempt(channel.spec, note, attempt, outcome, detail, recipient, clock()))
        if outcome != "failed" or detail.startswith("permanent:"):
            return Receipt(channel.spec.tag, outcome, attempt, detail, recipient)
        if attempt < attempts:
            await sleep(backoff_s(attempt, cap_s=policy.backoff_max_s))
    _LOGGER.warning("channel %s gave up on notification %s after %d attempts", channel.spec.tag, note.id, attempts)
    return Receipt(channel.spec.tag, "failed", attempts, f"gave up after {attempts} attempts: {detail}", recipient)


async def _attempt(channel: Channel, note: Notification, timeout_s: float) -> tuple[AttemptOutcome, str]:
    try:
        async with asyncio.timeout(timeout_s):
            return "delivered", await channel.send(note)
    except TimeoutError:
        return "failed", f"no answer within {timeout_s:g} s"
    except NothingToSend as exc:
        return "skipped", exc.detail
    except PermanentDeliveryError as exc:
        return "failed", f"permanent: {exc.detail}"
    except TransientDeliveryError as exc:
        return "failed", exc.detail
