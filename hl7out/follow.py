"""``rpm hl7 follow``: every alert state change on ``rpm.alerts``, live, as an ORU^R40 Report Alert.

The way a nurse-call gateway or an alarm manager gets rpm's alerts as they happen. A consumer in
group ``rpm-hl7`` (several followers share the partitions) reads ``rpm.alerts`` in order and hands
each event to the :class:`~hl7out.sender.Sender`; the record's offset is committed only once the
message was delivered or dead-lettered, so a follower that stops and starts again goes on where it
left off and never skips an alert (at least once: a message may be sent again after a crash
between the ACK and the commit; the receiver drops it by MSH-10). A new group starts at the end of
the topic (``--from-beginning`` to send the history). Events that are not alert state changes of
a patient (ward-wide technical alerts have no patient for PID) are skipped, and counted.

A nurse call that stops getting alerts must not go unnoticed: with a :class:`FollowHealth` the
follower sends heartbeats (component ``hl7``) to ``rpm watchdog``, which raises ``tech.hl7_silent``
when they stop, ``tech.hl7_stuck`` when alerts have waited a minute with none delivered (the
receiver does not answer or refuses) or, with none to send, the receiver could not be reached for
:data:`UNREACHABLE_AFTER_S` (it is probed every :data:`PROBE_INTERVAL_S`: a connection opened, nothing
sent on it; so a nurse call that went away is told before the next alert needs it), and
``tech.hl7_warning`` while messages of the last :data:`DEADLETTER_HOLD_S` were dead-lettered instead
of delivered.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from hl7out.errors import Hl7EncodeError
from hl7out.messages import AlertChange, Header, encode_alert
from hl7out.sender import Outgoing, Receipt, Sender
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.signing import KeyRing, SignatureError
from rpm_core.technical import Heartbeat

_LOGGER = logging.getLogger(__name__)

CONSUMER_GROUP: Final = "rpm-hl7"
POLL_MS: Final = 1000
# Alerts waiting this long with none delivered: the follower is stuck (the receiver does not take them).
NOT_DELIVERING_AFTER_S: Final = 60.0
# How long a dead-lettered message keeps the follower's warning up.
DEADLETTER_HOLD_S: Final = 900.0
# With nothing to send, the receiver is probed this often (a connection, nothing sent on it)...
PROBE_INTERVAL_S: Final = 15.0
PROBE_TIMEOUT_S: Final = 5.0
# ...and the follower is stuck once it has been unreachable this long: the next alert would not get through.
UNREACHABLE_AFTER_S: Final = 30.0


def change_from_event(value: bytes | None) -> AlertChange | None:
    """The alert change of an ``rpm.alerts`` record, None if it is not one we can send."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    try:
        raw = doc.get("value")
        number = float(raw) if isinstance(raw, int | float) and math.isfinite(raw) else None
        return AlertChange(
            alert_id=_text(doc, "alert_id"), patient=_text(doc, "patient"), rule=_text(doc, "rule"),
            severity=str(doc.get("severity") or "info"), metric=str(doc.get("metric") or "-"), state=doc["state"],
            time_s=float(doc["time"]), message=str(doc.get("message") or ""), value=number,
            by=str(doc["by"]) if doc.get("by") else None,
            kind="technical" if doc.get("kind") == "technical" else "clinical")
    except (KeyError, TypeError, ValueError, Hl7EncodeError):
        return None


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):  # str(None) would be the valid id "None"
        raise TypeError(f"{key} is not a string")
    return value


@dataclass
class FollowStats:
    """Counters of one follower."""

    sent: int = 0
    delivered: int = 0
    deadlettered: int = 0
    skipped: int = 0


class FollowHealth:
    """What one follower tells ``rpm watchdog`` (see the module docstring). ``waiting_since``: when
    the follower began to have an alert to send with none delivered since (None: it delivers, or has
    nothing to send)."""

    def __init__(self, *, instance: str, endpoint: str, clock: Callable[[], float] = time.time) -> None:
        self.instance = instance
        self.endpoint = endpoint
        self.stats = FollowStats()
        self.waiting_since: float | None = None
        self.unreachable_since: float | None = None  # first failed probe of a streak (None: reachable)
        self._unreachable_why = ""
        self._clock = clock
        self._dead: collections.deque[tuple[float, str]] = collections.deque()  # (when, why, without PHI)

    def sending(self) -> None:
        """An alert is about to be sent."""
        if self.waiting_since is None:
            self.waiting_since = self._clock()

    def done(self, receipt: Receipt) -> None:
        """How sending it ended."""
        if receipt.outcome == "delivered":
            self.waiting_since = self.unreachable_since = None
            return
        # The receiver's own words (an AR's text) may name the patient: every ward sees this text.
        why = ("refused before sending (not encodable, or not signed by rpm)" if receipt.attempts == 0 else
               "rejected by the receiver (AR)" if receipt.detail.startswith("AR") else
               f"not accepted after {receipt.attempts} attempts")
        self._dead.append((self._clock(), why))

    def idle(self) -> None:
        """Nothing left to send."""
        self.waiting_since = None

    def probed(self, error: str | None) -> None:
        """How a probe of the idle receiver ended (None: reached; else why not, which names no patient)."""
        if error is None:
            self.unreachable_since = None
            return
        if self.unreachable_since is None:
            self.unreachable_since = self._clock()
        self._unreachable_why = error

    def heartbeat(self, state: str = "running") -> Heartbeat:
        """Unhealthy once alerts waited :data:`NOT_DELIVERING_AFTER_S` with none delivered, or the idle
        receiver was unreachable for :data:`UNREACHABLE_AFTER_S`; a warning (``problem`` while healthy)
        while messages of the last :data:`DEADLETTER_HOLD_S` were dead-lettered."""
        now = self._clock()
        while self._dead and self._dead[0][0] < now - DEADLETTER_HOLD_S:
            self._dead.popleft()
        problems = []
        waiting = self.waiting_since is not None and now - self.waiting_since >= NOT_DELIVERING_AFTER_S
        if waiting:
            waited = now - (self.waiting_since or now)
            problems.append(f"it has delivered no alert to {self.endpoint} for {waited:.0f} s while alerts wait"
                            " (the receiver does not answer, or does not accept them)")
        unreachable = (self.waiting_since is None and self.unreachable_since is not None
                       and now - self.unreachable_since >= UNREACHABLE_AFTER_S)
        if unreachable:
            problems.append(f"it cannot reach {self.endpoint} for {now - (self.unreachable_since or now):.0f} s, "
                            f"so the next alert would not get through ({self._unreachable_why})")
        stuck = waiting or unreachable
        if self._dead:
            problems.append(f"{len(self._dead)} alert message(s) in the last {DEADLETTER_HOLD_S / 60:.0f} min were "
                            f"dead-lettered, not delivered to {self.endpoint} (the last: {self._dead[-1][1]})")
        return Heartbeat(component="hl7", instance=self.instance, time=now, state=state,  # type: ignore[arg-type]
                         healthy=not stuck, problem="; ".join(problems) or None,
                         messages=self.stats.sent + self.stats.skipped, deadlettered=self.stats.deadlettered)


