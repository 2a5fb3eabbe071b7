"""The patient's own edge agent: a short instruction on the patient's MQTT command topic.

The text comes from routes.yaml (``messages: {<rule>: "…"}`` or ``default_message``), never from the
alert's own message, so no reading reaches the patient's device or its logs; a rule without a text
is skipped (recorded), not sent generically. The receipt is the broker's PUBACK; the patient's
acknowledgement comes back on ``rpm/v1/p/<patient>/ack`` (see :mod:`notify.service`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from notify.channels.base import NothingToSend
from notify.model import ChannelSpec
from notify.router import Notification
from rpm_core.commands import PatientMessage
from rpm_core.wire import command_topic

PublishFn = Callable[[str, bytes], Awaitable[None]]


def patient_message(spec: ChannelSpec, note: Notification) -> PatientMessage | None:
    """The message for the patient, or None when routes.yaml has no text for any of the alerts."""
    texts: dict[str, list[str]] = {}
    for alert in note.alerts:
        text = spec.messages.get(alert.rule, spec.default_message)
        if text is not None:
            texts.setdefault(text, []).append(alert.alert_id)
    if not texts:
        return None
    alert_ids = tuple(a for ids in texts.values() for a in ids)
    lead = next(a for a in note.alerts if a.alert_id in alert_ids)
    return PatientMessage(id=note.id, alert_ids=alert_ids, severity=lead.severity, text="\n".join(texts),
                          at=note.at)


class EdgeAgentChannel:
    """Publishes the patient's message (QoS 1) and returns when the broker acknowledged it."""

    def __init__(self, *, spec: ChannelSpec, publish: PublishFn) -> None:
        self.spec = spec
        self._publish = publish

    def recipient(self, note: Notification) -> str:
        """The patient's agent."""
        return f"patient {note.patient} (edge agent)"

    async def send(self, note: Notification) -> str:
        """One QoS 1 publish."""
        message = patient_message(self.spec, note)
        if message is None:
            rules = ", ".join(sorted({a.rule for a in note.alerts}))
            raise NothingToSend(f"no patient message configured for {rules}")
        await self._publish(command_topic(note.patient), bytes(message))
        return f"accepted by the broker for the patient's agent ({len(message.alert_ids)} alert(s))"