async def follow(*, bootstrap: str, sender: Sender, header: Header, stop: asyncio.Event,
                 after_send: Callable[[Receipt], Awaitable[None]], from_beginning: bool = False,
                 group: str = CONSUMER_GROUP, keys: KeyRing | None = None,
                 health: FollowHealth | None = None) -> FollowStats:
    """Forward ``rpm.alerts`` until ``stop`` is set; the counters. With ``keys`` (``RPM_SIGNING_KEYS_FILE``,
    as every other reader of the topic), a record that does not verify is dead-lettered, never sent.
    ``health`` is told what happens (its ``stats`` are the counters)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from rpm_core import topics

    health = health if health is not None else FollowHealth(instance=group, endpoint=str(sender.endpoint))
    stats = health.stats
    consumer = AIOKafkaConsumer(topics.ALERTS, **kafka_client_kwargs(bootstrap), group_id=group, client_id=group,
                                enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    await consumer.start()
    next_probe = 0.0
    try:
        while not stop.is_set():
            batch: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=POLL_MS)
            if not batch:
                health.idle()
                if time.monotonic() >= next_probe:  # a receiver down is told before an alert needs it
                    health.probed(await sender.probe(PROBE_TIMEOUT_S))
                    next_probe = time.monotonic() + PROBE_INTERVAL_S
            for tp, records in batch.items():
                for record in records:
                    forged = _forged(keys, tp.topic, record)
                    if forged is None:
                        receipt = await _forward(record.value, sender, header, health, after_send)
                    else:  # anyone who reaches Kafka could otherwise put an alert in the hospital's records
                        stats.deadlettered += 1
                        receipt = await sender.refuse(Outgoing(
                            "", (record.value or b"").decode("utf-8", "replace"), "-", "alert"), forged)
                        await after_send(receipt)
                    if receipt is not None:
                        health.done(receipt)
                    await consumer.commit({TopicPartition(tp.topic, tp.partition): record.offset + 1})
    finally:
        await consumer.stop()
    return stats


def _forged(keys: KeyRing | None, topic: str, record: Any) -> str | None:
    """Why ``record`` is refused as not signed by us (None: it verifies, or there are no keys)."""
    if keys is None:
        return None
    try:
        keys.verify(topic, record.key, record.value, record.headers)
    except SignatureError as exc:
        _LOGGER.warning("refused a record of %s: %s", topic, exc)
        return f"alert refused: {exc}"
    return None


async def _forward(value: bytes | None, sender: Sender, header: Header, health: FollowHealth,
                   after_send: Callable[[Receipt], Awaitable[None]]) -> Receipt | None:
    stats = health.stats
    change = change_from_event(value)
    if change is None:
        stats.skipped += 1
        _LOGGER.debug("rpm.alerts record skipped: not a patient's alert state change")
        return None
    health.sending()
    try:
        cid, text = encode_alert(change, header=header, now_s=time.time())
    except Hl7EncodeError as exc:
        # Raised out of here, it stopped the follower on this record at every restart: no alert after
        # it reached the hospital. The record itself goes to the dead-letter topic, with why.
        _LOGGER.warning("rpm.alerts record dead-lettered: %s", exc)
        receipt = await sender.refuse(Outgoing("", (value or b"").decode("utf-8", "replace"), change.patient,
                                               "alert", change.rule[:64], change.severity[:20], change.alert_id[:64]),
                                      f"cannot be encoded as HL7: {exc}")
    else:
        receipt = await sender.send(Outgoing(cid, text, change.patient, "alert", change.rule, change.severity,
                                             change.alert_id))
    stats.sent += 1
    if receipt.outcome == "delivered":
        stats.delivered += 1
    else:
        stats.deadlettered += 1
    await after_send(receipt)
    return receipt
